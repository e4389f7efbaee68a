"""Ops with a hand-written backward compute what JAX's differentiation of them computes: the
same parameters, outputs and gradients, alone and inside the TLB, so that the recipes' accuracy
carries over to the shipped one (`layers.LayerNorm`) and `benchmarks/backward_ab.py` times two
versions of one function (LayerNorm, softmax, GELU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.backward_ab import OPS
from benchmarks.backward_ab import flax_layer_norm as _flax_layer_norm
from configs import cifar10
from layer_patching import assert_versions_give_the_same_loss_and_gradients
from tlb_jax.models import create_model, layers

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _perturbed(params, seed):
  """`params` plus noise, so that scale and bias are not their initial ones and zeros."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [leaf + 0.3 * jax.random.normal(key, leaf.shape)
                                   for leaf, key in zip(leaves, keys)])


@pytest.mark.parametrize('shape', [(5, 24), (3, 7, 16)])
def test_layer_norm_has_flax_outputs_and_gradients(shape):
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1.0
  ours, flax_norm = layers.LayerNorm(), _flax_layer_norm()
  params = _perturbed(flax_norm.init(jax.random.PRNGKey(1), x), seed=2)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
      jnp.shape, params)
  weights = jax.random.normal(jax.random.PRNGKey(3), shape)
  # A loss with a nonlinear term, so that the cotangent differs from row to row.
  loss = lambda module: lambda p, x: ((module.apply(p, x) * weights).sum()
                                      + (module.apply(p, x) ** 2).sum())
  np.testing.assert_allclose(ours.apply(params, x), flax_norm.apply(params, x), **TOLERANCE)
  for got, want in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                       jax.tree.leaves(jax.grad(loss(flax_norm), argnums=(0, 1))(params, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_layer_norm_of_a_constant_row_is_its_bias():
  x = jnp.full((2, 8), 4.0)
  params = {'params': {'scale': jnp.full((8,), 2.0), 'bias': jnp.arange(8.0)}}
  np.testing.assert_allclose(layers.LayerNorm().apply(params, x), jnp.tile(jnp.arange(8.0), (2, 1)))
  assert np.isfinite(jax.grad(lambda x: layers.LayerNorm().apply(params, x).sum())(x)).all()


# The TLB variants whose blocks compute with each op ('paper': tanh GELU; 'keras_seed': erf GELU).
OP_VARIANTS = [('layer_norm', 'paper'), ('layer_norm', 'keras_seed'), ('softmax', 'paper'),
               ('gelu_tanh', 'paper'), ('gelu_erf', 'keras_seed')]


def test_every_op_is_checked_in_a_model():
  assert {op for op, _ in OP_VARIANTS} == set(OPS)


@pytest.mark.parametrize('op, variant', OP_VARIANTS)
def test_tlb_with_hand_written_backward_has_the_autodiff_logits_and_gradients(op, variant):
  config = cifar10.get_config()
  # The chunk loop, not the config's unrolled chunks: it changes no op and compiles faster.
  config.tlb.update(embed_dim=16, num_heads=2, chunk_size=4, num_latents=3, mlp_ratio=2,
                    variant=variant, scan_unroll=1)
  config.tlb.dropout_rate = 0.0
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 3))
  labels = jnp.array([1, 4, 7])
  model = create_model(config, num_classes=10)
  params = _perturbed(model.init(jax.random.PRNGKey(1), images, train=False)['params'], seed=2)

  def loss(params):
    logits = model.apply({'params': params}, images, train=False)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1).mean()

  attribute, autodiff_version, hand_written_version = OPS[op]
  assert_versions_give_the_same_loss_and_gradients(
      loss, params, attribute, hand_written_version, autodiff_version, loss_rtol=1e-6)

