"""End-to-end tests of `python main.py` (training mode), and of config validation."""

import glob
import importlib
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import default, smoke
from tlb_jax import config_validation
from tlb_jax.config_validation import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'tfds')
HAS_REAL_DATA = os.path.isdir(os.path.join(REAL_DATA_DIR, 'cifar10'))
SMOKE_STEPS = 4096 // 128  # one epoch of the smoke config's training slice
# Settings that quiet TensorFlow or keep JAX on the CPU in the tests (conftest.py sets two);
# without them main.py starts as in a user's shell, where it must quiet the libraries' start-up
# notices itself.
TEST_ONLY_ENVIRONMENT = ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS', 'JAX_PLATFORMS')
START_UP_NOISE = ('oneDNN custom operations',  # TensorFlow, once per library
                  'absl::InitializeLog',  # absl's warning before the first C++ log line
                  'Unable to initialize backend')  # JAX's probe of each absent accelerator


def _main(*args, timeout=540, env=None):
  """Runs `python main.py ARGS` in the repository -> CompletedProcess (text)."""
  return subprocess.run([sys.executable, 'main.py', *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False, env=env)


def _users_environment() -> dict[str, str]:
  return {k: v for k, v in os.environ.items() if k not in TEST_ONLY_ENVIRONMENT}


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def _describe(process) -> str:
  return f'exit {process.returncode}; stderr tail:\n{process.stderr[-3000:]}'


# ----------------------------------------------------------------------- end to end (smoke)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  """(workdir, first run, re-run) of configs/smoke.py for one epoch on the real CIFAR-10; the
  first run starts in the user's environment (`_users_environment`)."""
  if not HAS_REAL_DATA:
    pytest.skip(f'real CIFAR-10 TFDS data not in {REAL_DATA_DIR}')
  workdir = str(tmp_path_factory.mktemp('smoke') / 'run')
  args = ('--config=configs/smoke.py', f'--workdir={workdir}',
          f'--config.data_dir={REAL_DATA_DIR}', '--config.num_epochs=1')
  first = _main(*args, env=_users_environment())
  assert first.returncode == 0, _describe(first)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = f.read()
  checkpoints = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  rerun = _main(*args)
  return workdir, {'process': first, 'results': results, 'checkpoints': checkpoints}, rerun


def test_smoke_run_writes_checkpoints_events_and_config(smoke_run):
  """A run leaves Orbax checkpoints (the last at the final step), a TensorBoard events file and
  the config it ran with."""
  workdir, first, _ = smoke_run
  assert str(SMOKE_STEPS) in first['checkpoints']
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(SMOKE_STEPS), 'default'))
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['num_epochs'] == 1 and config['dataset'] == 'cifar10'
  assert config['tlb']['embed_dim'] == smoke.get_config().tlb.embed_dim


def test_smoke_run_logs_train_eval_and_test_scalars(smoke_run):
  """The events file holds training, validation and test scalars."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  workdir, _, _ = smoke_run
  tags = set()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {'train_loss', 'train_accuracy', 'eval_accuracy', 'test_accuracy'} <= tags


def test_smoke_run_results_cover_the_full_test_split(smoke_run):
  """results.json reports top-1/top-5 in [0, 1] on all 10,000 test images at the last step."""
  _, first, _ = smoke_run
  results = json.loads(first['results'])
  assert results['test_examples'] == 10000
  assert 0.0 <= results['test_top1'] <= results['test_top5'] <= 1.0
  assert results['step'] == SMOKE_STEPS
  assert results['resumed_from_step'] == 0
  assert results['dataset'] == 'cifar10' and results['model'] == 'tlb'


def test_smoke_run_prints_its_own_lines_first_and_no_library_start_up_notices(smoke_run):
  """Started as from a user's shell, a run's first line is its own (the JAX process and its
  devices), its progress lines follow, and TensorFlow's oneDNN notice, absl's warning about
  logging before absl::InitializeLog() and JAX's probes of absent accelerators are not printed."""
  _, first, _ = smoke_run
  process = first['process']
  for noise in START_UP_NOISE:
    assert noise not in process.stdout + process.stderr, _describe(process)
  assert 'JAX process 0/1, local devices' in process.stderr.splitlines()[0], _describe(process)
  assert 'train_loss=' in process.stderr and 'test_accuracy=' in process.stderr


def test_rerun_of_a_finished_run_does_not_retrain(smoke_run):
  """Running the same command again exits 0, says the run already finished, and leaves the
  results and checkpoints as they were."""
  workdir, first, rerun = smoke_run
  assert rerun.returncode == 0, _describe(rerun)
  assert 'already finished' in rerun.stderr
  with open(os.path.join(workdir, 'results.json')) as f:
    assert f.read() == first['results']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == first['checkpoints']


