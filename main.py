r"""Trains and evaluates tlb-jax models, and predicts with a trained workdir.

  python main.py --config=configs/cifar10.py --workdir=/tmp/run [--config.batch_size=256 ...]
  python main.py --mode=eval --workdir=/tmp/run
  python main.py --mode=predict --workdir=/tmp/run --images=a.png,b.jpg,folder/ \
      [--attention_dir=/tmp/overlays]
  python main.py --mode=plots --workdir=/tmp/run
  python main.py --mode=export --workdir=/tmp/run --output=pretrained/cifar10
  python main.py --mode=compare --workdirs=/tmp/tlb,/tmp/vit --output=/tmp/compare.png

Running the same training command again resumes from the latest checkpoint in the workdir.
eval, predict and plots read the run's config from workdir/config.json; pass --config (plus
overrides such as --config.data_dir=...) to replace it, with the same model.
"""

import difflib
import importlib.util
import logging as std_logging
import os
import sys

# TensorFlow only reads and decodes the TFDS files here, so its oneDNN kernels go unused; with
# them on, TF's two libraries each print a notice about them (and absl's warning that logs before
# absl::InitializeLog() go to stderr) before the run's first line. Must be set before TF loads;
# a value in the environment wins.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# pylint: disable=wrong-import-position
from tlb_jax import allocator, host_devices

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# Only light modules are imported here. JAX, TensorFlow and the trainer take seconds to load:
# `main` imports them once the command line is known to be good, and only those its mode uses,
# so that a bad command line (a misspelt flag or field, a config file that does not load, an
# invalid value) is answered at once.
from absl import app, flags, logging
from ml_collections import config_flags

from tlb_jax import config_validation

# The modes that load TensorFlow, to read TFDS files (train, eval, plots) or TensorBoard event
# files (compare); predict and export never import it.
TENSORFLOW_MODES = ('train', 'eval', 'plots', 'compare')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'plots', 'export', 'compare'],
                  'train: train (or resume), test, draw workdir/plots/. eval: test the latest '
                  'checkpoint, write results.json. predict: top-5 classes of --images. plots: '
                  'redraw workdir/plots/ for an existing run. export: copy the trained '
                  'parameters (no optimizer state) to --output. compare: the final figures of '
                  '--workdirs as a table, and their validation curves into --output.')
flags.DEFINE_list('images', None, 'predict: image files and/or folders of images.')
flags.DEFINE_string('attention_dir', None,
                    'predict: also write each image\'s TLB attention overlay into this directory.')
flags.DEFINE_bool('fresh', False,
                  'train: move the workdir\'s earlier checkpoints and results aside and start '
                  'over, instead of resuming (needed when the model\'s shape changed).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first (multi-process training). With no '
                  'other launch flag, JAX detects the cluster (SLURM, Cloud TPU, ...).')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: host:port of process 0 (implies --distributed).')
flags.DEFINE_integer('num_processes', None, 'Multi-process: how many processes take part.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index, 0-based.')
flags.DEFINE_integer('heartbeat_timeout_s', 100,
                     'Multi-process: a process that sends no heartbeat for this many seconds '
                     'counts as dead, and the others stop (JAX\'s default: 100).')
flags.DEFINE_string('output', None,
                    'export: directory to write the parameters, config.json and labels.json '
                    'of the workdir\'s latest checkpoint into (a workdir for eval and predict). '
                    'compare: the PNG of validation top-1 against training minutes.')
flags.DEFINE_list('workdirs', None, 'compare: the workdirs of the runs to compare.')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file in configs/ (train; optional for the other modes, '
    'which default to workdir/config.json).', lock_config=True)


def _user_errors() -> tuple[type[Exception], ...]:
  """The errors main.py reports as one `error:` line with exit status 2: an invalid config,
  missing data, an unusable workdir or checkpoints."""
  # pylint: disable=g-import-not-at-top
  from tlb_jax import checkpointing, input_pipeline, restore, run_files
  return (config_validation.ConfigError, input_pipeline.DataError, restore.InferenceError,
          checkpointing.CheckpointError, run_files.WorkdirError)


