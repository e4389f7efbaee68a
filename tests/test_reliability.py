"""What a run does when things go wrong (README, "What a run does when things go wrong"):
unreadable checkpoints, a changed model, --fresh, divergence, and (slow) kill and resume."""

import functools
import gc
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trained_run
from test_main import HAS_REAL_DATA, REAL_DATA_DIR, REPO_ROOT, _describe, _main
from test_train import (MOCK_EXAMPLES, _assert_trees_equal, _batch, _checkpoint_metadata,
                        _first, _restore_raw, _resume_config, _run_steps, tiny)  # pylint: disable=unused-import
from tfds_mock import mock_cifar
from tlb_jax import checkpointing, run_files, train, train_state
from tlb_jax.models import create_model

NUM_CLASSES = 10


def _steps(workdir):
  """The finalized checkpoint steps in `workdir/checkpoints`, ascending."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _corrupt(workdir, step):
  """Truncates every array data file of the checkpoint at `step` to zero bytes."""
  paths = glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'default', '**', 'd', '*'),
                    recursive=True)
  assert paths, f'no array files found in checkpoint {step}'
  for path in paths:
    open(path, 'wb').close()  # pylint: disable=consider-using-with


def _template(config):
  """The abstract TrainState of `config` (shapes and dtypes only), as restore_latest takes."""
  model = create_model(config, NUM_CLASSES)
  tx = train_state.create_optimizer(config, optax.constant_schedule(config.learning_rate))
  return jax.eval_shape(
      lambda rng: train_state.create_train_state(rng, model, config.image_size, tx),
      jax.random.PRNGKey(0))


def _restore_latest(workdir, config, template=None):
  """The latest readable checkpoint of `workdir`, restored into `template` (default: the
  abstract TrainState of `config`)."""
  checkpoints = checkpointing.Checkpoints(workdir, config)
  try:
    return checkpoints.restore_latest(_template(config) if template is None else template)
  finally:
    checkpoints.close()


@pytest.fixture
def workdir(tmp_path_factory):
  """A private copy of the shared tiny trained run (checkpoints at steps 4 and 8)."""
  return trained_run.copy_of_trained_workdir(tmp_path_factory)


# ------------------------------------------------------------------------ unreadable checkpoints


def test_corrupt_latest_checkpoint_is_skipped_with_a_warning_naming_its_step(workdir, caplog):
  """With the latest checkpoint's array files truncated, restore_latest returns the previous
  checkpoint's state and logs a warning naming the skipped step."""
  *_, previous, latest = _steps(workdir)
  _corrupt(workdir, latest)
  with caplog.at_level(logging.WARNING):
    restored = _restore_latest(workdir, trained_run.config())
  assert int(restored.step) == previous
  expected = _restore_raw(workdir, previous)
  _assert_trees_equal(restored.params, expected['params'])
  np.testing.assert_array_equal(restored.rng, expected['rng'])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f'at step {latest} ' in m and 'unreadable' in m for m in warnings), warnings
  assert not any(f'at step {previous} ' in m for m in warnings), warnings


# How many reads are still in flight when Orbax gives up varies (none, at times), so the failed
# restore is repeated: a few times by default, many times before a release (-m slow), each
# waiting out `checkpointing.RESTORE_NOISE_SETTLE_S` at least.
@pytest.mark.parametrize('attempts', [4, pytest.param(20, marks=pytest.mark.slow)],
                         ids=['4_restores', '20_restores'])
