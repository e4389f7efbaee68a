"""A tiny TLB for a first try and the end-to-end tests: 16x16 inputs, 16 tokens in 4 chunks of 4,
embed 32, 2 layers; 2 epochs on the first 4,096 training images, tested on the whole test split."""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.update(embed_dim=32, chunk_size=4, num_latents=4, num_layers=2, num_heads=2,
                    dropout_rate=0.1, attention_dropout_rate=0.0, slow_stream_init='learned',
                    head='slow_mean')
  config.train_split = 'train[:4096]'
  config.eval_split = 'train[40000:41000]'
  config.resize_size = 18
  config.image_size = 16
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 2
  config.learning_rate = 1e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 0.5
  config.weight_decay = 0.05
  config.weight_decay_on = 'kernels'
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  config.log_every_steps = 8
  config.checkpoint_every_steps = 20
  return config
