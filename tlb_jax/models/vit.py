"""Vision Transformer baseline (Dosovitskiy et al. 2021, arXiv 2010.11929) for the TLB.

It uses the TLB's patch embedding and the TLB perceptual module's block type (pre-LN
self-attention + GELU MLP) but every block attends over all tokens at once, with no chunks and
no slow stream. The head is the TLB's 'slow_mean' head applied to all tokens (LayerNorm, mean,
Dense); there is no class token. Sized to the TLB in parameters (see configs/vit_cifar10.py),
so accuracy and speed comparisons are at equal size.

Shape letters: B batch, N tokens, D embed_dim, H heads.
"""

import flax.linen as nn
import jax.numpy as jnp

from tlb_jax.models.layers import AttentionBlock, Dtype, PatchEmbed, classification_head


class ViT(nn.Module):
  """ViT classifier with mean pooling.

  Attributes:
    num_classes: size of the logits.
    patch_size: side of the square patches; each token stands for one.
    tokenizer: 'linear' (patch projection), 'conv' (CCT-style conv stages) or 'stem' (stride-2
      conv stem); see `PatchEmbed`.
    embed_dim: D.
    num_layers: self-attention blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D.
    dropout_rate: dropout after each MLP.
    attention_dropout_rate: dropout on attention probabilities.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  patch_size: int = 4
  tokenizer: str = 'linear'
  embed_dim: int = 64
  num_layers: int = 7
  num_heads: int = 1
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool, return_intermediates: bool = False):
    """images (B, H, W, 3) float in [0, 1] -> logits (B, num_classes) float32.

    With `return_intermediates`, returns (logits, dict) where the dict holds 'attention'
    (B, num_layers, H, N, N), each block's attention weights.
    """
    tokens = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, self.tokenizer,
                        name='patch_embed')(images)
    all_weights = []
    for layer in range(self.num_layers):
      tokens, weights = AttentionBlock(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
          name=f'self_attention_{layer}')(tokens, deterministic=not train)
      all_weights.append(weights)
    logits = classification_head(tokens, self.num_classes, dtype=self.dtype)
    if not return_intermediates:
      return logits
    return logits, {'attention': jnp.stack(all_weights, axis=1)}
