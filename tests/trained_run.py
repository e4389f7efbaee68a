"""One tiny trained workdir per test process (each pytest-xdist worker trains its own), shared
by the tests of plots, predict and compare.

A TLB of the smoke config trains for 2 epochs of 4 steps on mocked CIFAR-10 (`tfds_mock`), so
the tests need no data; predict, plots and eval then read the workdir like any real run.
"""

import os
import shutil

from configs import smoke
from tfds_mock import mock_cifar
from tlb_jax import train

MOCK_EXAMPLES = 64   # per split
NUM_ATTENTION_IMAGES = 5
_WORKDIRS: dict[str, str] = {}


def config():
  config = smoke.get_config()
  config.update(batch_size=16, eval_batch_size=32, num_epochs=2,
                log_every_steps=2, checkpoint_every_steps=4,
                num_attention_images=NUM_ATTENTION_IMAGES,
                # Evaluation on the central crop of the training resize; the final evaluations
                # average ten views.
                eval_resize_size=18, test_time_augmentation='crops_flip')
  return config


def trained_workdir(tmp_path_factory) -> str:
  """The shared workdir (do not modify it; see `copy_of_trained_workdir`)."""
  if 'run' not in _WORKDIRS:
    workdir = str(tmp_path_factory.mktemp('trained_run'))
    with mock_cifar(MOCK_EXAMPLES):
      train.train_and_evaluate(config(), workdir)
    _WORKDIRS['run'] = workdir
  return _WORKDIRS['run']


def copy_of_trained_workdir(tmp_path_factory) -> str:
  """A private copy of the shared workdir, for tests that write into it."""
  copy = os.path.join(str(tmp_path_factory.mktemp('workdir_copy')), 'run')
  shutil.copytree(trained_workdir(tmp_path_factory), copy)
  return copy