def test_skipping_a_corrupt_checkpoint_prints_no_orbax_tracebacks(workdir, caplog, monkeypatch,
                                                                 recwarn, attempts):
  """Orbax's failed reads of a corrupt checkpoint leave no "Event loop is closed" unraisable
  exceptions, asyncio "exception was never retrieved" records or "never awaited" warnings (up to
  hundreds of tracebacks on the console); the one-line warning is all a user sees."""
  unraisable = []
  monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
  *_, latest = _steps(workdir)
  _corrupt(workdir, latest)
  config = trained_run.config()
  template = _template(config)  # traced once, not once per restore
  with caplog.at_level(logging.WARNING):
    for _ in range(attempts):
      _restore_latest(workdir, config, template)
    gc.collect()
  assert not unraisable, [str(u.exc_value) for u in unraisable[:3]]
  assert not [r for r in caplog.records if r.name == 'asyncio'], caplog.text[:500]
  assert not [w for w in recwarn if 'never awaited' in str(w.message)], recwarn.list[:3]


def test_a_restore_without_failures_leaves_the_console_hooks_as_they_were(tmp_path, workdir):
  """Only a failed restore quiets asyncio's logger and the unraisable hook (until close()):
  neither a fresh workdir nor a readable checkpoint changes them."""
  hook, filters = sys.unraisablehook, list(logging.getLogger('asyncio').filters)
  for directory in (str(tmp_path), workdir):
    checkpoints = checkpointing.Checkpoints(directory, trained_run.config())
    checkpoints.restore_latest(_template(trained_run.config()))
    assert sys.unraisablehook is hook
    assert logging.getLogger('asyncio').filters == filters
    checkpoints.close()


def test_run_resumed_past_a_corrupt_checkpoint_saves_a_readable_one_at_its_step(workdir):
  """Resuming from the checkpoint before a corrupt latest one retrains up to and past its step
  and saves a readable checkpoint there; the corrupt one is renamed, not deleted."""
  *_, latest = _steps(workdir)
  _corrupt(workdir, latest)
  os.remove(os.path.join(workdir, 'results.json'))
  config = trained_run.config()
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = train.train_and_evaluate(config, workdir)
  assert results['resumed_from_step'] < latest == results['step']
  assert int(_restore_latest(workdir, config).step) == latest
  assert glob.glob(os.path.join(workdir, 'checkpoints', f'{latest}.unreadable-*', 'default'))


def test_run_with_no_readable_checkpoint_stops_and_points_to_fresh(workdir):
  """When every checkpoint is unreadable, train_and_evaluate raises CheckpointError mentioning
  --fresh instead of training from step 0, and leaves the checkpoints in place."""
  steps = _steps(workdir)
  for step in steps:
    _corrupt(workdir, step)
  with mock_cifar(trained_run.MOCK_EXAMPLES), pytest.raises(
      checkpointing.CheckpointError, match='--fresh'):
    train.train_and_evaluate(trained_run.config(), workdir)
  assert _steps(workdir) == steps


# ----------------------------------------------------------------------------- changed config


def _with_vit(config):
  config.model = 'vit'
  config.vit.update(patch_size=4, embed_dim=32, num_layers=1, num_heads=2, mlp_ratio=1,
                    dropout_rate=0.0, attention_dropout_rate=0.0)
  return config


@pytest.mark.parametrize('field, change', [
    ('tlb.embed_dim', lambda config: config.tlb.update(embed_dim=48)),
    ('model', _with_vit),
], ids=['embed_dim', 'model'])
def test_resume_with_a_changed_shape_field_is_refused_naming_it(workdir, field, change):
  """A config that changes parameter shapes is refused with a CheckpointError naming the field
  (and --fresh); the workdir's config.json and checkpoints are left as they were."""
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = f.read()
  steps = _steps(workdir)
  config = trained_run.config()
  change(config)
  with mock_cifar(trained_run.MOCK_EXAMPLES), pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(config, workdir)
  assert re.search(rf'differs in {re.escape(field)};', str(e.value)), str(e.value)
  assert '--fresh' in str(e.value)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved
  assert _steps(workdir) == steps


