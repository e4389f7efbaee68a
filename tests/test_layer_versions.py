"""The models' layers, computed faster, compute what flax's and JAX's compute:
`layers.matmul_dot_general` what `lax.dot_general` does, `layers.PatchProjection` what a
patch-sized `nn.Conv` does, `layers.matmul_with_transposed_weight_gradient` what `x @ w` does,
`layers.normalized_projections` what a LayerNorm and a `DenseGeneral` per projection do,
`layers.gelu_erf` what `jax.nn.gelu(approximate=False)` does; the same parameters, outputs and
gradients, alone and inside every model, so that the recipes' accuracy carries over
(`benchmarks/dense_matmul_ab.py` and `benchmarks/activation_ab.py` time them)."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.activation_ab import ACTIVATIONS
from benchmarks.dense_matmul_ab import (LAYERS, conv_patch_projection,
                                        separately_normalized_projections)
from layer_patching import assert_versions_give_the_same_loss_and_gradients
from tlb_jax.models import create_model, layers

NO_BATCH = ((), ())
# Every layer a model computes another way -> (attribute of layers, its baseline).
VERSIONS = {**LAYERS, **ACTIVATIONS}


@pytest.mark.parametrize('lhs_shape, rhs_shape, contracting', [
    ((3, 5, 8), (8, 6), ((2,), (0,))),                # Dense over (B, N, D)
    ((3, 5, 8), (8, 3, 2, 4), ((2,), (0,))),          # fused q, k, v projection
    ((3, 5, 2, 4), (2, 4, 8), ((2, 3), (0, 1))),      # attention output over (H, Dh)
    ((3, 4, 4, 18), (18, 5), ((3,), (0,))),           # Conv3x3 over neighbourhoods
    ((7, 8), (8, 6), ((1,), (0,))),                   # already 2-D
])
def test_dense_contractions_have_the_outputs_and_gradients_of_lax_dot_general(
    lhs_shape, rhs_shape, contracting):
  lhs = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
  rhs = jax.random.normal(jax.random.PRNGKey(1), rhs_shape)
  numbers = (contracting, NO_BATCH)
  out_shape = jax.eval_shape(lambda: jax.lax.dot_general(lhs, rhs, numbers)).shape
  weights = jax.random.normal(jax.random.PRNGKey(2), out_shape)
  loss = lambda dot_general: lambda lhs, rhs: (
      (dot_general(lhs, rhs, numbers) * weights).sum() + (dot_general(lhs, rhs, numbers)**2).sum())
  np.testing.assert_allclose(layers.matmul_dot_general(lhs, rhs, numbers),
                             jax.lax.dot_general(lhs, rhs, numbers), rtol=1e-5, atol=1e-5)
  got = jax.grad(loss(layers.matmul_dot_general), argnums=(0, 1))(lhs, rhs)
  want = jax.grad(loss(jax.lax.dot_general), argnums=(0, 1))(lhs, rhs)
  for got_grad, want_grad in zip(got, want):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-4)


def test_matmul_with_transposed_weight_gradient_has_the_gradients_of_the_matmul():
  x = jax.random.normal(jax.random.PRNGKey(0), (9, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  weights = jax.random.normal(jax.random.PRNGKey(2), (9, 3))
  loss = lambda matmul: lambda x, w: (matmul(x, w) * weights).sum() + (matmul(x, w)**2).sum()
  np.testing.assert_allclose(layers.matmul_with_transposed_weight_gradient(x, w), x @ w,
                             rtol=1e-6)
  got = jax.grad(loss(layers.matmul_with_transposed_weight_gradient), argnums=(0, 1))(x, w)
  want = jax.grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
  for got_grad, want_grad in zip(got, want):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_contractions_of_other_axes_go_to_lax_dot_general_unchanged():
  lhs = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5))
  rhs = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 6))
  batched = (((2,), (1,)), ((0,), (0,)))       # batch axes: attention's einsums
  leading = (((0,), (0,)), NO_BATCH)           # lhs's leading axis: a weight gradient
  for lhs_, rhs_, numbers in ((lhs, rhs, batched), (lhs, rhs[:, 0], leading)):
    np.testing.assert_array_equal(layers.matmul_dot_general(lhs_, rhs_, numbers),
                                  jax.lax.dot_general(lhs_, rhs_, numbers))


def _small(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  section = config[config.model]
  section.update(embed_dim=16, num_heads=2, mlp_ratio=2)
  if config.model == 'tlb':
    # The chunk loop, not the configs' unrolled chunks, and one fast-stream layer that also
    # cross-attends: every kind of block, in less compile time.
    section.update(chunk_size=4, num_latents=3, scan_unroll=1, num_layers=1,
                   cross_attention_every=1)
  if config.model == 'perceiver':
    section.update(num_latents=4, head_dim=8)
  if section.tokenizer == 'linear':
    section.patch_size = 4
  return config


@pytest.mark.parametrize('patch_size', [2, 4])
def test_patch_projection_has_the_parameters_outputs_and_gradients_of_nn_conv(patch_size):
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 12, 3))
  ours = layers.PatchProjection(5, patch_size)
  conv = conv_patch_projection(5, patch_size, kernel_init=nn.linear.default_kernel_init)
  params = ours.init(jax.random.PRNGKey(1), images)
  conv_params = conv.init(jax.random.PRNGKey(1), images)
  jax.tree.map(np.testing.assert_array_equal, params, conv_params)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a bias other than zeros
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 8 // patch_size, 12 // patch_size, 5))
  loss = lambda module: lambda p, x: (module.apply(p, x) * weights).sum()
  np.testing.assert_allclose(ours.apply(params, images), conv.apply(params, images), rtol=1e-5,
                             atol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, images)),
                       jax.tree.leaves(jax.grad(loss(conv), argnums=(0, 1))(params, images))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _uses(config, layer: str) -> bool:
  """Whether the model of `config` computes with `VERSIONS[layer]`."""
  section = config[config.model]
  if layer == 'patch_projection':
    return section.tokenizer == 'linear'
  if layer in ('normalized_projections', 'gelu_erf'):
    return section.get('variant') == 'keras_seed'
  return True


# (config, layer) for every model and every layer version it computes with.
MODEL_LAYERS = [(name, layer) for name in ('cifar10', 'cifar10_seed', 'vit_cifar10',
                                           'perceiver_cifar100')
                for layer in sorted(VERSIONS) if _uses(_small(name), layer)]


@pytest.mark.parametrize('name, layer', MODEL_LAYERS)
def test_every_model_has_the_logits_and_gradients_of_the_baseline_layers(name, layer):
  """In training mode, dropout on: the masks come from the same keys either way."""
  model = create_model(_small(name), num_classes=10)
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 3))
  labels = jnp.array([1, 4, 7])
  params = model.init(jax.random.PRNGKey(1), images, train=False)['params']
  rngs = {'dropout': jax.random.PRNGKey(2)}

  def loss(params):
    logits = model.apply({'params': params}, images, train=True, rngs=rngs)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1).mean()

  attribute, baseline = VERSIONS[layer]
  assert_versions_give_the_same_loss_and_gradients(
      loss, params, attribute, getattr(layers, attribute), baseline, loss_rtol=1e-5)


def _projection_operands(shared: bool):
  """Inputs, LayerNorm affines and projections of a query, key and value; with `shared` the
  three read one array (self-attention), else the key and value read another (cross)."""
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
  x = jax.random.normal(next(keys), (2, 5, 8))
  context = x if shared else jax.random.normal(next(keys), (2, 3, 8))
  norms = [(1 + 0.3 * jax.random.normal(next(keys), (8,)), jax.random.normal(next(keys), (8,)))
           for _ in range(3)]
  projections = [(jax.random.normal(next(keys), (8, 2, 4)), jax.random.normal(next(keys), (2, 4)))
                 for _ in range(3)]
  return [x, context, context], norms, projections


@pytest.mark.parametrize('shared', [True, False], ids=['self_attention', 'cross_attention'])
def test_normalized_projections_have_the_outputs_and_gradients_of_one_layer_norm_and_dense_each(
    shared):
  inputs, norms, projections = _projection_operands(shared)
  weights = [jax.random.normal(jax.random.PRNGKey(i), y.shape) for i, y in
             enumerate(separately_normalized_projections(inputs, norms, projections))]

  def loss(function):
    def of(x, context, norms, projections):
      outputs = function([x, context, context], norms, projections)
      return sum((y * w).sum() + (y**2).sum() for y, w in zip(outputs, weights))
    return of

  for got, want in zip(layers.normalized_projections(inputs, norms, projections),
                       separately_normalized_projections(inputs, norms, projections)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  arguments = (inputs[0], inputs[1], norms, projections)
  got = jax.grad(loss(layers.normalized_projections), argnums=(0, 1, 2, 3))(*arguments)
  want = jax.grad(loss(separately_normalized_projections), argnums=(0, 1, 2, 3))(
      *arguments)
  for got_grad, want_grad in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-4)


def test_projections_of_one_input_run_as_one_matmul():
  inputs, norms, projections = _projection_operands(shared=True)
  hlo = jax.jit(lambda x, *operands: layers.normalized_projections([x, x, x], *operands)).lower(
      inputs[0], norms, projections).as_text()
  token_matmuls = [line for line in hlo.splitlines()
                   if 'dot_general' in line and '(tensor<10x8xf32>' in line]
  assert len(token_matmuls) == 1 and '-> tensor<10x24xf32>' in token_matmuls[0]


def test_dense_general_params_are_drawn_as_nn_dense_general_draws_them():
  init = layers.keras_attention_kernel_init((8, 2, 4), 'conv')
  x = jnp.ones((3, 8))
  want = nn.DenseGeneral((2, 4), kernel_init=init).init(jax.random.PRNGKey(5), x)
  got = layers.DenseGeneralParams((2, 4), init).init(jax.random.PRNGKey(5), 8)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize('fused, norms', [(True, 'given'), (False, None)])
def test_attention_takes_norms_with_unfused_projections_only(fused, norms):
  attention = layers.MultiHeadAttention(num_heads=2, fused=fused)
  x = jnp.ones((1, 4, 8))
  norms = None if norms is None else [(jnp.ones(8), jnp.zeros(8))] * 3
  with pytest.raises(ValueError, match='norms are given with fused=False'):
    attention.init(jax.random.PRNGKey(0), x, norms=norms, deterministic=True)


def test_gelu_erf_has_the_values_and_gradients_of_jax_exact_gelu():
  x = jnp.concatenate([jnp.linspace(-12.0, 12.0, 2001),
                       3.0 * jax.random.normal(jax.random.PRNGKey(0), (4096,))])
  jax_gelu = lambda x: jax.nn.gelu(x, approximate=False)
  np.testing.assert_allclose(layers.gelu_erf(x), jax_gelu(x), rtol=1e-5, atol=1e-6)
  gradient = lambda f: jax.vmap(jax.grad(f))(x)
  np.testing.assert_allclose(gradient(layers.gelu_erf), gradient(jax_gelu), rtol=1e-5, atol=1e-6)
