"""Trains and evaluates tlb-jax models.

  python main.py --config=configs/cifar10.py --workdir=/tmp/run [--config.batch_size=256 ...]

Running the same command again resumes from the latest checkpoint in the workdir.
"""

import logging as std_logging
import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from tlb_jax import config_validation, input_pipeline, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and results.')
flags.DEFINE_enum('mode', 'train', ['train'], 'train: train (or resume), then test.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first (multi-host training).')
config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

USER_ERRORS = (config_validation.ConfigError, input_pipeline.DataError)


def _quiet_orbax(record) -> bool:
  # Orbax logs every save step by step at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # TF is only used to read TFDS files; keep it off the accelerators JAX uses.
  tf.config.experimental.set_visible_devices([], 'GPU')
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
