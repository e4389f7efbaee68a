"""Our recipe at CIFAR-10's native resolution: the two-hour recipe of the runs before the
`stem` tokenizer (docs/results.md), kept so their commands still reproduce them.

`configs/cifar10.py` at CIFAR-10's native 32x32 instead of the seed's 48x48 upscale: the same
model (embed 64, 4 layers, r 2, chunk 8, patch 4; 359k parameters, fewer position embeddings)
sees 64 patch tokens instead of 144, so a step costs less than half as much and the 2-hour
budget buys 50 epochs instead of about 24. Training resizes to 36 and randomly crops 32 (the
seed's 52 -> 48 in proportion).
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.resize_size = 36
  config.image_size = 32
  config.num_epochs = 50
  return config
