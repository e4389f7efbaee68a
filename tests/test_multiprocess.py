"""Multi-process training on one machine: two `main.py` processes of one CPU device each, joined
by `jax.distributed` and gloo collectives, against one process with two devices."""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_main import HAS_REAL_DATA, REAL_DATA_DIR, REPO_ROOT, _describe, _error_lines, _main
from test_reliability import _steps
from tlb_jax import input_pipeline

NUM_STEPS, CHECKPOINT_EVERY = 16, 4  # one epoch of 256 images in batches of 16
ARGS = ('--config=configs/smoke.py', f'--config.data_dir={REAL_DATA_DIR}',
        f'--config.num_train_steps={NUM_STEPS}', '--config.batch_size=16',
        '--config.eval_batch_size=32', '--config.train_split=train[:256]',
        '--config.eval_split=train[256:320]', '--config.test_split=test[:64]',
        '--config.num_attention_images=0', '--config.log_every_steps=2',
        f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}', f'--config.keep_checkpoints={NUM_STEPS}')
# Shorter than JAX's 100 s, long enough for a loaded machine's compiles not to look like death.
HEARTBEAT_TIMEOUT_S = 30
# A process whose peer died stops within this: its next collective fails at once; the heartbeat
# timeout covers a process that was not in a collective. Not a timing assertion of the steps.
DEAD_PEER_LIMIT_S = 3 * HEARTBEAT_TIMEOUT_S
WAIT_LIMIT_S = 600  # a guard against a hung run
# Parameters of the two runs agree to float32 rounding: gradients are averaged over the same
# two devices' halves of every batch, in another process.
RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------- each process's slice


def _process_batches(make, process_index, process_count=2):
  with mock.patch.object(jax, 'process_index', return_value=process_index), \
      mock.patch.object(jax, 'process_count', return_value=process_count):
    return make()


def _split(num_examples=40):
  rng = np.random.default_rng(0)
  return input_pipeline.Split(
      images=np.arange(num_examples, dtype=np.uint8)[:, None, None, None]
      * np.ones((1, 2, 2, 3), np.uint8),
      labels=rng.integers(0, 10, (num_examples,)).astype(np.int32))


@pytest.mark.parametrize('start_step', [0, 3])
def test_each_process_reads_only_its_slice_of_every_global_batch(start_step):
  """train_batches of processes 0 and 1 (of 2) are the first and second halves of the
  single-process batch at every step (across epochs and from a resumed step): together they
  are that batch, with no example twice, and each device gets the examples it gets with one
  process and two devices."""
  split, batch_size, num_steps = _split(), 8, 12  # 5 steps per epoch

  def batches():
    it = input_pipeline.train_batches(split, batch_size, seed=3, start_step=start_step)
    return [next(it) for _ in range(num_steps)]

  whole = _process_batches(batches, 0, 1)
  halves = [_process_batches(batches, i) for i in (0, 1)]
  for step in range(num_steps):
    first, second = halves[0][step], halves[1][step]
    ids = [b['image'][:, 0, 0, 0] for b in (first, second)]
    assert len(ids[0]) == len(ids[1]) == batch_size // 2
    assert not set(ids[0]) & set(ids[1])
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]),
                                    whole[step][key])


def test_each_process_evaluates_its_slice_of_every_padded_batch():
  """eval_batches of the two processes split every batch in halves, padding and mask included,
  so that every example is scored once over both."""
  split = _split(num_examples=21)

  def batches():
    return list(input_pipeline.eval_batches(split, 8))

  whole = _process_batches(batches, 0, 1)
  halves = [_process_batches(batches, i) for i in (0, 1)]
  for step, batch in enumerate(whole):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])
  scored = np.concatenate([b['image'][:, 0, 0, 0][b['mask']] for h in halves for b in h])
  assert sorted(scored) == list(range(21))


# ----------------------------------------------------------------- two processes (subprocesses)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_process_env():
  """The test environment without the forced two host devices: one CPU device per process."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = ' '.join(flag for flag in env.get('XLA_FLAGS', '').split()
                              if not flag.startswith('--xla_force_host_platform_device_count'))
  return env


def _start_two(workdir, log_dir, tag):
  """Starts processes 0 and 1 of `main.py ARGS`; each logs to its own file in `log_dir`."""
  port, processes = _free_port(), []
  for index in (0, 1):
    log_path = os.path.join(log_dir, f'{tag}_process{index}.log')
    with open(log_path, 'w') as log:
      process = subprocess.Popen(
          [sys.executable, 'main.py', *ARGS, f'--workdir={workdir}',
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
           f'--process_id={index}', f'--heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}'],
          cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=_two_process_env())
    process.log_path = log_path
    processes.append(process)
  return processes


def _log(process) -> str:
  with open(process.log_path) as f:
    return f.read()


def _wait_all(processes):
  try:
    return [p.wait(timeout=WAIT_LIMIT_S) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def _restore_here(workdir, step):
  """The checkpoint at `step` as saved (a dict of arrays) on this process's first device: a
  multi-process checkpoint records the devices it was saved from, so its metadata's shapes and
  dtypes give the target."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path).item_metadata
    return checkpointer.restore(path, jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved))


