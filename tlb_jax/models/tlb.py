"""Temporal Latent Bottleneck classifier (Didolkar et al. 2022, arXiv 2205.14794).

The image becomes a token sequence split into chunks of `chunk_size` tokens. A recurrent cell
runs once per chunk:

  fast stream  (perceptual module): `num_layers` self-attention blocks over the chunk, with a
                cross-attention block (fast queries -> slow keys/values) after every r-th one;
  slow stream  (temporal latent bottleneck): `num_latents` vectors updated by one cross-attention
                block (slow queries -> fast keys/values), carried to the next chunk.

The recurrence is `nn.scan` over the chunk axis with parameters shared across steps. In the
'paper' variant the fast stream's self-attention blocks before its first cross-attention do not
read the slow stream, so in training they run before the scan, on all chunks at once (`TLB`,
"Hoisting").

`variant` picks the blocks: 'paper' (above) or 'keras_seed', which computes exactly the function
of the Keras seed's model (`benchmarks/keras_seed.py`), so that its weights port by name
(`tlb_jax.keras_port`). The seed's recurrent cell keeps a list of
num_layers + ceil(num_layers / r) perceptual blocks (the list in which it meant to interleave
self- and cross-attention), runs every block of the list as self-attention and runs the
blocks at indices 0, r, 2r, ... of the list a second time, as cross-attention to the slow
stream, through the block's second attention sub-layer and the same MLP. Its blocks normalise
queries, keys and values with three LayerNorms, use the exact (erf) GELU, give every head D
features (Keras `key_dim=embed_dim`) and take Keras's default initializers, counting the
attention kernels' fans as the Keras versions that trained the example's published logs did
(`keras_fans`); its slow update is the first attention sub-layer of one more block.
Shape letters: B batch, N tokens, C chunks, K chunk_size, L num_latents, D embed_dim, H heads.
"""

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlb_jax.choices import KERAS_FANS, REMATS
from tlb_jax.models.layers import (DROPOUT_MASK, GELU_ERF, GELU_TANH, SOFTMAX_EXP, AttentionBlock,
                                   Dtype, PatchEmbed, classification_head)

HEADS = ('slow_mean', 'fast_last_mean')
VARIANTS = ('paper', 'keras_seed')
SLOW_STREAM_INITS = ('learned', 'zeros')
# What the backward pass keeps from each chunk's forward pass; the rest is recomputed.
REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    # Projection outputs and dropout masks: redrawing the masks' random bits costs more than
    # storing them, one byte per element.
    'dots': jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(DROPOUT_MASK)),
    # 'dots' plus the softmax exponentials and the GELU's tanh or erf that the backward reads:
    # it recomputes no transcendental function but the erf GELU's derivative's exp.
    'dots_activations': jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(DROPOUT_MASK, SOFTMAX_EXP, GELU_TANH,
                                                      GELU_ERF)),
}


def seed_perceptual_blocks(num_layers: int, cross_attention_every: int) -> int:
  """Length of the Keras seed's perceptual-module list: a block per layer, plus one more after
  each layer whose index is a multiple of r."""
  return num_layers + len(range(0, num_layers, cross_attention_every))


def num_prefix_layers(variant: str, num_layers: int, cross_attention_every: int) -> int:
  """Fast-stream self-attention blocks that run before the first cross-attention to the slow
  stream: layers 0 .. r-1 of the 'paper' cell (all of them if r > num_layers); none in
  'keras_seed', whose first block cross-attends itself."""
  if variant == 'keras_seed':
    return 0
  return min(cross_attention_every, num_layers)


