"""The 'keras_seed' TLB variant against the Keras seed model itself: weights ported from a
Keras model reproduce its probabilities, and the two models have the same parameters and
initial distributions. Needs TensorFlow and Keras 3 (`benchmarks/keras_seed.py` builds the
seed's model)."""

import functools

import jax
import numpy as np
import pytest

keras_seed = pytest.importorskip('benchmarks.keras_seed')

from configs import cifar10_seed  # noqa: E402
from tlb_jax import config_validation  # noqa: E402
from tlb_jax.keras_port import KerasPortError, port_keras_weights  # noqa: E402
from tlb_jax.models import create_model  # noqa: E402
from tlb_jax.models.tlb import TLB  # noqa: E402

# The seed's config, and another shape: 3 layers with r = 3 (a 4-block perceptual list whose
# blocks 0 and 3 also cross-attend), two heads, narrower, 4 chunks of 4 tokens.
SHAPES = {
    'seed': keras_seed.SEED_CONFIG,
    'other': dict(keras_seed.SEED_CONFIG, image_size=16, embed_dim=32, chunk_size=4, r=3,
                  num_layers=3, num_heads=2),
}
BATCH = 4
TOLERANCE = 1e-4
# XLA:CPU options that compile a model's init (hundreds of random draws) in a third of the time.
QUICK_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def flax_model(shape: dict) -> TLB:
  """The keras_seed TLB of a Keras seed config dict."""
  return TLB(num_classes=10, patch_size=shape['patch_size'], embed_dim=shape['embed_dim'],
             chunk_size=shape['chunk_size'], num_latents=shape['chunk_size'],
             num_layers=shape['num_layers'], cross_attention_every=shape['r'],
             num_heads=shape['num_heads'], mlp_ratio=4, dropout_rate=shape['ffn_drop'],
             attention_dropout_rate=shape['attn_drop'], slow_stream_init='zeros',
             head='fast_last_mean', variant='keras_seed')


class Pair:
  """A freshly initialised Keras seed model and its probabilities on `images` (eval mode); the
  flax model of the same shape and its parameter shapes."""

  def __init__(self, shape: dict):
    keras_seed.keras.utils.set_random_seed(0)
    size = shape['image_size']
    self.images = np.random.default_rng(0).random((BATCH, size, size, 3), dtype=np.float32)
    self.keras_model = keras_seed.build_seed_model(shape)
    self.keras_probabilities = np.asarray(self.keras_model(self.images, training=False))
    self.model = flax_model(shape)
    self.shapes = jax.eval_shape(functools.partial(self.model.init, train=False),
                                 jax.random.PRNGKey(0), self.images[:1])['params']


@functools.lru_cache(maxsize=None)
def get_pair(name: str) -> Pair:
  return Pair(SHAPES[name])


@pytest.fixture(scope='module', params=sorted(SHAPES))
def pair(request) -> Pair:
  return get_pair(request.param)


def test_ported_weights_reproduce_keras_probabilities(pair):
  """Softmax of our logits with the Keras model's weights equals its output within 1e-4."""
  params = port_keras_weights(pair.keras_model, like=pair.shapes)
  logits = jax.jit(functools.partial(pair.model.apply, train=False))({'params': params},
                                                                      pair.images)
  difference = np.abs(np.asarray(jax.nn.softmax(logits)) - pair.keras_probabilities).max()
  print(f'max |flax - keras| probability difference: {difference:.3g}')
  assert difference < TOLERANCE


def test_parameter_count_equals_keras_count_params(pair):
  count = sum(leaf.size for leaf in jax.tree.leaves(pair.shapes))
  print(f'parameters: flax {count}, keras {pair.keras_model.count_params()}')
  assert count == pair.keras_model.count_params()


@pytest.mark.parametrize('keras_fans', ['einsum', 'conv'])
def test_initial_parameters_follow_keras_initializers(keras_fans):
  """Each parameter starts as its Keras twin does: the same constant (biases, LayerNorm), or the
  same uniform range (glorot_uniform kernels, whose fans count all heads, and the position
  embedding's U(-0.05, 0.05)). 'einsum': as this Keras draws them (it counts an attention
  kernel's fans by its einsum axes); 'conv': the attention kernels as Keras's GlorotUniform
  draws a kernel of their shape given no axes, the rule of the Keras versions before that (the
  example's logs). Checked on the two-head shape, the cheaper one to initialise."""
  pair = get_pair('other')
  model = pair.model.clone(keras_fans=keras_fans)
  init = jax.jit(functools.partial(model.init, train=False)).lower(
      jax.random.PRNGKey(0), pair.images[:1]).compile(compiler_options=QUICK_COMPILE)
  ours = init(jax.random.PRNGKey(0), pair.images[:1])['params']
  ours = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
  for path, theirs in jax.tree_util.tree_flatten_with_path(port_keras_weights(pair.keras_model))[0]:
    mine, name = np.asarray(ours[path]), jax.tree_util.keystr(path)
    if keras_fans == 'conv' and "attention']" in name and name.endswith("['kernel']"):
      theirs = np.asarray(keras_seed.keras.initializers.GlorotUniform(seed=0)(theirs.shape))
    if np.all(theirs == theirs.flat[0]):
      np.testing.assert_array_equal(mine, theirs, err_msg=name)
    else:  # U(-a, a): the largest |x| of a few hundred or more draws is within 1% of a.
      np.testing.assert_allclose(np.abs(mine).max(), np.abs(theirs).max(), rtol=0.03,
                                 err_msg=name)
      np.testing.assert_allclose(mine.std(), theirs.std(), rtol=0.15, err_msg=name)


def test_port_reads_a_saved_weights_file(tmp_path):
  pair = get_pair('seed')
  path = tmp_path / 'seed.weights.h5'
  pair.keras_model.save_weights(path)
  from_file = port_keras_weights(path, like=pair.shapes)
  from_model = port_keras_weights(pair.keras_model)
  jax.tree.map(np.testing.assert_array_equal, from_file, from_model)


def test_port_refuses_a_flax_model_of_another_shape():
  with pytest.raises(KerasPortError, match='do not fit'):
    port_keras_weights(get_pair('seed').keras_model, like=get_pair('other').shapes)


def test_seed_config_builds_the_keras_seed_model():
  """configs/cifar10_seed.py validates and builds the keras_seed model of the seed's shape."""
  config = cifar10_seed.get_config()
  config_validation.validate(config)
  model = create_model(config, num_classes=10)
  assert model.variant == 'keras_seed'
  # The model whose port the tests above check, but for how it computes (dtype, remat, the
  # chunks per loop iteration).
  assert model == get_pair('seed').model.clone(dtype=model.dtype, remat=model.remat,
                                               scan_unroll=model.scan_unroll)


def test_unknown_variant_is_a_config_error():
  config = cifar10_seed.get_config()
  config.tlb.variant = 'keras'
  with pytest.raises(config_validation.ConfigError, match='tlb.variant'):
    config_validation.validate(config)
