"""Tests of hoisting the TLB's first fast-stream blocks out of the chunk scan.

In the 'paper' variant the self-attention blocks before the fast stream's first cross-attention
do not read the slow stream, so `TLB` runs them on all chunks at once, before the scan. The
model must keep its parameters (names and shapes) and, without dropout, its function: the
logits, the per-chunk intermediates and the gradients of `_ReferenceTLB`, which runs the whole
cell, written as one compact module, at every step of the scan.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, cifar10_seed
from tlb_jax.models import create_model
from tlb_jax.models.layers import AttentionBlock, Dropout, PatchEmbed, classification_head
from tlb_jax.models.tlb import (REMAT_POLICIES, TLB, TLBWithoutHoisting, num_prefix_layers,
                                seed_perceptual_blocks)

NUM_CLASSES = 10
IMAGE_SIZE = 16
# 16x16 images, 4x4 patches: 16 tokens in 4 chunks of 4. Three images, so that a mix-up of the
# batch and chunk axes (4) cannot go unnoticed.
BATCH = 3
BASE = dict(num_classes=NUM_CLASSES, patch_size=4, embed_dim=16, chunk_size=4, num_latents=3,
            num_heads=2, mlp_ratio=2)
# Cells: the fast stream's depth and r (2 of 4, the best config's; all of 2; all of 3 blocks
# hoisted), the head on either stream, and the Keras seed's cell (nothing hoisted). Shallow
# where depth adds nothing to check: each compile of a gradient takes seconds.
CELLS = {
    'r2_of_4': dict(num_layers=4, cross_attention_every=2),
    'r1_of_2': dict(num_layers=2, cross_attention_every=1),
    'r3_of_3': dict(num_layers=3, cross_attention_every=3),
    'r2_of_2_fast_stream_head': dict(num_layers=2, cross_attention_every=2,
                                     head='fast_last_mean', slow_stream_init='zeros'),
    'keras_seed_r2_of_2': dict(num_layers=2, cross_attention_every=2, variant='keras_seed',
                               head='fast_last_mean', slow_stream_init='zeros'),
}
# Remat changes what the backward pass recomputes, not which blocks are hoisted: 'dots' is
# checked on the best config's cell.
GRADIENT_CASES = [(cell, 'none') for cell in sorted(CELLS)] + [('r2_of_4', 'dots')]
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


class _ReferenceCell(nn.Module):
  """The whole TLB cell as one compact module: every block runs inside the chunk scan.

  carry ((B, L, D), (B, K, D)), chunk (B, K, D) -> (new carry, intermediates or None).
  """

  num_layers: int
  cross_attention_every: int
  num_heads: int
  mlp_ratio: int
  dropout_rate: float
  attention_dropout_rate: float
  dtype: jnp.dtype
  deterministic: bool
  return_intermediates: bool = False
  variant: str = 'paper'

  @nn.compact
  def __call__(self, carry, chunk):
    slow_stream, _ = carry
    seed = self.variant == 'keras_seed'
    block = lambda name: AttentionBlock(
        num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        head_dim=chunk.shape[-1] if seed else None, qkv_norms=seed, approximate_gelu=not seed,
        keras_init=seed, name=name)
    fast_stream = chunk
    if seed:
      for index in range(seed_perceptual_blocks(self.num_layers, self.cross_attention_every)):
        layer = block(f'perceptual_{index}')
        fast_stream, _ = layer(fast_stream, deterministic=self.deterministic)
        if index % self.cross_attention_every == 0:
          fast_stream, _ = layer(fast_stream, slow_stream, deterministic=self.deterministic,
                                 stream='slow')
    else:
      for layer in range(self.num_layers):
        fast_stream, _ = block(f'fast_self_attention_{layer}')(
            fast_stream, deterministic=self.deterministic)
        if (layer + 1) % self.cross_attention_every == 0:
          fast_stream, _ = block(f'fast_cross_attention_{layer}')(
              fast_stream, slow_stream, deterministic=self.deterministic)
    slow_stream, weights = block('slow_update')(
        slow_stream, fast_stream, deterministic=self.deterministic)
    outputs = None
    if self.return_intermediates:
      outputs = {'slow_stream': slow_stream, 'attention': weights}
    return (slow_stream, fast_stream), outputs


class _ReferenceTLB(TLB):
  """`TLB` whose recurrence scans `_ReferenceCell` over the chunks."""

  @nn.compact
  def __call__(self, images, *, train: bool, return_intermediates: bool = False):
    """images (B, H, W, 3) -> logits (B, classes) [, {'slow_stream': (B, C, L, D),
    'attention': (B, C, H, L, K)}]."""
    seed = self.variant == 'keras_seed'
    tokens = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.tokenizer,
                        keras_init=seed, name='patch_embed')(images)
    batch, num_tokens, features = tokens.shape
    num_chunks = num_tokens // self.chunk_size
    chunks = tokens.reshape(batch, num_chunks, self.chunk_size, features).swapaxes(0, 1)
    if self.slow_stream_init == 'learned':
      initial = self.param('initial_slow_stream', nn.initializers.normal(0.02),
                           (self.num_latents, features))
    else:
      initial = jnp.zeros((self.num_latents, features))
    slow_stream = jnp.broadcast_to(initial.astype(self.dtype),
                                   (batch, self.num_latents, features))
    carry = (slow_stream, jnp.zeros_like(chunks[0]))
    cell = _ReferenceCell
    if self.remat != 'none':
      cell = nn.remat(_ReferenceCell, prevent_cse=False, policy=REMAT_POLICIES[self.remat])
    recurrence = nn.scan(cell, variable_broadcast='params',
                         split_rngs={'params': False, 'dropout': True}, in_axes=0, out_axes=0,
                         length=num_chunks, unroll=max(1, min(self.scan_unroll, num_chunks)))
    (slow_stream, fast_stream), intermediates = recurrence(
        num_layers=self.num_layers, cross_attention_every=self.cross_attention_every,
        num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        deterministic=not train, return_intermediates=return_intermediates,
        variant=self.variant, name='recurrence')(carry, chunks)
    if self.head == 'slow_mean':
      logits = classification_head(slow_stream, self.num_classes, dtype=self.dtype,
                                   keras_init=seed)
    else:
      logits = classification_head(fast_stream, self.num_classes, dtype=self.dtype, norm=False,
                                   keras_init=seed)
    if not return_intermediates:
      return logits
    return logits, {name: value.swapaxes(0, 1) for name, value in intermediates.items()}


def _fields(model: TLB) -> dict:
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(TLB)
          if f.name not in ('parent', 'name')}


def _as(cls, model: TLB) -> TLB:
  """`model`'s hyper-parameters in another TLB class."""
  return cls(**_fields(model))