class TLBCell(nn.Module):
  """One recurrent step over a chunk.

  Attributes mirror `TLB`; `deterministic` turns dropout off; `head_dim` is Dh of every block
  (None: D // H; `TLB` passes D for 'keras_seed', whose heads have D features each).

  `__call__` runs the whole cell. The first `num_prefix_layers` fast-stream blocks do not read
  the slow stream, so `fast_stream_prefix` can run them on any number of chunks at once, and
  `__call__(..., prefix_applied=True)` then runs the rest of the cell. The blocks are defined in
  `setup`, so both methods use the same parameters, under the same names.
  """

  num_layers: int
  cross_attention_every: int
  num_heads: int
  mlp_ratio: int
  dropout_rate: float
  attention_dropout_rate: float
  dtype: Dtype
  deterministic: bool
  return_intermediates: bool = False
  variant: str = 'paper'
  head_dim: int | None = None
  keras_fans: str = 'conv'

  def setup(self):
    seed = self.variant == 'keras_seed'
    block = functools.partial(
        AttentionBlock, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, head_dim=self.head_dim, qkv_norms=seed, approximate_gelu=not seed,
        keras_init=seed, keras_fans=self.keras_fans)
    if seed:
      self.perceptual = [
          block(name=f'perceptual_{index}')
          for index in range(seed_perceptual_blocks(self.num_layers, self.cross_attention_every))]
    else:
      self.fast_self_attention = [block(name=f'fast_self_attention_{layer}')
                                  for layer in range(self.num_layers)]
      # One after each r-th self-attention block: index k follows layer (k + 1) * r - 1.
      self.fast_cross_attention = [
          block(name=f'fast_cross_attention_{layer}') for layer in range(self.num_layers)
          if (layer + 1) % self.cross_attention_every == 0]
    self.slow_update = block(name='slow_update')

  def fast_stream_prefix(self, tokens):
    """tokens (M, K, D), any number M of chunks -> (M, K, D) after the first
    `num_prefix_layers` fast-stream self-attention blocks.

    With dropout, one call draws one mask over all M chunks.
    """
    for layer in range(num_prefix_layers(self.variant, self.num_layers,
                                         self.cross_attention_every)):
      tokens, _ = self.fast_self_attention[layer](tokens, deterministic=self.deterministic)
    return tokens

  def __call__(self, carry, chunk, *, prefix_applied: bool = False):
    """carry ((B, L, D) slow stream, (B, K, D) last fast stream), chunk (B, K, D): the chunk's
    tokens or, with `prefix_applied`, `fast_stream_prefix` of them.

    Returns:
      The new carry and, if `return_intermediates`, a dict with the new slow stream (B, L, D)
      and the bottleneck's attention weights (B, H, L, K); otherwise None.
    """
    slow_stream, _ = carry
    if self.variant == 'keras_seed':
      if prefix_applied:
        raise ValueError("the 'keras_seed' cell has no fast-stream prefix")
      fast_stream = chunk
      for index, layer in enumerate(self.perceptual):
        fast_stream, _ = layer(fast_stream, deterministic=self.deterministic)
        if index % self.cross_attention_every == 0:
          fast_stream, _ = layer(fast_stream, slow_stream, deterministic=self.deterministic,
                                 stream='slow')
    else:
      fast_stream = chunk if prefix_applied else self.fast_stream_prefix(chunk)
      first = num_prefix_layers(self.variant, self.num_layers, self.cross_attention_every)
      for layer in range(self.num_layers):
        if layer >= first:
          fast_stream, _ = self.fast_self_attention[layer](
              fast_stream, deterministic=self.deterministic)
        if (layer + 1) % self.cross_attention_every == 0:
          fast_stream, _ = self.fast_cross_attention[layer // self.cross_attention_every](
              fast_stream, slow_stream, deterministic=self.deterministic)
    slow_stream, weights = self.slow_update(
        slow_stream, fast_stream, deterministic=self.deterministic)
    outputs = None
    if self.return_intermediates:
      outputs = {'slow_stream': slow_stream, 'attention': weights}
    return (slow_stream, fast_stream), outputs


