"""Temporal Latent Bottleneck classifier (Didolkar et al. 2022, arXiv 2205.14794).

The image becomes a token sequence split into chunks of `chunk_size` tokens. A recurrent cell
runs once per chunk:

  fast stream  (perceptual module): `num_layers` self-attention blocks over the chunk, with a
                cross-attention block (fast queries -> slow keys/values) after every r-th one;
  slow stream  (temporal latent bottleneck): `num_latents` vectors updated by one cross-attention
                block (slow queries -> fast keys/values), carried to the next chunk.

The recurrence is `nn.scan` over the chunk axis with parameters shared across steps.

`variant` picks the blocks: 'paper' (above) or 'keras_seed', which computes exactly the function
of the Keras seed's model (`benchmarks/keras_seed.py`), so that its weights port by name
(`tlb_jax.keras_port`). The seed's recurrent cell keeps a list of
num_layers + ceil(num_layers / r) perceptual blocks (the list in which it meant to interleave
self- and cross-attention), runs every block of the list as self-attention and runs the
blocks at indices 0, r, 2r, ... of the list a second time, as cross-attention to the slow
stream, through the block's second attention sub-layer and the same MLP. Its blocks normalise
queries, keys and values with three LayerNorms, use the exact (erf) GELU, give every head D
features (Keras `key_dim=embed_dim`) and take Keras's default initializers; its slow update is
the first attention sub-layer of one more block.
Shape letters: B batch, N tokens, C chunks, K chunk_size, L num_latents, D embed_dim, H heads.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlb_jax.models.layers import (DROPOUT_MASK, AttentionBlock, Dtype, PatchEmbed,
                                   classification_head)

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
}
REMAT_CHOICES = ('none',) + tuple(REMAT_POLICIES)


def seed_perceptual_blocks(num_layers: int, cross_attention_every: int) -> int:
  """Length of the Keras seed's perceptual-module list: a block per layer, plus one more after
  each layer whose index is a multiple of r."""
  return num_layers + len(range(0, num_layers, cross_attention_every))


class TLBCell(nn.Module):
  """One recurrent step over a chunk.

  Attributes mirror `TLB`; `deterministic` turns dropout off.
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

  @nn.compact
  def __call__(self, carry, chunk):
    """carry ((B, L, D) slow stream, (B, K, D) last fast stream), chunk (B, K, D).

    Returns:
      The new carry and, if `return_intermediates`, a dict with the new slow stream (B, L, D)
      and the bottleneck's attention weights (B, H, L, K); otherwise None.
    """
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
    dtype: compute dtype; parameters are float32.
    scan_unroll: chunks per iteration of the compiled scan loop.
    remat: what the backward pass recomputes instead of storing for every chunk: 'none'
      (store everything), 'dots' (store projection outputs and dropout masks, recompute the
      rest) or 'full'
      (store only the carried streams).
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
  dtype: Dtype = jnp.float32
  scan_unroll: int = 1
  remat: str = 'none'

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
    seed = self.variant == 'keras_seed'
    tokens = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.tokenizer,
                        keras_init=seed, name='patch_embed')(images)
    batch, num_tokens, features = tokens.shape
    if num_tokens % self.chunk_size:
      raise ValueError(f'{num_tokens} patches are not divisible by chunk_size {self.chunk_size}')
    num_chunks = num_tokens // self.chunk_size
    # Chunk-major layout: each scan step reads one contiguous (B, K, D) slab.
    chunks = tokens.reshape(batch, num_chunks, self.chunk_size, features).swapaxes(0, 1)

    if self.slow_stream_init == 'learned':
      initial = self.param('initial_slow_stream', nn.initializers.normal(0.02),
                           (self.num_latents, features))
    else:
      initial = jnp.zeros((self.num_latents, features))
    slow_stream = jnp.broadcast_to(initial.astype(self.dtype),
                                   (batch, self.num_latents, features))
    carry = (slow_stream, jnp.zeros_like(chunks[0]))

    if self.remat not in REMAT_CHOICES:
      raise ValueError(f'remat must be one of {REMAT_CHOICES}, got {self.remat!r}')
    cell = TLBCell
    if self.remat != 'none':
      cell = nn.remat(TLBCell, prevent_cse=False, policy=REMAT_POLICIES[self.remat])
    recurrence = nn.scan(
        cell,
        variable_broadcast='params',
        split_rngs={'params': False, 'dropout': True},
        in_axes=0,
        out_axes=0,
        length=num_chunks,
        unroll=max(1, min(self.scan_unroll, num_chunks)),
    )
    (slow_stream, fast_stream), intermediates = recurrence(
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
        name='recurrence',
    )(carry, chunks)

    if self.head == 'slow_mean':
      logits = classification_head(slow_stream, self.num_classes, dtype=self.dtype,
                                   keras_init=seed)
    else:
      logits = classification_head(fast_stream, self.num_classes, dtype=self.dtype, norm=False,
                                   keras_init=seed)
    if not return_intermediates:
      return logits
    return logits, {name: value.swapaxes(0, 1) for name, value in intermediates.items()}