def _pid_of_events_file(path) -> int:
  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
  return int(os.path.basename(path).split('.')[-3])


def _dir_bytes(path) -> int:
  return sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, '**'), recursive=True)
             if os.path.isfile(f))


def _wait_for_checkpoint_after(step, workdir, processes):
  """Polls until `workdir` has a finished checkpoint after `step`; fails if a process exits."""
  deadline = time.monotonic() + WAIT_LIMIT_S
  while not (_steps(workdir) and _steps(workdir)[-1] > step):
    assert all(p.poll() is None for p in processes), [_log(p)[-3000:] for p in processes]
    assert time.monotonic() < deadline, f'no checkpoint after step {step} in time'
    time.sleep(0.005)


@pytest.mark.slow
def test_two_processes_train_like_one_with_two_devices_stop_together_and_resume(tmp_path):
  """Two processes of one device each train like one process with two devices on the same
  global batches; only process 0 writes the workdir's files, and each checkpoint is written
  once, by both (Orbax's multi-process saves).

  Over three launches of the same two commands: SIGTERM to process 1 alone stops both at the
  same step with a checkpoint there (exit 143); SIGKILL of process 1 makes process 0 exit
  non-zero with one `error:` line within DEAD_PEER_LIMIT_S; the last launch resumes from the
  last checkpoint and ends with the single process's state."""
  if not HAS_REAL_DATA:
    pytest.skip(f'real CIFAR-10 TFDS data not in {REAL_DATA_DIR}')
  reference = str(tmp_path / 'one_process')
  single = _main(*ARGS, f'--workdir={reference}')  # the test's 2 forced host devices
  assert single.returncode == 0, _describe(single)
  workdir, logs = str(tmp_path / 'two_processes'), str(tmp_path)

  first = _start_two(workdir, logs, 'first')
  _wait_for_checkpoint_after(0, workdir, first)
  first[1].send_signal(signal.SIGTERM)
  assert _wait_all(first) == [143, 143], [_log(p)[-3000:] for p in first]
  stops = {int(re.search(r'SIGTERM received: stopped at step (\d+)', _log(p)).group(1))
           for p in first}
  assert len(stops) == 1 and _steps(workdir)[-1] == stops.pop() < NUM_STEPS

  second = _start_two(workdir, logs, 'second')
  _wait_for_checkpoint_after(_steps(workdir)[-1], workdir, second)
  second[1].kill()
  killed = time.monotonic()
  code = second[0].wait(timeout=WAIT_LIMIT_S)
  detection_s = time.monotonic() - killed
  second[1].wait()
  log0 = _log(second[0])
  print(f'process 0 exited {code} {detection_s:.1f} s after process 1 was killed')
  assert code != 0 and detection_s < DEAD_PEER_LIMIT_S, log0[-3000:]
  errors = _error_lines(log0)
  assert len(errors) == 1 and errors[0].startswith('error: process 0 of 2 stopped'), log0[-3000:]
  stopped_at = _steps(workdir)[-1]
  assert stopped_at < NUM_STEPS

  third = _start_two(workdir, logs, 'third')
  assert _wait_all(third) == [0, 0], [_log(p)[-3000:] for p in third]
  assert re.search(rf'starting at step {stopped_at}\b', _log(third[0])), _log(third[0])[-3000:]
  assert _steps(workdir)[-1] == NUM_STEPS

  expected, actual = _restore_here(reference, NUM_STEPS), _restore_here(workdir, NUM_STEPS)
  assert int(actual['step']) == NUM_STEPS
  diffs = [np.abs(np.asarray(a) - np.asarray(e)).max()
           for a, e in zip(jax.tree.leaves(actual['params']), jax.tree.leaves(expected['params']))]
  print(f'largest parameter difference, two processes vs one: {max(diffs):.3g}')
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert np.shape(a) == np.shape(e)
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=RTOL, atol=ATOL)

  # Only process 0 writes the run's files: one TensorBoard events file per run of process 0,
  # and the plots (process 1 logs no plot).
  pids_0 = {first[0].pid, second[0].pid, third[0].pid}
  events = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert events and {_pid_of_events_file(e) for e in events} <= pids_0, events
  for name in ('config.json', 'labels.json', 'results.json', 'plots'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert not glob.glob(os.path.join(workdir, '*.tmp'))
  assert 'Plots: ' in _log(third[0]) and 'Plots: ' not in _log(third[1])
  # Orbax wrote each checkpoint once, with both processes taking part: one process's files
  # each, and about the size of the single process's checkpoint (the replicated state once).
  last = os.path.join(workdir, 'checkpoints', str(NUM_STEPS), 'default')
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(last, 'ocdbt.process_*'))) \
      == ['ocdbt.process_0', 'ocdbt.process_1']
  single_bytes = _dir_bytes(os.path.join(reference, 'checkpoints', str(NUM_STEPS)))
  assert _dir_bytes(os.path.dirname(last)) < 1.5 * single_bytes
