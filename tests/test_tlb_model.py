"""Tests of the TLB model: shapes, the scan recurrence against a Python loop, causality, dtypes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from configs import smoke
from tlb_jax.choices import REMATS
from tlb_jax.models import create_model, layers
from tlb_jax.models.layers import (LAYER_NORM_EPSILON, AttentionBlock, Conv3x3, Dropout,
                                   PatchEmbed)
from tlb_jax.models.tlb import REMAT_POLICIES, TLB, TLBCell

NUM_CLASSES = 10
# 16x16 images, 4x4 patches -> 16 tokens in 4 chunks of 4; chunk c is image rows 4c..4c+3.
BASE = dict(num_classes=NUM_CLASSES, patch_size=4, embed_dim=16, chunk_size=4, num_latents=3,
            num_layers=2, cross_attention_every=1, num_heads=2, mlp_ratio=2,
            slow_stream_init='learned', head='slow_mean')
IMAGE_SIZE = 16
NUM_CHUNKS = 4


def _images(batch=2, size=IMAGE_SIZE, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, size, size, 3))


@functools.lru_cache(maxsize=None)
def _apply_fn(model, return_intermediates=False):
  return jax.jit(functools.partial(model.apply, train=False,
                                   return_intermediates=return_intermediates))


@pytest.fixture(scope='module')
def base():
  """The base model, its parameters and a batch of two images."""
  model = TLB(**BASE)
  images = _images()
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(1), images)['params']
  return model, params, images


def _variant_params(params, head, slow_stream_init):
  """The base parameters restricted to what a model with `head` and `slow_stream_init` has."""
  params = dict(params)
  if head != 'slow_mean':
    del params['head_norm']
  if slow_stream_init != 'learned':
    del params['initial_slow_stream']
  return params


def _loop_reference(model, params, images):
  """Logits and per-chunk slow streams from a plain Python loop over chunks of `TLBCell`."""
  tokens = PatchEmbed(model.patch_size, model.embed_dim).apply(
      {'params': params['patch_embed']}, images)
  batch, num_tokens, features = tokens.shape
  if model.slow_stream_init == 'learned':
    initial = params['initial_slow_stream']
  else:
    initial = jnp.zeros((model.num_latents, features))
  slow = jnp.broadcast_to(initial, (batch, model.num_latents, features))
  fast = jnp.zeros((batch, model.chunk_size, features))
  cell = TLBCell(num_layers=model.num_layers, cross_attention_every=model.cross_attention_every,
                 num_heads=model.num_heads, mlp_ratio=model.mlp_ratio, dropout_rate=0.0,
                 attention_dropout_rate=0.0, dtype=jnp.float32, deterministic=True)
  slow_streams = []
  for start in range(0, num_tokens, model.chunk_size):
    chunk = tokens[:, start:start + model.chunk_size]
    (slow, fast), _ = cell.apply({'params': params['recurrence']}, (slow, fast), chunk)
    slow_streams.append(slow)
  if model.head == 'slow_mean':
    pooled = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON).apply(
        {'params': params['head_norm']}, slow).mean(axis=1)
  else:
    pooled = fast.mean(axis=1)
  logits = nn.Dense(model.num_classes).apply({'params': params['head']}, pooled)
  return logits, jnp.stack(slow_streams, axis=1)


@pytest.mark.parametrize('overrides', [
    dict(),
    dict(patch_size=2, chunk_size=16, num_latents=5, num_heads=4, head='fast_last_mean'),
    dict(patch_size=8, chunk_size=1, num_latents=1, num_heads=1, slow_stream_init='zeros'),
    dict(embed_dim=24, chunk_size=8, num_latents=8, num_heads=3, num_layers=3,
         cross_attention_every=2, head='fast_last_mean', slow_stream_init='zeros'),
], ids=['base', 'patch2_chunk16', 'patch8_chunk1', 'heads3_layers3'])
def test_output_and_intermediate_shapes(overrides):
  """Logits are (B, classes) float32; intermediates are (B, C, L, D) and (B, C, H, L, K)."""
  kwargs = {**BASE, **overrides}
  model = TLB(**kwargs)
  images = jax.ShapeDtypeStruct((3, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), images)
  logits, intermediates = jax.eval_shape(
      functools.partial(model.apply, train=False, return_intermediates=True), variables, images)
  num_chunks = (IMAGE_SIZE // kwargs['patch_size'])**2 // kwargs['chunk_size']
  latents, dim, heads, chunk = (kwargs['num_latents'], kwargs['embed_dim'], kwargs['num_heads'],
                                kwargs['chunk_size'])
  assert logits.shape == (3, NUM_CLASSES) and logits.dtype == jnp.float32
  assert intermediates['slow_stream'].shape == (3, num_chunks, latents, dim)
  assert intermediates['attention'].shape == (3, num_chunks, heads, latents, chunk)
  plain = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  assert plain.shape == (3, NUM_CLASSES)


@pytest.mark.parametrize('slow_stream_init, has_param', [('learned', True), ('zeros', False)])
def test_learned_initial_slow_stream_is_a_parameter_only_when_learned(slow_stream_init,
                                                                      has_param):
  """'learned' adds an (L, D) initial state parameter, 'zeros' does not."""
  model = TLB(**{**BASE, 'slow_stream_init': slow_stream_init})
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))['params']
  assert ('initial_slow_stream' in params) == has_param
  if has_param:
    assert params['initial_slow_stream'].shape == (BASE['num_latents'], BASE['embed_dim'])


def test_attention_rows_are_distributions(base):
  """Each latent's attention over the chunk's tokens is non-negative and sums to 1."""
  model, params, images = base
  _, intermediates = _apply_fn(model, True)({'params': params}, images)
  attention = np.asarray(intermediates['attention'])
  assert attention.shape == (2, NUM_CHUNKS, BASE['num_heads'], BASE['num_latents'],
                             BASE['chunk_size'])
  assert (attention >= 0).all()
  np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize('head, slow_stream_init',
                         [('slow_mean', 'learned'), ('fast_last_mean', 'zeros')])
def test_scan_equals_python_loop_over_chunks(base, head, slow_stream_init):
  """nn.scan over chunks gives the logits and slow streams of a Python loop of TLBCell."""
  base_model, base_params, images = base
  model = base_model.clone(head=head, slow_stream_init=slow_stream_init)
  params = _variant_params(base_params, head, slow_stream_init)
  logits, intermediates = _apply_fn(model, True)({'params': params}, images)
  expected_logits, expected_slow = jax.jit(functools.partial(_loop_reference, model))(
      params, images)
  np.testing.assert_allclose(intermediates['slow_stream'], expected_slow, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
  # The comparison is not vacuous: the two images give different logits.
  assert np.abs(np.asarray(logits[0] - logits[1])).max() > 1e-3


def test_later_chunk_does_not_change_earlier_slow_states(base):
  """Changing the pixels of chunk 2 leaves the slow states after chunks 0, 1 unchanged and
  changes those after chunks 2, 3."""
  model, params, images = base
  changed = images[0].at[8:12].set(1.0 - images[0, 8:12])  # rows 8..11 = chunk 2 only
  pair = jnp.stack([images[0], changed])
  _, intermediates = _apply_fn(model, True)({'params': params}, pair)
  slow = np.asarray(intermediates['slow_stream'])
  np.testing.assert_allclose(slow[0, :2], slow[1, :2], rtol=0, atol=1e-6)
  for chunk in (2, 3):
    assert np.abs(slow[0, chunk] - slow[1, chunk]).max() > 1e-3


def test_scan_unroll_does_not_change_logits(base):
  """Unrolling the chunk loop (3 chunks per iteration of 4: a remainder) gives the logits of
  unroll=1."""
  model, params, images = base
  expected = _apply_fn(model)({'params': params}, images)
  unrolled = _apply_fn(model.clone(scan_unroll=3))({'params': params}, images)
  np.testing.assert_allclose(unrolled, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('remat', ['none', 'dots'])
def test_fully_unrolled_scan_has_the_gradients_of_the_loop(base, remat):
  """All 4 chunks in one iteration (as configs/cifar10.py runs them) changes no gradient."""
  model, params, images = base
  labels = jnp.array([3, 8])

  def gradients(unroll):
    unrolled = model.clone(scan_unroll=unroll, remat=remat)
    loss = lambda p: -jax.nn.log_softmax(unrolled.apply({'params': p}, images, train=False))[
        jnp.arange(2), labels].mean()
    return jax.jit(jax.grad(loss))(params)

  for got, want in zip(jax.tree.leaves(gradients(NUM_CHUNKS)), jax.tree.leaves(gradients(1))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fully_unrolled_keras_seed_training_has_the_gradients_and_dropout_of_the_loop():
  """The Keras seed's cell with all chunks in one iteration (as configs/cifar10_seed.py runs
  its 18), in training with dropout and remat, draws the masks of the loop and changes no
  gradient."""
  # One layer with r = 2: the seed's two kinds of perceptual block (the first also
  # cross-attends) in the least compile time.
  seed = TLB(**dict(BASE, variant='keras_seed', num_layers=1, cross_attention_every=2,
                    num_latents=4, head='fast_last_mean', slow_stream_init='zeros',
                    dropout_rate=0.2, attention_dropout_rate=0.2, remat='dots'))
  images, labels = _images(), jnp.array([3, 8])
  params = jax.jit(functools.partial(seed.init, train=False))(
      jax.random.PRNGKey(1), images)['params']

  def gradients(unroll):
    """A function (dropout key) -> the gradient's leaves."""
    model = seed.clone(scan_unroll=unroll)

    def loss(params, key):
      logits = model.apply({'params': params}, images, train=True, rngs={'dropout': key})
      return -jax.nn.log_softmax(logits)[jnp.arange(2), labels].mean()

    grad = jax.jit(jax.grad(loss))
    return lambda key: jax.tree.leaves(grad(params, key))

  looped = gradients(1)
  expected = looped(jax.random.PRNGKey(2))
  for got, want in zip(gradients(NUM_CHUNKS)(jax.random.PRNGKey(2)), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Not vacuous: other masks give other gradients.
  assert max(float(jnp.abs(a - b).max())
             for a, b in zip(looped(jax.random.PRNGKey(3)), expected)) > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_logits(base):
  """dtype=bfloat16 creates float32 parameters, computes in bfloat16, returns float32 logits
  close to the float32 model's."""
  model, params, images = base
  bf16 = model.clone(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(functools.partial(bf16.init, train=False), jax.random.PRNGKey(0),
                            images)['params']
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  logits, intermediates = _apply_fn(bf16, True)({'params': params}, images)
  assert logits.dtype == jnp.float32
  assert intermediates['slow_stream'].dtype == jnp.bfloat16
  expected = _apply_fn(model)({'params': params}, images)
  np.testing.assert_allclose(logits, expected, atol=0.1)


def test_dropout_masks_depend_on_the_dropout_rng_in_training(base):
  """With dropout, train=True gives different logits for different dropout rngs."""
  model, params, images = base
  dropout_model = model.clone(dropout_rate=0.5, attention_dropout_rate=0.5)
  train_apply = jax.jit(functools.partial(dropout_model.apply, train=True))
  first = train_apply({'params': params}, images, rngs={'dropout': jax.random.PRNGKey(0)})
  second = train_apply({'params': params}, images, rngs={'dropout': jax.random.PRNGKey(1)})
  assert np.abs(np.asarray(first - second)).max() > 1e-3


def test_evaluation_ignores_dropout(base):
  """train=False is the deterministic forward pass whatever the dropout rates."""
  model, params, images = base
  dropout_model = model.clone(dropout_rate=0.5, attention_dropout_rate=0.5)
  np.testing.assert_allclose(_apply_fn(dropout_model)({'params': params}, images),
                             _apply_fn(model)({'params': params}, images), rtol=1e-6, atol=1e-6)


def test_dropout_draws_the_masks_of_flax_dropout():
  """`layers.Dropout` zeroes and rescales exactly the elements `nn.Dropout` does for one rng."""
  x = jnp.arange(1.0, 1001.0).reshape(10, 100)
  rngs = {'dropout': jax.random.PRNGKey(3)}
  ours = Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  flax_dropout = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(ours, flax_dropout)
  assert 0.2 < float((ours == 0).mean()) < 0.4


def _dropout_loss(model, params, images):
  logits = model.apply({'params': params}, images, train=True,
                       rngs={'dropout': jax.random.PRNGKey(7)})
  return jnp.mean(logits**2)


def _dropout_gradients(base, remat):
  """The gradients of `_dropout_loss` of the base model with dropout on and `remat`."""
  model, params, images = base
  model = model.clone(dropout_rate=0.3, attention_dropout_rate=0.2, remat=remat)
  return jax.jit(jax.grad(functools.partial(_dropout_loss, model)))(params, images)


@pytest.fixture(scope='module')
def stored_gradients(base):
  """`_dropout_gradients` storing everything (remat='none'), computed once for every policy."""
  return _dropout_gradients(base, 'none')


def test_the_remat_choices_are_none_and_every_policy():
  assert set(REMATS) == {'none', *REMAT_POLICIES}


@pytest.mark.parametrize('remat', ['dots', 'dots_activations', 'full'])
def test_remat_gives_the_gradients_of_storing_everything(base, stored_gradients, remat):
  """With dropout on, every remat policy gives the gradients of remat='none'."""
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               _dropout_gradients(base, remat), stored_gradients)


def test_dots_remat_stores_dropout_masks_instead_of_redrawing_them(base):
  """remat='dots' draws each dropout mask once (forward scan); 'full' draws it again in the
  backward scan."""
  model, params, images = base
  model = model.clone(dropout_rate=0.3)
  def random_draws(remat):
    loss = functools.partial(_dropout_loss, model.clone(remat=remat))
    return str(jax.make_jaxpr(jax.grad(loss))(params, images)).count('random_bits')
  assert 0 < random_draws('dots') < random_draws('full')


@pytest.mark.parametrize('ours, jax_nn', [
    (layers.softmax, jax.nn.softmax),
    (layers.gelu_tanh, functools.partial(jax.nn.gelu, approximate=True))],
    ids=['softmax', 'gelu_tanh'])
def test_named_activation_gives_the_values_and_gradients_of_jax_nn(ours, jax_nn):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7)) * 4
  probe = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  np.testing.assert_array_equal(ours(x), jax_nn(x))
  gradient = lambda f: jax.grad(lambda x: (f(x) * probe).sum())(x)
  np.testing.assert_allclose(gradient(ours), gradient(jax_nn), rtol=1e-5, atol=1e-6)