def test_changing_only_dropout_remat_or_unroll_is_compatible(tmp_path_factory):
  """Dropout rates, remat and scan_unroll change no shape: incompatible_fields is empty and
  check_compatible accepts the workdir."""
  run = trained_run.trained_workdir(tmp_path_factory)
  with open(os.path.join(run, 'config.json')) as f:
    saved = json.load(f)
  config = trained_run.config()
  config.tlb.update(dropout_rate=0.3, attention_dropout_rate=0.25, remat='full', scan_unroll=2)
  assert saved['tlb']['remat'] != 'full' and saved['tlb']['dropout_rate'] != 0.3
  assert checkpointing.incompatible_fields(saved, config) == []
  checkpointing.check_compatible(run, config)


def test_a_workdir_whose_config_lacks_current_fields_is_refused_naming_them(tmp_path_factory,
                                                                            tmp_path):
  """Resuming a workdir whose config.json lacks fields of the current configs (a run of an older
  tlb-jax) is a CheckpointError that names the fields and says to retrain or pass --fresh."""
  run = str(tmp_path / 'old_run')
  shutil.copytree(trained_run.trained_workdir(tmp_path_factory), run)
  with open(os.path.join(run, 'config.json')) as f:
    saved = json.load(f)
  del saved['tlb']['tokenizer'], saved['crop_padding']
  with open(os.path.join(run, 'config.json'), 'w') as f:
    json.dump(saved, f)
  with pytest.raises(checkpointing.CheckpointError) as e:
    checkpointing.check_compatible(run, trained_run.config())
  message = str(e.value)
  assert 'crop_padding, tlb.tokenizer' in message and '--fresh' in message
  assert '\n' not in message


@pytest.mark.parametrize('keras_fans', ['conv', 'einsum'])
def test_a_workdir_saved_before_keras_fans_existed_is_compatible_with_either_rule(
    tmp_path_factory, tmp_path, keras_fans):
  """tlb.keras_fans shapes only the initial parameters: a run whose config.json lacks it (made
  by an older tlb-jax) is compatible with both rules and reads as the rule it used, 'einsum'."""
  run = str(tmp_path / 'old_run')
  shutil.copytree(trained_run.trained_workdir(tmp_path_factory), run)
  with open(os.path.join(run, 'config.json')) as f:
    saved = json.load(f)
  del saved['tlb']['keras_fans']
  with open(os.path.join(run, 'config.json'), 'w') as f:
    json.dump(saved, f)
  config = trained_run.config()
  config.tlb.keras_fans = keras_fans
  checkpointing.check_compatible(run, config)
  assert run_files.load_config(run).tlb.keras_fans == 'einsum'


def test_fresh_moves_checkpoints_and_results_aside_and_trains_from_step_0(workdir):
  """fresh=True renames checkpoints/ and results.json to *.old-<time> (contents intact) and
  the run starts again at step 0."""
  steps = _steps(workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    old_results = f.read()
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = train.train_and_evaluate(trained_run.config(), workdir, fresh=True)
  assert results['resumed_from_step'] == 0
  old_checkpoints = glob.glob(os.path.join(workdir, 'checkpoints.old-*'))
  old_results_paths = glob.glob(os.path.join(workdir, 'results.old-*.json'))
  assert len(old_checkpoints) == 1 and len(old_results_paths) == 1
  assert sorted(int(n) for n in os.listdir(old_checkpoints[0]) if n.isdigit()) == steps
  assert _steps(workdir) == steps  # the new run's own checkpoints
  with open(old_results_paths[0]) as f:
    assert f.read() == old_results
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['resumed_from_step'] == 0


# -------------------------------------------------------------------------------- divergence


def _diverging_config(**overrides):
  """The tiny resume config with a learning rate so large that step 2's loss is not finite."""
  config = _resume_config()
  config.update(learning_rate=1e30, lr_schedule='constant', num_train_steps=4,
                checkpoint_every_steps=1, **overrides)
  return config


def test_nonfinite_loss_stops_the_run_naming_the_step_before_saving_it(tmp_path):
  """A non-finite step raises DivergenceError naming it; every earlier step was checkpointed
  and nothing at or after it was."""
  with mock_cifar(MOCK_EXAMPLES), pytest.raises(train.DivergenceError) as e:
    train.train_and_evaluate(_diverging_config(), str(tmp_path))
  step = int(re.search(r'not finite at step (\d+)', str(e.value)).group(1))
  assert step > 1, str(e.value)
  assert _steps(str(tmp_path)) == list(range(1, step))
  assert f'last good checkpoint: step {step - 1}' in str(e.value)


def test_skip_nonfinite_steps_finishes_with_finite_parameters(tmp_path):
  """With skip_nonfinite_steps the same diverging run completes, its final parameters are
  finite, and the skipped steps left them as they were after step 1."""
  config = _diverging_config(skip_nonfinite_steps=True)
  with mock_cifar(MOCK_EXAMPLES):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == config.num_train_steps
  final = _restore_raw(str(tmp_path), config.num_train_steps)
  assert int(final['step']) == config.num_train_steps
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(final['params']))
  _assert_trees_equal(final['params'], _restore_raw(str(tmp_path), 1)['params'])


