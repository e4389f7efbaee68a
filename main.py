"""Trains and evaluates tlb-jax models, and predicts with a trained workdir.

  python main.py --config=configs/cifar10.py --workdir=/tmp/run [--config.batch_size=256 ...]
  python main.py --mode=eval --workdir=/tmp/run
  python main.py --mode=predict --workdir=/tmp/run --images=a.png,b.jpg,folder/ \
      [--attention_dir=/tmp/overlays]
  python main.py --mode=plots --workdir=/tmp/run

Running the same training command again resumes from the latest checkpoint in the workdir.
eval, predict and plots read the run's config from workdir/config.json; pass --config (plus
overrides such as --config.data_dir=...) to replace it, with the same model.
"""

import logging as std_logging
import os
import sys

import jax
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from tlb_jax import allocator, checkpointing, config_validation, inference, input_pipeline, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'plots'],
                  'train: train (or resume), test, draw workdir/plots/. eval: test the latest '
                  'checkpoint, write results.json. predict: top-5 classes of --images. plots: '
                  'redraw workdir/plots/ for an existing run.')
flags.DEFINE_list('images', None, 'predict: image files and/or folders of images.')
flags.DEFINE_string('attention_dir', None,
                    'predict: also write each image\'s TLB attention overlay into this directory.')
flags.DEFINE_bool('fresh', False,
                  'train: move the workdir\'s earlier checkpoints and results aside and start '
                  'over, instead of resuming (needed when the model\'s shape changed).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first (multi-host training).')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file in configs/ (train; optional for the other modes, '
    'which default to workdir/config.json).', lock_config=True)
flags.mark_flags_as_required(['workdir'])

USER_ERRORS = (config_validation.ConfigError, input_pipeline.DataError,
               inference.InferenceError, checkpointing.CheckpointError)


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
  if jax.default_backend() == 'cpu' and allocator.preloaded_allocator() == 'system':
    logging.info(allocator.TCMALLOC_HINT)
  try:
    failures = _run(FLAGS.mode)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except train.DivergenceError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(3)
  except train.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  if failures:
    sys.exit(1)


def _run(mode: str) -> int:
  """Runs `mode`; returns the number of inputs that failed (predict)."""
  if mode != 'predict' and (FLAGS.images or FLAGS.attention_dir):
    raise config_validation.ConfigError('--images and --attention_dir are for --mode=predict')
  if mode == 'train':
    if FLAGS.config is None:
      raise config_validation.ConfigError('--mode=train needs --config=configs/<name>.py')
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, fresh=FLAGS.fresh)
  elif mode == 'eval':
    results = inference.evaluate_checkpoint(FLAGS.workdir, FLAGS.config)
    print(f'step {results["step"]}: {results["test_split"]} top-1 {results["test_top1"]:.4f}, '
          f'top-5 {results["test_top5"]:.4f}, loss {results["test_loss"]:.4f} on '
          f'{results["test_examples"]} examples; results in '
          f'{os.path.join(FLAGS.workdir, "results.json")}')
  elif mode == 'predict':
    if not FLAGS.images:
      raise config_validation.ConfigError('--mode=predict needs --images=a.png,b.jpg,folder/')
    return inference.run_predict(FLAGS.workdir, FLAGS.images, FLAGS.attention_dir, FLAGS.config)
  elif mode == 'plots':
    for path in inference.write_plots(FLAGS.workdir, FLAGS.config):
      print(path)
  return 0


if __name__ == '__main__':
  app.run(main)
