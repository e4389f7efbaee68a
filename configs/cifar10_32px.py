"""`configs/cifar10_48px.py` at CIFAR-10's native 32x32: 64 linear patch tokens instead of 144,
random 32x32 crops of a 36x36 resize, 50 epochs on the first 40,000 training images."""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.update(dropout_rate=0.1, attention_dropout_rate=0.0, slow_stream_init='learned',
                    head='slow_mean')
  config.resize_size = 36
  config.image_size = 32
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.num_epochs = 50
  config.learning_rate = 1e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 2.0
  config.weight_decay = 0.05
  config.weight_decay_on = 'kernels'
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  return config