def _nan_gradient(apply_fn):
  """`apply_fn` with unchanged outputs but a NaN gradient: d sqrt(u)/du at u = 0 is inf, and
  u = 0 * (sum of a parameter) contributes inf * 0."""
  def apply(variables, *args, **kwargs):
    first = jax.tree.leaves(variables['params'])[0]
    return apply_fn(variables, *args, **kwargs) + jnp.sqrt(0.0 * first.sum())
  return apply


def test_skipped_step_keeps_params_and_opt_state_but_advances_step(tiny):
  """With skip_nonfinite_steps, a step with a finite loss but a NaN gradient leaves params and
  optimizer state bitwise unchanged, counts the step, and reports it as non-finite."""
  _, state, step = tiny
  poisoned = state.replace(apply_fn=_nan_gradient(state.apply_fn))
  skipping = functools.partial(step, skip_nonfinite_steps=True)
  new, metrics = _run_steps(skipping, poisoned, _batch(8), num_devices=1)
  new = _first(new)
  assert metrics['nonfinite_steps'] == 1.0
  assert np.isfinite(metrics['loss'])
  assert int(new.step) == int(state.step) + 1
  _assert_trees_equal(new.params, state.params)
  _assert_trees_equal(new.opt_state, state.opt_state)


# ---------------------------------------------------------------- kill and resume (subprocesses)

TRAIN_IMAGES, BATCH_SIZE = 1024, 64
KILL_STEPS = TRAIN_IMAGES // BATCH_SIZE  # one epoch
KILL_ARGS = (
    '--config=configs/smoke.py', f'--config.data_dir={REAL_DATA_DIR}',
    f'--config.train_split=train[:{TRAIN_IMAGES}]', '--config.eval_split=train[40000:40256]',
    '--config.test_split=test[:256]', f'--config.batch_size={BATCH_SIZE}',
    '--config.eval_batch_size=128', '--config.num_epochs=1', '--config.log_every_steps=4',
    '--config.checkpoint_every_steps=4', f'--config.keep_checkpoints={KILL_STEPS}',
    '--config.num_attention_images=0')
WAIT_LIMIT_S = 400  # a guard against a hung run, not a timing assertion


def _start(workdir, log_path):
  """Starts `python main.py KILL_ARGS --workdir=workdir`, output to `log_path`."""
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, 'main.py', *KILL_ARGS, f'--workdir={workdir}'],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _wait_until(process, condition, log_path):
  """Polls until `condition()` holds; fails if the process exits first."""
  deadline = time.monotonic() + WAIT_LIMIT_S
  while not condition():
    if process.poll() is not None:
      with open(log_path) as f:
        pytest.fail(f'main.py exited {process.returncode} early:\n{f.read()[-3000:]}')
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f'main.py did not reach the kill point in {WAIT_LIMIT_S} s')
    time.sleep(0.005)