class TLB(nn.Module):
  """Temporal Latent Bottleneck image classifier.

  Attributes:
    num_classes: size of the logits.
    patch_size: side of the square patches; each token stands for one.
    tokenizer: 'linear' (patch projection), 'conv' (CCT-style conv stages) or 'stem' (stride-2
      conv stem); see `PatchEmbed`.
    embed_dim: D, width of both streams.
    chunk_size: K, tokens per chunk (one recurrent step).
    num_latents: L, slow-stream vectors.
    num_layers: self-attention blocks in the perceptual module.
    cross_attention_every: r; a fast->slow cross-attention follows every r-th self-attention.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D.
    dropout_rate: dropout after each MLP.
    attention_dropout_rate: dropout on attention probabilities.
    slow_stream_init: 'learned' (a trained initial state) or 'zeros' (the seed).
    head: 'slow_mean' (LayerNorm'd mean of the final slow stream) or 'fast_last_mean' (mean of
      the last chunk's fast stream, the seed).
    variant: 'paper' or 'keras_seed' (the Keras seed's blocks and initializers; see the module
      docstring). The seed itself also has tokenizer 'linear', slow_stream_init 'zeros', head
      'fast_last_mean' and num_latents = chunk_size.
    keras_fans: 'keras_seed' only: how its attention kernels' glorot_uniform counts fans,
      'conv' (the Keras versions of the example's published logs) or 'einsum' (Keras since
      April 2026); see `layers.keras_attention_kernel_init`. It shapes the initial parameters
      only.
    dtype: compute dtype; parameters are float32.
    scan_unroll: chunks per iteration of the compiled scan loop.
    remat: what the backward pass recomputes instead of storing for every chunk: 'none'
      (store everything), 'dots' (store projection outputs and dropout masks, recompute the
      rest), 'dots_activations' ('dots' and the softmax exponentials and the GELU's tanh or erf)
      or 'full' (store only the carried streams). The hoisted blocks (below) follow the same
      policy.

  Hoisting: in the 'paper' variant the first `num_prefix_layers` fast-stream blocks (those
  before the first cross-attention; 2 of 4 with r = 2) do not read the slow stream. They run
  before the chunk scan, on all B * C chunks as one batch, so XLA gets larger matmuls, the
  sequential loop does less, and their weight gradients are one matmul each instead of one per
  chunk. The function and the parameters (names and shapes) are those of running them inside
  the scan; only dropout differs: the hoisted blocks draw one mask over all chunks, so a
  training step draws other masks (from the same distribution) for the same rng.
  `TLBWithoutHoisting` (`hoist_first_blocks` False) runs every block inside the scan.
  Evaluation (`train=False`) runs every block inside the scan too: with no weight gradients to
  batch, the hoisted blocks' larger activations only leave the cache (1.05x faster evaluation
  inside the scan, docs/performance.md); `hoist_in_evaluation` True hoists there as well.
  """

  num_classes: int
  patch_size: int = 4
  tokenizer: str = 'linear'
  embed_dim: int = 64
  chunk_size: int = 8
  num_latents: int = 8
  num_layers: int = 4
  cross_attention_every: int = 2
  num_heads: int = 1
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  slow_stream_init: str = 'learned'
  head: str = 'slow_mean'
  variant: str = 'paper'
  keras_fans: str = 'conv'
  dtype: Dtype = jnp.float32
  scan_unroll: int = 1
  remat: str = 'none'
  # Class attributes, not dataclass fields, so that configs (and the config.json of saved
  # runs) have no entry for them; `TLBWithoutHoisting` turns hoisting off.
  hoist_first_blocks: ClassVar[bool] = True
  hoist_in_evaluation: ClassVar[bool] = False

  @nn.compact
  def __call__(self, images, *, train: bool, return_intermediates: bool = False):
    """images (B, H, W, 3) float in [0, 1] -> logits (B, num_classes) float32.

    With `return_intermediates`, returns (logits, dict) where the dict holds
    'slow_stream' (B, C, L, D), the slow stream after each chunk, and 'attention'
    (B, C, H, L, K), the bottleneck's slow-over-fast attention weights for each chunk.
    """
    if self.head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {self.head!r}')
    if self.slow_stream_init not in SLOW_STREAM_INITS:
      raise ValueError(
          f'slow_stream_init must be one of {SLOW_STREAM_INITS}, got {self.slow_stream_init!r}')
    if self.variant not in VARIANTS:
      raise ValueError(f'variant must be one of {VARIANTS}, got {self.variant!r}')
    if self.keras_fans not in KERAS_FANS:
      raise ValueError(f'keras_fans must be one of {KERAS_FANS}, got {self.keras_fans!r}')
    seed = self.variant == 'keras_seed'
    tokens = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.tokenizer,
                        keras_init=seed, name='patch_embed')(images)
    batch, num_tokens, features = tokens.shape
    if num_tokens % self.chunk_size:
      raise ValueError(f'{num_tokens} patches are not divisible by chunk_size {self.chunk_size}')
    num_chunks = num_tokens // self.chunk_size
    if self.remat not in REMATS:
      raise ValueError(f'remat must be one of {REMATS}, got {self.remat!r}')

    if self.slow_stream_init == 'learned':
      initial = self.param('initial_slow_stream', nn.initializers.normal(0.02),
                           (self.num_latents, features))
    else:
      initial = jnp.zeros((self.num_latents, features))

    cell = TLBCell(
        num_layers=self.num_layers,
        cross_attention_every=self.cross_attention_every,
        num_heads=self.num_heads,
        mlp_ratio=self.mlp_ratio,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype,
        deterministic=not train,
        return_intermediates=return_intermediates,
        variant=self.variant,
        head_dim=features if seed else None,
        keras_fans=self.keras_fans,
        name='recurrence',
    )
    hoist = (self.hoist_first_blocks and (train or self.hoist_in_evaluation)
             and num_prefix_layers(self.variant, self.num_layers, self.cross_attention_every) > 0)

    # Lifted over functions of the one `cell`, so that the blocks before and inside the scan
    # are the same submodules of 'recurrence'.
    def prefix(cell, tokens):
      return cell.fast_stream_prefix(tokens)

    def step(cell, carry, chunk):
      return cell(carry, chunk, prefix_applied=hoist)

    if self.remat != 'none':
      remat = functools.partial(nn.remat, prevent_cse=False, policy=REMAT_POLICIES[self.remat])
      prefix, step = remat(prefix), remat(step)

    if hoist:
      # Batch-major (B * C, K, D): a reshape of the tokens, no transpose.
      tokens = prefix(cell, tokens.reshape(batch * num_chunks, self.chunk_size, features))
      tokens = tokens.reshape(batch, num_tokens, features)
    # Chunk-major layout: each scan step reads one contiguous (B, K, D) slab.
    chunks = tokens.reshape(batch, num_chunks, self.chunk_size, features).swapaxes(0, 1)
    slow_stream = jnp.broadcast_to(initial.astype(self.dtype),
                                   (batch, self.num_latents, features))
    carry = (slow_stream, jnp.zeros_like(chunks[0]))
    recurrence = nn.scan(
        step,
        variable_broadcast='params',
        split_rngs={'params': False, 'dropout': True},
        in_axes=0,
        out_axes=0,
        length=num_chunks,
        unroll=max(1, min(self.scan_unroll, num_chunks)),
    )
    (slow_stream, fast_stream), intermediates = recurrence(cell, carry, chunks)

    if self.head == 'slow_mean':
      logits = classification_head(slow_stream, self.num_classes, dtype=self.dtype,
                                   keras_init=seed)
    else:
      logits = classification_head(fast_stream, self.num_classes, dtype=self.dtype, norm=False,
                                   keras_init=seed)
    if not return_intermediates:
      return logits
    return logits, {name: value.swapaxes(0, 1) for name, value in intermediates.items()}


class TLBWithoutHoisting(TLB):
  """`TLB` with every fast-stream block inside the chunk scan: the same function and parameters,
  for measuring what hoisting gains (`benchmarks/hoist_ab.py`)."""

  hoist_first_blocks = False