# -------------------------------------------------------------------------- user errors (CLI)


# One case per path to the error (every field's message is checked by the unit tests below):
# a command-line override of a config field, a check against the 2 devices, the workdir.
@pytest.mark.parametrize('flag, names', [
    ('--config.tlb.chunk_size=5', '--config.tlb.chunk_size=5'),
    ('--config.batch_size=127', '--config.batch_size=127'),
    ('--workdir=/proc/x', '--workdir=/proc/x'),
], ids=['chunk_size', 'batch_size_vs_devices', 'workdir'])
def test_invalid_config_exits_2_with_one_error_line_naming_the_field(flag, names, tmp_path):
  """An invalid value stops main.py with exit code 2 and one `error:` line, no traceback."""
  args = ['--config=configs/smoke.py', f'--workdir={tmp_path / "run"}', flag]
  process = _main(*args, timeout=180)
  assert process.returncode == 2, _describe(process)
  errors = _error_lines(process.stderr)
  assert len(errors) == 1, _describe(process)
  assert names in errors[0]
  assert 'Traceback' not in process.stderr


@pytest.mark.parametrize('args, expected', [
    (('--config=configs/nope.py',),
     'error: --config=configs/nope.py cannot be loaded (no such file: configs/nope.py)'),
    (('--config=README.md',), 'error: --config=README.md cannot be loaded ('),
    (('--config=configs/smoke.py', '--config.tlb.embed_dm=3'),
     'error: --config.tlb.embed_dm: configs/smoke.py has no such field; did you mean '
     '--config.tlb.embed_dim?'),
    (('--config=configs/smoke.py', '--config.nonexistent=3'),
     'error: --config.nonexistent: configs/smoke.py has no such field'),
    (('--config=configs/smoke.py', '--config.batch_size=abc'),
     'error: flag --config.batch_size=abc: '),
    (('--config=configs/smoke.py', '--no_such_flag=1'),
     "error: Unknown command line flag 'no_such_flag'"),
    (('--config=configs/smoke.py', 'stray'), 'error: unexpected arguments: stray'),
], ids=['missing_file', 'not_python', 'misspelt_field', 'unknown_field', 'bad_value',
        'unknown_flag', 'stray_argument'])
def test_bad_command_line_exits_2_with_one_error_line(args, expected, tmp_path):
  """Every bad command line is one `error:` line on stderr and exit status 2, no traceback."""
  process = _main(*args, f'--workdir={tmp_path / "run"}', timeout=120)
  assert process.returncode == 2, _describe(process)
  assert len(_error_lines(process.stderr)) == 1, _describe(process)
  assert _error_lines(process.stderr)[0].startswith(expected), _describe(process)
  assert 'Traceback' not in process.stderr