def _abstract_params(model: TLB, image_size: int) -> dict:
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        images)['params']


def _paths_and_shapes(params) -> dict:
  return {jax.tree_util.keystr(path): (leaf.shape, leaf.dtype)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _small_model(cell: str, **overrides) -> TLB:
  return TLB(**{**BASE, **CELLS[cell], **overrides})


def _images():
  return jax.random.uniform(jax.random.PRNGKey(0), (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))


def _params(model: TLB):
  return jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(1), _images())['params']


def _seed_config_with(variant):
  config = cifar10_seed.get_config()
  config.tlb.variant = variant
  return config


@pytest.mark.parametrize('variant, num_layers, r, expected', [
    ('paper', 4, 2, 2), ('paper', 4, 1, 1), ('paper', 4, 3, 3), ('paper', 4, 4, 4),
    ('paper', 2, 3, 2), ('keras_seed', 4, 2, 0)])
def test_the_hoisted_blocks_are_those_before_the_first_cross_attention(variant, num_layers, r,
                                                                       expected):
  """'paper' hoists self-attention layers 0 .. r-1 (every layer when r > num_layers: then no
  block cross-attends); 'keras_seed' hoists none."""
  assert num_prefix_layers(variant, num_layers, r) == expected


@pytest.mark.parametrize('config, image_size', [
    (cifar10.get_config(), 32),
    (_seed_config_with('paper'), 48),
    (_seed_config_with('keras_seed'), 48),
], ids=['cifar10', 'seed_size_paper', 'seed_size_keras_seed'])
def test_hoisting_keeps_every_parameter_path_and_shape(config, image_size):
  """The configs' models have the parameter tree of the reference (so saved runs and exported
  parameters load unchanged), with and without hoisting."""
  model = create_model(config, NUM_CLASSES)
  expected = _paths_and_shapes(_abstract_params(_as(_ReferenceTLB, model), image_size))
  for cls in (TLB, TLBWithoutHoisting):
    assert _paths_and_shapes(_abstract_params(_as(cls, model), image_size)) == expected


@pytest.mark.parametrize('cell', sorted(CELLS))
def test_small_models_keep_every_parameter_path_and_shape(cell):
  """The parameter tree of every tested cell is the reference's."""
  model = _small_model(cell)
  assert (_paths_and_shapes(_abstract_params(model, IMAGE_SIZE))
          == _paths_and_shapes(_abstract_params(_as(_ReferenceTLB, model), IMAGE_SIZE)))


