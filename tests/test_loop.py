"""The training loop's reads of device values: none between its check points, and a check of
every step before each checkpoint save."""

import contextlib
import os
import re
from unittest import mock

import jax
import numpy as np
import pytest
from clu import metric_writers, periodic_actions
from flax import jax_utils
from jax._src import array as jax_array

from test_reliability import _diverging_config, _steps
from test_train import MOCK_EXAMPLES, _resume_config
from tfds_mock import mock_cifar
from tlb_jax import checkpointing, input_pipeline, plots, train, train_state
from tlb_jax.models import create_model

NUM_CLASSES = 10


@contextlib.contextmanager
def _host_reads():
  """Records every read of a device value on the host within the block, as a list of names.

  `jax.transfer_guard_device_to_host('disallow')` catches such reads on accelerators but not on
  CPU, whose arrays already live in host memory; so the ways a host reads an array are counted
  too: its numpy value (np.asarray, float, int, bool, item, tolist, device_get), waiting for it
  (block_until_ready) and starting its copy (copy_to_host_async).
  """
  reads = []
  value = jax_array.ArrayImpl._value  # pylint: disable=protected-access

  def recorded(name, method):
    def wrapper(self, *args, **kwargs):
      reads.append(name)
      return method(self, *args, **kwargs)
    return wrapper

  with mock.patch.object(jax_array.ArrayImpl, '_value', property(recorded('_value', value.fget))), \
      mock.patch.object(jax_array.ArrayImpl, 'block_until_ready',
                        recorded('block_until_ready', jax_array.ArrayImpl.block_until_ready)), \
      mock.patch.object(jax_array.ArrayImpl, 'copy_to_host_async',
                        recorded('copy_to_host_async', jax_array.ArrayImpl.copy_to_host_async)), \
      jax.transfer_guard_device_to_host('disallow'):
    yield reads


def test_steps_between_check_points_read_nothing_on_the_host():
  """`dispatch_steps`, everything the loop does between two check points (steps, prefetching
  batches to the devices, progress reports), reads no device value on the host; the carry it
  returns holds the metrics of every step, read once afterwards."""
  config = _resume_config()
  model = create_model(config, NUM_CLASSES)
  learning_rate_fn = train_state.create_learning_rate_fn(config, 4, 100)
  state = train_state.create_train_state(jax.random.PRNGKey(0), model, config.image_size,
                                         train_state.create_optimizer(config, learning_rate_fn))
  state = jax_utils.replicate(state, axis_name='batch')
  p_loop_step = train.make_loop_step(config, learning_rate_fn)
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(
      images=rng.integers(0, 256, (MOCK_EXAMPLES, 32, 32, 3), np.uint8),
      labels=rng.integers(0, NUM_CLASSES, (MOCK_EXAMPLES,)).astype(np.int32))
  num_devices = jax.local_device_count()
  batches = jax_utils.prefetch_to_device(
      (input_pipeline.shard(b, num_devices)
       for b in input_pipeline.train_batches(split, config.batch_size, config.seed)), 2)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=100, every_steps=2, writer=metric_writers.LoggingWriter())
  carry = train.empty_carry()
  state, carry, step = train.dispatch_steps(p_loop_step, state, carry, batches, 0, 1, [])
  jax.block_until_ready((state, carry))  # the first call compiles
  first_metrics = train.fetch(carry).metrics.compute()

  num_steps = 9
  with _host_reads() as reads:
    state, carry, step = train.dispatch_steps(p_loop_step, state, carry, batches, step,
                                              1 + num_steps, [], report_progress)
  assert step == 1 + num_steps
  assert reads == []
  with _host_reads() as reads:  # the instrument sees a read of the carry
    fetched = train.fetch(carry)
  assert reads
  assert int(fetched.metrics.accuracy.count) == (1 + num_steps) * config.batch_size
  assert int(fetched.metrics.nonfinite_steps.count) == (1 + num_steps) * num_devices
  assert int(fetched.first_nonfinite) == train.NO_STEP
  assert int(fetched.stop_signal) == 0
  assert np.isfinite(fetched.metrics.compute()['loss'])
  assert fetched.metrics.compute()['loss'] != first_metrics['loss']