def test_a_bad_command_line_is_answered_before_jax_and_tensorflow_load(tmp_path):
  """main.py checks its flags, the config file and the fields it overrides before it imports
  JAX or TensorFlow (seconds): a bad command line is answered at once. `python -X importtime`
  lists every module the process imported."""
  process = subprocess.run(
      [sys.executable, '-X', 'importtime', 'main.py', '--config=configs/smoke.py',
       '--config.tlb.embed_dm=3', f'--workdir={tmp_path / "run"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode == 2, _describe(process)
  imported = {line.rsplit('|', 1)[-1].strip() for line in process.stderr.splitlines()
              if line.startswith('import time:')}
  assert 'ml_collections.config_flags' in imported  # the listing holds main.py's own imports
  assert not imported & {'jax', 'tensorflow'}, sorted(imported & {'jax', 'tensorflow'})


def test_missing_data_exits_2_with_one_error_line(tmp_path):
  """An empty --config.data_dir stops main.py with exit code 2 and a one-line error that says
  how to provide the data."""
  empty = tmp_path / 'empty_tfds'
  empty.mkdir()
  process = _main('--config=configs/smoke.py', f'--workdir={tmp_path / "run"}',
                  f'--config.data_dir={empty}', timeout=180)
  assert process.returncode == 2, _describe(process)
  errors = _error_lines(process.stderr)
  assert len(errors) == 1, _describe(process)
  assert str(empty) in errors[0] and errors[0].endswith('--config.data_dir=DIR')
  assert 'Traceback' not in process.stderr


def test_train_split_smaller_than_a_batch_exits_2_before_training(tmp_path):
  """A train split with fewer examples than one batch is a one-line error, not a crash."""
  if not HAS_REAL_DATA:
    pytest.skip(f'real CIFAR-10 TFDS data not in {REAL_DATA_DIR}')
  process = _main('--config=configs/smoke.py', f'--workdir={tmp_path / "run"}',
                  f'--config.data_dir={REAL_DATA_DIR}', '--config.train_split=train[:100]',
                  timeout=180)
  assert process.returncode == 2, _describe(process)
  errors = _error_lines(process.stderr)
  assert len(errors) == 1, _describe(process)
  assert 'fewer than one batch of 128' in errors[0] and '--config.batch_size' in errors[0]
  assert not (tmp_path / 'run' / 'checkpoints').exists()


# --------------------------------------------------------------------- config_validation unit


def _shipped_config_names():
  """'cifar10', 'compare.vit_cifar10', ...: every config module under configs/."""
  configs = os.path.join(REPO_ROOT, 'configs')
  return sorted(os.path.relpath(path, configs)[:-3].replace(os.sep, '.')
                for path in glob.glob(os.path.join(configs, '**', '*.py'), recursive=True)
                if not path.endswith('__init__.py'))


@pytest.mark.parametrize('name', _shipped_config_names())
@pytest.mark.parametrize('num_devices', [1, 2])
def test_shipped_configs_are_valid(name, num_devices):
  """Every config under configs/ passes validation on 1 and 2 devices."""
  config = importlib.import_module(f'configs.{name}').get_config()
  config_validation.validate(config, num_devices)


def _smoke_with(**overrides):
  config = smoke.get_config()
  for path, value in overrides.items():
    section = config
    *parents, field = path.split('__')
    for parent in parents:
      section = section[parent]
    section[field] = value
  return config


@pytest.mark.parametrize('overrides, num_devices, message', [
    (dict(model='resnet'), 1, "--config.model='resnet' is not allowed"),
    (dict(dataset='mnist'), 1, "--config.dataset='mnist' is not allowed"),
    (dict(dtype='float8'), 1, "--config.dtype='float8' is not allowed"),
    (dict(lr_schedule='step'), 1, "--config.lr_schedule='step' is not allowed"),
    (dict(weight_decay_on='none'), 1, "--config.weight_decay_on='none' is not allowed"),
    (dict(num_epochs=0), 1, '--config.num_epochs=0 must be a positive integer'),
    (dict(keep_checkpoints=-1), 1, '--config.keep_checkpoints=-1 must be a positive integer'),
    (dict(learning_rate=0.0), 1, '--config.learning_rate=0.0 must be positive'),
    (dict(learning_rate=float('inf')), 1, '--config.learning_rate=inf must be positive and finite'),
    (dict(weight_decay=-0.1), 1, '--config.weight_decay'),
    (dict(grad_clip_norm=-1.0), 1, '--config.grad_clip_norm'),
    (dict(label_smoothing=1.0), 1, '--config.label_smoothing=1.0 must be in [0, 1)'),
    (dict(mixup_alpha=-0.2), 1, '--config.mixup_alpha=-0.2 must be >= 0 and finite'),
    (dict(cutmix_alpha=float('nan')), 1, '--config.cutmix_alpha=nan must be >= 0 and finite'),
    (dict(resize_size=12), 1, '--config.resize_size=12 (+ 2 x --config.crop_padding=0) must be '
     '>= --config.image_size=16'),
    (dict(batch_size=127), 2, '--config.batch_size=127 must be divisible by the 2'),
    (dict(eval_batch_size=501), 2, '--config.eval_batch_size=501 must be divisible by the 2'),
    (dict(tlb__head='cls'), 1, "--config.tlb.head='cls' is not allowed"),
    (dict(tlb__slow_stream_init='random'), 1, "--config.tlb.slow_stream_init='random'"),
    (dict(tlb__tokenizer='cnn'), 1, "--config.tlb.tokenizer='cnn' is not allowed"),
    (dict(image_size=24, resize_size=24, tlb__patch_size=6, tlb__tokenizer='conv'), 1,
     "--config.tlb.tokenizer='conv' needs a power-of-two --config.tlb.patch_size, got 6"),
    (dict(image_size=24, resize_size=24, tlb__patch_size=6, tlb__tokenizer='stem'), 1,
     "--config.tlb.tokenizer='stem' needs a power-of-two --config.tlb.patch_size, got 6"),
    (dict(tlb__num_layers=0), 1, '--config.tlb.num_layers=0 must be a positive integer'),
    (dict(tlb__scan_unroll=0), 1, '--config.tlb.scan_unroll=0 must be a positive integer'),
    (dict(tlb__dropout_rate=1.5), 1, '--config.tlb.dropout_rate=1.5 must be in [0, 1)'),
    (dict(tlb__attention_dropout_rate=-0.1), 1, '--config.tlb.attention_dropout_rate=-0.1'),
    (dict(image_size=18, resize_size=20), 1,
     '--config.image_size=18 is not divisible by --config.tlb.patch_size=4'),
    (dict(tlb__chunk_size=5), 1, '16 patches (16/4 squared) are not divisible by '
     '--config.tlb.chunk_size=5'),
    (dict(tlb__embed_dim=33), 1,
     '--config.tlb.embed_dim=33 is not divisible by --config.tlb.num_heads=2'),
    (dict(test_time_augmentation='ten_crop'), 1,
     "--config.test_time_augmentation='ten_crop' is not allowed; use one of"),
    (dict(eval_resize_size=12), 1, '--config.eval_resize_size=12 must be 0 or >= '
     '--config.image_size=16'),
    (dict(test_time_augmentation='crops_flip', eval_resize_size=16), 1,
     '--config.test_time_augmentation=crops_flip crops the image resized to '
     '--config.eval_resize_size and padded by --config.crop_padding, which must exceed '
     '--config.image_size (16)'),
    (dict(crop_padding=-1), 1, '--config.crop_padding=-1 must be an integer in [0, '
     '--config.resize_size=18)'),
    (dict(crop_padding=18), 1, '--config.crop_padding=18 must be an integer in [0, '
     '--config.resize_size=18)'),
    (dict(resize_size=10, crop_padding=2), 1, '--config.resize_size=10 (+ 2 x '
     '--config.crop_padding=2) must be >= --config.image_size=16'),
    (dict(eval_split='', test_split=''), 1, '--config.eval_split and --config.test_split are '
     'both empty, so nothing would score the model; set --config.test_split=test'),
], ids=lambda value: None if not isinstance(value, dict) else '-'.join(value))
def test_validate_rejects_invalid_field_with_one_line_message(overrides, num_devices, message):
  """Each invalid field is a one-line ConfigError naming the field (and what it must be)."""
  with pytest.raises(ConfigError) as error:
    config_validation.validate(_smoke_with(**overrides), num_devices)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_validate_accepts_crops_flip_of_the_padded_native_image():
  """With crop_padding, 'crops_flip' needs no larger eval resize: the corners come from the
  padded canvas."""
  config_validation.validate(_smoke_with(resize_size=16, crop_padding=2, eval_resize_size=0,
                                         test_time_augmentation='crops_flip'))


def test_validate_rejects_a_config_without_the_model_section_naming_its_fields():
  """config.model needs its hyper-parameter section: every missing field is named."""
  config = smoke.get_config()
  del config['tlb']
  with pytest.raises(ConfigError, match='lacks the fields tlb.patch_size, '):
    config_validation.validate(config)


def test_fields_are_those_of_the_default_config():
  """config_validation.FIELDS and each model's fields are exactly configs/default.py's."""
  config = default.get_config().to_dict()
  sections = {name for name, value in config.items() if isinstance(value, dict)}
  assert set(config_validation.FIELDS) == set(config) - sections
  assert sections == {'tlb', 'vit', 'perceiver'}
  for model in sections:
    assert set(config_validation.model_fields(model)) == set(config[model])
  assert config_validation.missing_fields(config) == []


def test_a_saved_config_lacking_keras_fans_reads_as_the_rule_older_runs_used():
  """A run saved before tlb.keras_fans existed initialized its attention as 'einsum' does; a
  saved value is kept, and the filled config misses no field."""
  config = default.get_config().to_dict()
  del config['tlb']['keras_fans']
  filled = config_validation.with_initialization_fields(config)
  assert filled['tlb']['keras_fans'] == 'einsum'
  assert config_validation.missing_fields(filled) == []
  config['tlb']['keras_fans'] = 'conv'
  assert config_validation.with_initialization_fields(config)['tlb']['keras_fans'] == 'conv'


def test_config_error_is_a_value_error():
  """Callers that catch ValueError also catch ConfigError."""
  assert issubclass(ConfigError, ValueError)


def test_check_workdir_writable_creates_the_workdir(tmp_path):
  """A missing workdir is created (with its parents)."""
  workdir = tmp_path / 'a' / 'b'
  config_validation.check_workdir_writable(str(workdir))
  assert workdir.is_dir()


def test_check_workdir_writable_rejects_unwritable_path():
  """A workdir that cannot be created is a ConfigError naming it."""
  with pytest.raises(ConfigError, match='--workdir=/proc/x is not writable'):
    config_validation.check_workdir_writable('/proc/x')


def test_hparams_are_dotted_fields_with_scalar_values():
  """Nested fields become dotted keys; values that are not scalars become strings."""
  config = ml_collections.ConfigDict({'a': 1, 'b': {'c': 'x', 'd': {'e': 2.5}}, 'f': None,
                                      'g': (1, 2)})
  assert config_validation.hparams(config) == {'a': 1, 'b.c': 'x', 'b.d.e': 2.5, 'f': 'None',
                                               'g': '(1, 2)'}