def _quiet_library_info(record) -> bool:
  """Drops the INFO lines of libraries that tell a user nothing; keeps their warnings and errors.

  Orbax logs every save step by step. JAX logs each accelerator backend it probes and does not
  find ("Unable to initialize backend 'tpu'"); the backend it does use is in the run's first line.
  """
  if record.levelno >= std_logging.WARNING:
    return True
  return '/orbax/' not in record.pathname and record.name != 'jax._src.xla_bridge'


def _usage_error(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_file(argv: list[str]) -> str | None:
  """The path given to --config, without the optional ':arguments' suffix."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':', 1)[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def _check_config_overrides(argv: list[str], path: str) -> None:
  """Exits with one error line if the config file does not load or an override names a field
  it lacks (naming the closest field)."""
  try:
    spec = importlib.util.spec_from_file_location('user_config', path)
    if spec is None or not os.path.isfile(path):
      raise FileNotFoundError(f'no such file: {path}')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except BaseException as e:  # pylint: disable=broad-except  (any failure of the user's file)
    cause = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
    _usage_error(f'--config={path} cannot be loaded ({cause}); pass a file such as '
                 'configs/cifar10.py')
  known = config_validation.dotted_fields(config)
  sections = {name.rsplit('.', 1)[0] for name in known if '.' in name}
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    field = arg[len('--config.'):].split('=', 1)[0]
    if field not in known and field not in sections:
      close = difflib.get_close_matches(field, list(known), n=1)
      hint = f'; did you mean --config.{close[0]}?' if close else ''
      _usage_error(f'--config.{field}: {path} has no such field{hint}')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad command line reported as one `error:` line, exit 2."""
  path = _config_file(argv)
  if path is not None:
    _check_config_overrides(argv, path)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _usage_error(str(e).splitlines()[0])


def main(argv):
  if len(argv) > 1:
    _usage_error(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_quiet_library_info)
  try:
    _check_command_line(FLAGS.mode)
  except config_validation.ConfigError as e:
    _usage_error(str(e))
  if FLAGS.mode in ('train', 'eval') and not (FLAGS.distributed or FLAGS.coordinator_address):
    try:
      _use_one_device_per_core(FLAGS.mode)
    except host_devices.DeviceCountError as e:
      _usage_error(str(e))
  import jax  # pylint: disable=g-import-not-at-top  (see the note at the top)
  if FLAGS.mode in TENSORFLOW_MODES:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # TF only reads files here; keep it off the accelerators JAX uses.
    tf.config.experimental.set_visible_devices([], 'GPU')
  user_errors = _user_errors()
  if FLAGS.distributed or FLAGS.coordinator_address:
    _initialize_distributed()
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  if (jax.default_backend() == 'cpu' and allocator.preloaded_allocator() == 'system'
      and os.environ.get(allocator.OPT_OUT) != 'system'):
    logging.info(allocator.TCMALLOC_HINT)
  try:
    failures = _run(FLAGS.mode)
  except user_errors as e:
    _usage_error(str(e))
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    _stop_multi_process_run(e)
  if failures:
    sys.exit(1)


def _use_one_device_per_core(mode: str) -> None:
  """Gives a CPU run one host device per core (`host_devices`) for the batch sizes of `mode`:
  to train, the config's; to evaluate, the run's eval batch size. Leaves the devices alone where
  the run's config cannot be read (the mode then says why)."""
  if mode == 'train':
    config = FLAGS.config
    host_devices.use_one_device_per_core(config.batch_size, config.eval_batch_size,
                                         config.microbatch_size)
    return
  from tlb_jax import run_files  # pylint: disable=g-import-not-at-top  (imports JAX)
  try:
    config = FLAGS.config or run_files.load_config(FLAGS.workdir)
  except run_files.WorkdirError:
    return
  host_devices.use_one_device_per_core(config.eval_batch_size, config.eval_batch_size)


def _initialize_distributed() -> None:
  """Joins the multi-process run of the launch flags (or the cluster JAX detects)."""
  import jax  # pylint: disable=g-import-not-at-top  (loaded by `main`)
  platform = (jax.config.jax_platforms or '').split(',')[0]
  if platform in ('', 'cpu'):
    # pmap's collectives between processes on CPU (one machine, or a CPU cluster) run over
    # gloo, which jaxlib ships; GPUs and TPUs use their own. This only sets up the CPU backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                             heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)


def _stop_multi_process_run(e: Exception) -> None:
  """Reports an unexpected error of one process of a multi-process run as one `error:` line and
  exits at once (exit 4).

  Most often another process died: this one's next collective then fails ("connection reset
  by peer"). Exiting without JAX's orderly shutdown, which waits for every process and would
  end in an abort, makes the others fail their next collective too, so the whole run stops.
  """
  import jax  # pylint: disable=g-import-not-at-top  (loaded by `main`)
  logging.exception('Stopping this process of the run')
  first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
  print(f'error: process {jax.process_index()} of {jax.process_count()} stopped: '
        f'{type(e).__name__}: {first_line}. If another process died, see its log; run the '
        'same commands again to resume from the last checkpoint', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  std_logging.shutdown()
  os._exit(4)  # pylint: disable=protected-access


def _check_command_line(mode: str) -> None:
  """Raises ConfigError for flags that do not fit `mode` and, to train, for an invalid config
  or an unwritable workdir: all that can be checked before JAX and TensorFlow load."""
  if mode != 'predict' and (FLAGS.images or FLAGS.attention_dir):
    raise config_validation.ConfigError('--images and --attention_dir are for --mode=predict')
  if (mode in ('export', 'compare')) != (FLAGS.output is not None):
    raise config_validation.ConfigError('--output is for --mode=export (a directory) and '
                                        '--mode=compare (a PNG), which need it')
  if (mode == 'compare') != bool(FLAGS.workdirs):
    raise config_validation.ConfigError('--mode=compare needs --workdirs=A,B,...; the other '
                                        'modes take one --workdir')
  if mode == 'compare':
    return
  if not FLAGS.workdir:
    raise config_validation.ConfigError(f'--mode={mode} needs --workdir=DIR')
  if mode == 'predict' and not FLAGS.images:
    raise config_validation.ConfigError('--mode=predict needs --images=a.png,b.jpg,folder/')
  if mode == 'train':
    if FLAGS.config is None:
      raise config_validation.ConfigError('--mode=train needs --config=configs/<name>.py')
    # Every check but the batch sizes against the devices, which train_and_evaluate adds once
    # JAX has found them.
    config_validation.validate(FLAGS.config)
    config_validation.check_workdir_writable(FLAGS.workdir)


def _run(mode: str) -> int:
  """Runs `mode`, whose flags `_check_command_line` accepted; returns the number of inputs
  that failed (predict)."""
  # pylint: disable=g-import-not-at-top  (each mode loads what it uses: see the note at the top)
  if mode == 'compare':
    from tlb_jax import compare
    print(compare.compare(FLAGS.workdirs, FLAGS.output))
  elif mode == 'train':
    from tlb_jax import train
    try:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, fresh=FLAGS.fresh)
    except train.DivergenceError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(3)
    except train.Interrupted as e:
      print(str(e), file=sys.stderr)
      sys.exit(128 + e.signum)
  elif mode == 'eval':
    from tlb_jax import evaluate_run, restore, run_files
    results = evaluate_run.evaluate_checkpoint(FLAGS.workdir, FLAGS.config)
    written = ('exported parameters: nothing written' if restore.is_export(FLAGS.workdir)
               else f'results in {run_files.results_path(FLAGS.workdir)}')
    print(f'{evaluate_run.test_summary(results)}; {written}')
  elif mode == 'predict':
    from tlb_jax import predict
    return predict.run_predict(FLAGS.workdir, FLAGS.images, FLAGS.attention_dir, FLAGS.config)
  elif mode == 'plots':
    from tlb_jax import run_plots
    for path in run_plots.write_plots(FLAGS.workdir, FLAGS.config):
      print(path)
  elif mode == 'export':
    from tlb_jax import export
    print(export.export(FLAGS.workdir, FLAGS.output, FLAGS.config))
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
