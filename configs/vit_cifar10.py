"""A ViT baseline with the `configs/cifar10_48px.py` recipe: the TLB's patch embedding, block type,
width, heads and dropout, and 7 self-attention blocks over all 144 tokens, so that it has about
the TLB's parameter count (4 self-attention + 2 cross-attention + 1 slow-update blocks)."""

from configs import default


def get_config():
  config = default.get_config()
  config.model = 'vit'
  config.vit.update(num_layers=7, dropout_rate=0.1, attention_dropout_rate=0.0)
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.learning_rate = 1e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 2.0
  config.weight_decay = 0.05
  config.weight_decay_on = 'kernels'
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  return config
