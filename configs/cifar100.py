"""The CIFAR-10 recipe on CIFAR-100 (100 classes; the head is sized from the dataset)."""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset = 'cifar100'
  return config