_NAMED_ACTIVATIONS = ("named 'softmax_exp'", "named 'gelu_tanh'", "named 'gelu_erf'")


@pytest.mark.parametrize('remat, approximate_gelu, stored', [
    ('dots', True, set()), ('dots', False, set()),
    ('dots_activations', True, {"named 'softmax_exp'", "named 'gelu_tanh'"}),
    ('dots_activations', False, {"named 'softmax_exp'", "named 'gelu_erf'"})])
def test_remat_policy_stores_the_named_activations_it_lists(remat, approximate_gelu, stored,
                                                            capsys):
  """remat='dots_activations' stores the softmax exponentials and the GELU's tanh or erf, which
  the backward reads, where 'dots' recomputes them."""
  block = AttentionBlock(num_heads=2, mlp_ratio=2, approximate_gelu=approximate_gelu)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8))
  params = block.init(jax.random.PRNGKey(1), x, deterministic=True)
  loss = lambda params, x: block.apply(params, x, deterministic=True)[0].sum()
  print_saved_residuals(jax.checkpoint(loss, policy=REMAT_POLICIES[remat]), params, x)
  residuals = capsys.readouterr().out
  assert {name for name in _NAMED_ACTIVATIONS if name in residuals} == stored


def _patch_tokens(tokenizer, images):
  """PatchEmbed(patch 4, D 8) tokens (B, N, D) of `images` with fixed random parameters."""
  embed = PatchEmbed(4, 8, tokenizer=tokenizer)
  params = embed.init(jax.random.PRNGKey(0), images)
  return embed.apply(params, images), params['params']


