"""Perceiver image classifier (Jaegle et al. 2021, arXiv 2103.03206), as in the seed's Keras
example ("Image classification with Perceiver").

The image becomes a byte array of patch tokens with learned position embeddings (the Keras
example's `PatchEncoder`; the paper uses Fourier features). A trainable latent array of
`num_latents` vectors reads the byte array through one cross-attention block (latent queries,
byte keys/values), then a tower of `num_layers` self-attention blocks mixes the latents. The
cross-attention + tower pair runs `num_iterations` times with the same weights each time (the
paper's and the seed's weight sharing), so the parameter count does not depend on
`num_iterations`. The head pools the final latents.

Shape letters: B batch, N patches, L num_latents, D embed_dim, I num_iterations, H heads.
"""

import flax.linen as nn
import jax.numpy as jnp

from tlb_jax.models.layers import AttentionBlock, Dtype, PatchEmbed, classification_head


class Perceiver(nn.Module):
  """Perceiver classifier with weights shared across iterations.

  Attributes:
    num_classes: size of the logits.
    patch_size: side of the square patches; the seed uses 2 on 64x64.
    tokenizer: 'linear' (patch projection, the seed), 'conv' or 'stem' (see `PatchEmbed`).
    embed_dim: D, width of the byte and latent arrays (the seed's `projection_dim`).
    num_latents: L, rows of the latent array (the seed's `latent_dim`).
    num_layers: self-attention blocks in the latent tower (the seed's
      `num_transformer_blocks`).
    num_iterations: repetitions of cross-attention + tower, all with the same weights.
    num_heads: heads of the tower's self-attention.
    cross_attention_heads: heads of the latent->byte cross-attention (1 in the paper and the
      seed).
    mlp_ratio: MLP hidden width / D (1 in the seed: `ffn_units = [D, D]`).
    head_dim: features per head in every attention; None gives D / heads. The seed's Keras
      layers use `key_dim=D` for every head (head_dim=D).
    dropout_rate: dropout after each MLP.
    attention_dropout_rate: dropout on attention probabilities.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  patch_size: int = 2
  tokenizer: str = 'linear'
  embed_dim: int = 256
  num_latents: int = 256
  num_layers: int = 4
  num_iterations: int = 2
  num_heads: int = 8
  cross_attention_heads: int = 1
  mlp_ratio: int = 1
  head_dim: int | None = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool, return_intermediates: bool = False):
    """images (B, H, W, 3) float in [0, 1] -> logits (B, num_classes) float32.

    With `return_intermediates`, returns (logits, dict) where the dict holds 'latents'
    (B, I, L, D), the latent array after each iteration, and 'attention' (B, I, Hc, L, N), the
    latent-over-patch cross-attention weights of each iteration.
    """
    byte_array = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.tokenizer,
                            name='patch_embed')(images)
    batch, _, features = byte_array.shape
    # Named 'initial_*' like the TLB's initial slow stream: no weight decay with
    # weight_decay_on='kernels', as for position embeddings.
    initial = self.param('initial_latents', nn.initializers.normal(0.02),
                         (self.num_latents, features))
    latents = jnp.broadcast_to(initial.astype(self.dtype), (batch, self.num_latents, features))

    block = lambda num_heads, name: AttentionBlock(
        num_heads=num_heads, mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, head_dim=self.head_dim,
        dtype=self.dtype, name=name)
    # Built once and called every iteration: one set of weights for all iterations.
    cross_attention = block(self.cross_attention_heads, 'cross_attention')
    tower = [block(self.num_heads, f'self_attention_{layer}') for layer in range(self.num_layers)]

    all_latents, all_weights = [], []
    for _ in range(self.num_iterations):
      latents, weights = cross_attention(latents, byte_array, deterministic=not train)
      for layer in tower:
        latents, _ = layer(latents, deterministic=not train)
      all_latents.append(latents)
      all_weights.append(weights)

    logits = classification_head(latents, self.num_classes, dtype=self.dtype)
    if not return_intermediates:
      return logits
    return logits, {'latents': jnp.stack(all_latents, axis=1),
                    'attention': jnp.stack(all_weights, axis=1)}