def _saving(workdir):
  """True while Orbax writes a checkpoint (its temporary directory exists)."""
  return bool(glob.glob(os.path.join(workdir, 'checkpoints', '*.orbax-checkpoint-tmp*')))


def _assert_bitwise_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.dtype == e.dtype and np.array_equal(a, e)


def _finish_and_compare(workdir, reference):
  """Reruns the command to completion; its last checkpoint must equal the reference's."""
  rerun = _main(*KILL_ARGS, f'--workdir={workdir}')
  assert rerun.returncode == 0, _describe(rerun)
  assert _steps(workdir)[-1] == KILL_STEPS
  _assert_bitwise_equal(_restore_raw(workdir, KILL_STEPS), reference)
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The last checkpoint of an uninterrupted run of KILL_ARGS on the real CIFAR-10."""
  if not HAS_REAL_DATA:
    pytest.skip(f'real CIFAR-10 TFDS data not in {REAL_DATA_DIR}')
  workdir = str(tmp_path_factory.mktemp('uninterrupted') / 'run')
  process = _main(*KILL_ARGS, f'--workdir={workdir}')
  assert process.returncode == 0, _describe(process)
  return _restore_raw(workdir, KILL_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize('signum, exit_code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_at_the_stop_step_and_resume_equals_uninterrupted_run(
    reference, tmp_path, signum, exit_code):
  """SIGTERM/SIGINT after the first checkpoint: exit 143/130 with a checkpoint at the step it
  names; rerunning the command ends with the uninterrupted run's final state, bitwise."""
  workdir, log_path = str(tmp_path / 'run'), str(tmp_path / 'log.txt')
  process = _start(workdir, log_path)
  _wait_until(process, lambda: _steps(workdir), log_path)
  process.send_signal(signum)
  process.wait(timeout=WAIT_LIMIT_S)
  with open(log_path) as f:
    log = f.read()
  assert process.returncode == exit_code, log[-3000:]
  stop = int(re.search(rf'{signum.name} received: stopped at step (\d+)', log).group(1))
  assert stop < KILL_STEPS and _steps(workdir)[-1] == stop
  first_segment = _checkpoint_metadata(workdir, stop)
  results = _finish_and_compare(workdir, reference)
  assert results['resumed_from_step'] == stop
  # The training time covers both segments.
  assert first_segment['train_segments'] == 1 and results['train_segments'] == 2
  assert results['train_wall_time_s'] > first_segment['train_seconds']


@pytest.mark.slow
def test_sigkill_after_and_during_saves_then_resume_equals_uninterrupted_run(
    reference, tmp_path):
  """SIGKILL right after the first checkpoint appears, then (rerun) as soon as a later save
  starts (its temporary directory appears, or the checkpoint itself if the poll missed that):
  the next rerun completes with the uninterrupted run's final state, bitwise."""
  workdir = str(tmp_path / 'run')
  process = _start(workdir, str(tmp_path / 'log1.txt'))
  _wait_until(process, lambda: _steps(workdir), str(tmp_path / 'log1.txt'))
  process.kill()
  assert process.wait(timeout=60) == -signal.SIGKILL
  first_kill_steps = _steps(workdir)

  process = _start(workdir, str(tmp_path / 'log2.txt'))
  _wait_until(process, lambda: _saving(workdir) or _steps(workdir)[-1] > first_kill_steps[-1],
              str(tmp_path / 'log2.txt'))
  process.kill()
  assert process.wait(timeout=60) == -signal.SIGKILL
  assert _steps(workdir)[-1] < KILL_STEPS
  # The segments whose checkpoints survived: the first, and the second if it saved one before
  # its kill. The time of the work after a segment's last checkpoint is not counted: it is
  # trained again.
  before_resume = _checkpoint_metadata(workdir, _steps(workdir)[-1])
  assert before_resume['train_segments'] in (1, 2)
  results = _finish_and_compare(workdir, reference)
  assert results['train_segments'] == before_resume['train_segments'] + 1
  assert results['train_wall_time_s'] > before_resume['train_seconds']
