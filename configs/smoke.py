"""A tiny TLB and a few hundred steps: a first try, and the end-to-end test's config.

16x16 inputs, 4x4 patches -> 16 tokens in 4 chunks of 4; embed 32, 2 layers. Trains on the
first 4,096 training images for 2 epochs and still tests on the full test split.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.tlb.update(embed_dim=32, chunk_size=4, num_latents=4, num_layers=2, num_heads=2)
  config.train_split = 'train[:4096]'
  config.eval_split = 'train[40000:41000]'
  config.resize_size = 18
  config.image_size = 16
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 2
  config.warmup_epochs = 0.5
  config.log_every_steps = 8
  config.checkpoint_every_steps = 20
  return config