@pytest.mark.parametrize('cell', sorted(CELLS))
def test_evaluation_gives_the_logits_and_intermediates_of_the_reference(cell):
  """train=False: the logits, the slow stream after each chunk and the bottleneck's attention
  of each chunk are the reference's, with and without hoisting."""
  model = _small_model(cell)
  params, images = _params(model), _images()
  apply = lambda m: jax.jit(functools.partial(m.apply, train=False, return_intermediates=True))(
      {'params': params}, images)
  expected_logits, expected = apply(_as(_ReferenceTLB, model))
  for cls in (TLB, TLBWithoutHoisting):
    logits, intermediates = apply(_as(cls, model))
    np.testing.assert_allclose(logits, expected_logits, **TOLERANCE)
    for name in ('slow_stream', 'attention'):
      np.testing.assert_allclose(intermediates[name], expected[name], **TOLERANCE)
  # Not vacuous: the images give different logits.
  assert np.abs(np.asarray(expected_logits[0] - expected_logits[1])).max() > 1e-3


def _prefix_batch_sizes(model, params, train: bool) -> list[int]:
  """The leading size of every input of `TLBCell.fast_stream_prefix` in one forward pass."""
  sizes = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == 'fast_stream_prefix':
      sizes.append(args[0].shape[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({'params': params}, _images(), train=train,
                rngs={'dropout': jax.random.PRNGKey(7)})
  return sizes


def test_training_hoists_and_evaluation_runs_every_block_inside_the_scan():
  """Hoisted, the prefix runs once on all B * C chunks; inside the scan, once on B chunks."""
  model = _small_model('r2_of_4')
  params = _params(model)
  num_chunks = (IMAGE_SIZE // model.patch_size) ** 2 // model.chunk_size
  assert _prefix_batch_sizes(model, params, train=True) == [BATCH * num_chunks]
  assert set(_prefix_batch_sizes(model, params, train=False)) == {BATCH}


def _training_loss(model, params, images):
  logits = model.apply({'params': params}, images, train=True,
                       rngs={'dropout': jax.random.PRNGKey(7)})
  return jnp.mean(logits**2)


@pytest.mark.parametrize('cell, remat', GRADIENT_CASES)
def test_training_without_dropout_gives_the_gradients_of_the_reference(cell, remat):
  """train=True with dropout rates 0: the gradient with respect to every parameter is the
  reference's, with the hoisted blocks' weight gradients taken once over all chunks."""
  model = _small_model(cell, remat=remat, dropout_rate=0.0, attention_dropout_rate=0.0)
  params, images = _params(model), _images()
  grad = lambda m: jax.jit(jax.grad(functools.partial(_training_loss, m)))(params, images)
  expected = grad(_as(_ReferenceTLB, model))
  actual = grad(model)
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(functools.partial(np.testing.assert_allclose, **TOLERANCE), actual, expected)
  # Not vacuous: the first fast-stream block has a gradient.
  first_block = 'perceptual_0' if model.variant == 'keras_seed' else 'fast_self_attention_0'
  assert max(float(jnp.abs(g).max())
             for g in jax.tree.leaves(expected['recurrence'][first_block])) > 1e-4


def test_hoisted_blocks_draw_their_dropout_masks_once_over_all_chunks():
  """In training with dropout, the blocks before the first cross-attention drop out on all
  B * C chunks at once (one mask per step, not the reference's per-chunk masks for the same
  rng, but masks of the same rate); the blocks after it drop out in the scan, one chunk of B
  at a time."""
  model = _small_model('r2_of_4', dropout_rate=0.5, attention_dropout_rate=0.5)
  images = jax.ShapeDtypeStruct((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          images)
  leading_sizes = {}

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, Dropout) and context.method_name == '__call__'
        and not kwargs['deterministic']):
      leading_sizes.setdefault(context.module.path[1], set()).add(args[0].shape[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, x: model.apply(p, x, train=True,
                                            rngs={'dropout': jax.random.PRNGKey(1)}),
                   params, images)
  num_chunks = (IMAGE_SIZE // BASE['patch_size'])**2 // BASE['chunk_size']
  assert leading_sizes == {
      'fast_self_attention_0': {BATCH * num_chunks}, 'fast_self_attention_1': {BATCH * num_chunks},
      'fast_cross_attention_1': {BATCH}, 'fast_self_attention_2': {BATCH},
      'fast_self_attention_3': {BATCH}, 'fast_cross_attention_3': {BATCH},
      'slow_update': {BATCH}}