def test_conv_tokenizer_makes_one_token_per_patch_from_log2_p_conv_stages():
  """With patch 4 the conv tokenizer has two conv stages (no linear projection) and still gives
  (H/4) * (W/4) tokens, so chunks and attention maps keep their meaning."""
  tokens, params = _patch_tokens('conv', _images())
  assert tokens.shape == (2, (IMAGE_SIZE // 4) ** 2, 8)
  assert set(params) == {'conv_0', 'conv_1', 'position_embedding', 'norm'}


def test_stem_tokenizer_makes_one_token_per_patch_from_log2_p_strided_stages():
  """With patch 4 the stem has two stride-2 stages (widths D/2, D, but at least 8) and a linear
  projection, and gives (H/4) * (W/4) tokens."""
  images = _images()
  embed = PatchEmbed(4, 32, tokenizer='stem')
  params = embed.init(jax.random.PRNGKey(0), images)['params']
  assert embed.apply({'params': params}, images).shape == (2, (IMAGE_SIZE // 4) ** 2, 32)
  assert set(params) == {'stem_0', 'stem_1', 'projection', 'position_embedding', 'norm'}
  assert params['stem_0']['kernel'].shape == (3, 3, 3, 16)
  assert params['stem_1']['kernel'].shape == (3, 3, 16, 32)


@pytest.mark.parametrize('stride, centre_offset, padding', [
    (1, 0, 'SAME'), (2, 1, 'SAME'), (2, 0, ((1, 1), (1, 1)))])
def test_conv3x3_computes_what_nn_conv_computes_with_the_same_parameters(stride, centre_offset,
                                                                         padding):
  """Stride 1 is nn.Conv's 'SAME'; stride 2 with offset 1 too, with offset 0 it pads one pixel
  on both sides (windows centred on even pixels)."""
  images = _images(batch=2, size=8)
  conv = Conv3x3(5, stride=stride, centre_offset=centre_offset)
  params = conv.init(jax.random.PRNGKey(1), images)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  reference = nn.Conv(5, (3, 3), strides=stride, padding=padding)
  np.testing.assert_allclose(conv.apply(params, images), reference.apply(params, images),
                             rtol=1e-5, atol=1e-5)


def test_a_stem_token_sees_its_patch_and_a_border_around_it():
  """Token (1, 1) of the patch-4 stem depends on pixels 3..9 of rows and columns: its own
  patch (4..7), one pixel before it and two after, and nothing else."""
  images = _images(batch=1)
  embed = PatchEmbed(4, 8, tokenizer='stem')
  params = embed.init(jax.random.PRNGKey(0), images)
  weights = jax.random.normal(jax.random.PRNGKey(2), (8,))
  token_1_1 = lambda x: (embed.apply(params, x)[0, IMAGE_SIZE // 4 + 1] * weights).sum()
  dependence = np.abs(jax.grad(token_1_1)(images)[0]).sum(-1)
  np.testing.assert_array_equal(np.nonzero(dependence.sum(1))[0], np.arange(3, 10))
  np.testing.assert_array_equal(np.nonzero(dependence.sum(0))[0], np.arange(3, 10))


@pytest.mark.parametrize('tokenizer, sees_neighbour', [('linear', False), ('conv', True),
                                                       ('stem', True)])
def test_only_the_convolutional_tokenizers_let_a_token_see_the_neighbouring_patch(
    tokenizer, sees_neighbour):
  """Changing a pixel of patch (0, 1) changes token 0 with the conv and stem tokenizers (their
  receptive fields cross patch borders) and leaves it unchanged with the linear one."""
  images = _images(batch=1)
  changed = images.at[0, 1, 4, :].set(1.0 - images[0, 1, 4, :])  # row 1, col 4: patch (0, 1)
  before, _ = _patch_tokens(tokenizer, images)
  after, _ = _patch_tokens(tokenizer, changed)
  assert not np.allclose(before[0, 1], after[0, 1])  # the changed patch's own token
  assert (not np.allclose(before[0, 0], after[0, 0])) == sees_neighbour
  np.testing.assert_array_equal(before[0, 15], after[0, 15])  # far away: unchanged for both


@pytest.mark.parametrize('size, overrides, message', [
    (18, dict(), 'image size 18x18 is not divisible by patch_size 4'),
    (16, dict(chunk_size=3), '16 patches are not divisible by chunk_size 3'),
    (16, dict(patch_size=5), 'not divisible by patch_size 5'),
    (16, dict(head='cls'), "head must be one of .* got 'cls'"),
    (16, dict(slow_stream_init='random'), "slow_stream_init must be one of .* got 'random'"),
    (16, dict(tokenizer='cnn'), "tokenizer must be one of .* got 'cnn'"),
    (16, dict(keras_fans='torch'), "keras_fans must be one of .* got 'torch'"),
    (12, dict(patch_size=6, tokenizer='conv'), "tokenizer 'conv' needs a power-of-two patch"),
    (12, dict(patch_size=6, tokenizer='stem'), "tokenizer 'stem' needs a power-of-two patch"),
])
def test_invalid_sizes_and_choices_raise_value_error(size, overrides, message):
  """Sizes that do not divide, and unknown options, raise ValueError naming the problem."""
  model = TLB(**{**BASE, **overrides})
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                   jnp.zeros((1, size, size, 3)))


# Keras's glorot_uniform limit sqrt(6 / (fan_in + fan_out)) for BASE's attention kernels
# (D = 16, H = 2 heads of Dh = 16, as 'keras_seed' gives every head D features): query, key and
# value kernels (D, H, Dh), output kernels (H, Dh, D). 'conv' counts the axes before the last
# two as a receptive field (D for the projections, H for the output); 'einsum' counts the
# contracted axes in, the others out.
KERAS_ATTENTION_LIMITS = {
    'conv': {'qkv': np.sqrt(6 / (16 * 2 + 16 * 16)), 'out': np.sqrt(6 / (2 * 16 + 2 * 16))},
    'einsum': {'qkv': np.sqrt(6 / (16 + 2 * 16)), 'out': np.sqrt(6 / (2 * 16 + 16))},
}


@pytest.mark.parametrize('keras_fans', ['conv', 'einsum'])
def test_keras_seed_attention_kernels_span_keras_glorot_range_for_their_fans(keras_fans):
  """Each of the 'keras_seed' TLB's attention kernels fills U(-limit, limit) of its fans: its
  largest weight is within 10% under the limit, never above it."""
  model = TLB(**{**BASE, 'variant': 'keras_seed', 'keras_fans': keras_fans})
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), _images())['params']
  kernels = {jax.tree_util.keystr(path): np.abs(np.asarray(value)).max()
             for path, value in jax.tree_util.tree_flatten_with_path(params)[0]
             if 'attention' in jax.tree_util.keystr(path)
             and jax.tree_util.keystr(path).endswith("['kernel']")}
  assert len(kernels) > 4
  for path, largest in kernels.items():
    limit = KERAS_ATTENTION_LIMITS[keras_fans]['out' if "['out']" in path else 'qkv']
    assert 0.9 * limit < largest <= limit, path


def test_create_model_uses_config_section_and_dtype():
  """create_model builds config.model with config.tlb's fields; dtype 'auto' is float32 on CPU."""
  config = smoke.get_config()
  model = create_model(config, num_classes=100)
  assert isinstance(model, TLB)
  assert model.num_classes == 100
  for field, value in config.tlb.items():
    assert getattr(model, field) == value
  assert model.dtype == jnp.float32
  config.dtype = 'bfloat16'
  assert create_model(config, num_classes=10).dtype == jnp.bfloat16


def test_create_model_rejects_unknown_model():
  """An unknown config.model is a ValueError naming it."""
  config = smoke.get_config()
  config.model = 'no_such_model'
  with pytest.raises(ValueError, match="got 'no_such_model'"):
    create_model(config, num_classes=10)
