"""A ViT baseline for the TLB, trained with the configs/cifar10.py recipe.

Same patch embedding (4x4 patches of 48x48 images, 144 tokens), block type, width (64), heads,
MLP ratio and dropout as that config's TLB, but 7 self-attention blocks over all 144 tokens:
the TLB has 4 self-attention + 2 fast->slow cross-attention + 1 slow-update blocks, so the two
models have about the same parameter count (see the README's model table).
"""

import ml_collections

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  tlb = config.tlb
  config.model = 'vit'
  config.vit = ml_collections.ConfigDict(dict(
      patch_size=tlb.patch_size,
      tokenizer=tlb.tokenizer,
      embed_dim=tlb.embed_dim,
      num_layers=7,
      num_heads=tlb.num_heads,
      mlp_ratio=tlb.mlp_ratio,
      dropout_rate=tlb.dropout_rate,
      attention_dropout_rate=tlb.attention_dropout_rate,
  ))
  del config['tlb']
  return config
