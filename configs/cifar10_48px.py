"""The seed's model size and input (48x48 upscales, 144 linear patch tokens) with our training
recipe: the paper's slow-stream head, a learned initial state, AdamW with warmup + cosine, label
smoothing and decay on kernels only, 30 epochs on the first 40,000 training images."""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.update(dropout_rate=0.1, attention_dropout_rate=0.0, slow_stream_init='learned',
                    head='slow_mean')
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