def test_a_stop_request_ends_the_dispatch_after_the_current_step():
  """With a signal recorded in `stop`, `dispatch_steps` returns after one step, not at `until`."""
  calls = []

  def p_loop_step(state, carry, batch):
    calls.append(batch)
    return state, carry

  _, _, step = train.dispatch_steps(p_loop_step, None, None, iter(range(100)), 4, 20, [15])
  assert step == 5 and calls == [0]
  _, _, step = train.dispatch_steps(p_loop_step, None, None, iter(range(100)), 4, 20, [])
  assert step == 20


def test_next_check_is_the_first_multiple_of_any_interval_or_the_last_step():
  assert train.next_check(0, 100, (50, 30, 0)) == 30
  assert train.next_check(30, 100, (50, 30, 0)) == 50
  assert train.next_check(90, 100, (50, 30, 0)) == 100
  assert train.next_check(3, 7, (3, 4, 5)) == 4


def test_the_loop_reads_the_devices_only_at_check_points_and_before_every_save(tmp_path):
  """A whole run (7 steps, 4 per epoch, log every 3, checkpoint every 5) reads the devices
  only at its check points: each read covers every step dispatched so far, one precedes each
  save, and a log point that saves nothing is read while the next step runs. The steps in
  between read nothing (run under `_host_reads`), and the logged scalars are at the log
  points."""
  config = _resume_config()
  config.update(num_train_steps=7, log_every_steps=3, checkpoint_every_steps=5,
                keep_checkpoints=7)
  events = []
  dispatch, fetch = train.dispatch_steps, train.fetch

  def guarded_dispatch(p_loop_step, state, carry, batches, step, until, *args):
    with _host_reads() as reads:
      state, carry, last = dispatch(p_loop_step, state, carry, batches, step, until, *args)
    assert reads == [], (step, until, reads)
    events.append(f'steps {step + 1}-{last}')
    return state, carry, last

  def recorded_fetch(carry):
    events.append('fetch')
    return fetch(carry)

  save = checkpointing.Checkpoints.save

  def recorded_save(self, step, state):
    events.append(f'save {step}')
    return save(self, step, state)

  with mock_cifar(MOCK_EXAMPLES), mock.patch.object(train, 'dispatch_steps', guarded_dispatch), \
      mock.patch.object(train, 'fetch', recorded_fetch), \
      mock.patch.object(checkpointing.Checkpoints, 'save', recorded_save):
    train.train_and_evaluate(config, str(tmp_path))
  assert events == [
      'steps 1-3',                     # 3: a log point only; its read waits for step 4
      'steps 4-4', 'fetch',            # the read of step 3, after step 4 was dispatched
      'fetch', 'save 4',               # 4: the epoch's end
      'steps 5-5', 'fetch', 'save 5',  # 5: checkpoint_every_steps
      'steps 6-6',                     # 6: a log point only
      'steps 7-7', 'fetch',            # the read of step 6
      'fetch', 'save 7',               # 7: the last step
  ]
  assert sorted(plots.read_scalars(str(tmp_path))['train_loss']) == [3, 4, 6, 7]


def test_nonfinite_step_between_log_points_names_the_first_bad_step_before_any_save(tmp_path):
  """A run that diverges at step 2 while reading the devices only at step 3 (a log point) and
  step 4 (the last, which saves) raises DivergenceError naming step 2, having saved nothing."""
  config = _diverging_config(log_every_steps=3)
  config.checkpoint_every_steps = 100
  with mock_cifar(MOCK_EXAMPLES), pytest.raises(train.DivergenceError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert re.search(r'not finite at step 2;', str(e.value)), str(e.value)
  assert 'last good checkpoint: none yet' in str(e.value)
  assert _steps(str(tmp_path)) == []
  assert not os.path.exists(os.path.join(str(tmp_path), 'results.json'))
