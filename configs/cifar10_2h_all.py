"""`configs/cifar10_2h.py` trained on all 50,000 training images: the final run of that recipe.

The recipe was chosen on validation (`train[40000:]`) while training on the first 40,000
images. Its final run trains on the whole training split and keeps no validation split
(`eval_split = ''`, so no validation pass runs); the test split is scored once, at the end.
56 epochs of 50,000 images are 21,840 steps of 128, the same updates (and time) as the 70
epochs of 40,000 in `cifar10_2h.py`, so the run differs only in seeing 25% more distinct
images. The learning rate warms up over 2 epochs and decays by cosine, as there.
Test top-1 of the run (seed 42): 84.97% (83.84% on 40,000 images); the whole command took
103.3 minutes on a 2-core CPU (docs/results.md). With `--config.num_epochs=62` it scored
85.42%, but that command took 128.8 minutes on a day the machine ran 11% slower than for the
56-epoch run, so the file keeps the 56 epochs measured within two hours.
"""

from configs import cifar10_2h


def get_config():
  config = cifar10_2h.get_config()
  config.train_split = 'train'
  config.eval_split = ''
  config.num_epochs = 56
  return config
