"""Orbax checkpoints of the TrainState under `workdir/checkpoints`."""

import gc
import logging as std_logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from tlb_jax import config_validation, run_files


# Model fields that change no parameter shape, so a run may resume with other values; those that
# shape only the initial parameters do not matter once a checkpoint is restored.
SHAPE_FREE_MODEL_FIELDS = ('dropout_rate', 'attention_dropout_rate', 'scan_unroll', 'remat',
                           *(field for fields in config_validation.INITIALIZATION_FIELDS.values()
                             for field in fields))
# Top-level fields that change parameter or optimizer-state shapes.
SHAPE_FIELDS = ('model', 'dataset', 'image_size', 'weight_decay_on')
# After a failed restore, close() waits until its abandoned reads were quiet this long.
RESTORE_NOISE_SETTLE_S = 0.5


class CheckpointError(Exception):
  """The workdir's checkpoints cannot be used; the message says what to do."""


def incompatible_fields(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Fields of `config` that differ from the `saved` run's config in a way that changes the
  shapes of the train state (so its checkpoints cannot be restored)."""
  new = config.to_dict()
  fields = [f for f in SHAPE_FIELDS if saved[f] != new[f]]
  if (saved['grad_clip_norm'] > 0) != (new['grad_clip_norm'] > 0):
    fields.append('grad_clip_norm')  # clipping adds optimizer state
  if 'model' not in fields:
    model, saved_model = new[new['model']], saved[new['model']]
    fields += [f'{new["model"]}.{k}' for k, v in model.items()
               if k not in SHAPE_FREE_MODEL_FIELDS and saved_model[k] != v]
  return fields


def _sync_processes(name: str) -> None:
  """Waits until every process of a multi-process run gets here (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def start_fresh(workdir: str) -> None:
  """Moves an earlier run's checkpoints, results and config changes aside (never deletes them);
  in a multi-process run, process 0 moves them while the others wait."""
  stamp = time.strftime('%Y%m%d-%H%M%S')
  for name in ('checkpoints', run_files.RESULTS, run_files.CONFIG_CHANGES):
    path = os.path.join(workdir, name)
    if jax.process_index() == 0 and os.path.exists(path):
      root, ext = os.path.splitext(path)
      os.replace(path, f'{root}.old-{stamp}{ext}')
      logging.warning('Starting fresh: moved %s to %s', path, f'{root}.old-{stamp}{ext}')
  _sync_processes('tlb_jax_start_fresh')


def _replicated_on_all_devices() -> jax.sharding.NamedSharding:
  """A sharding that keeps a whole copy on every device of every process."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('devices',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def one_copy(replicated_state):
  """The copy of a pmap-replicated train state that `Checkpoints.save` takes: the first local
  device's; in a multi-process run, one global array per leaf, replicated on every process's
  devices, which Orbax writes once (it refuses arrays local to a process)."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: x[0], replicated_state)
  sharding = _replicated_on_all_devices()

  def global_copy(x):
    shards = sorted(x.addressable_shards, key=lambda shard: shard.device.id)
    return jax.make_array_from_single_device_arrays(
        x.shape[1:], sharding, [shard.data.reshape(x.shape[1:]) for shard in shards])

  return jax.tree.map(global_copy, replicated_state)


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises CheckpointError if `workdir` holds checkpoints of a differently shaped run, or of a
  run whose config.json lacks current fields."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return
  try:
    saved = run_files.saved_config(workdir)
    if saved is None:
      return
    run_files.check_current_fields(workdir, saved)
  except run_files.WorkdirError as e:
    raise CheckpointError(str(e)) from None
  fields = incompatible_fields(saved, config)
  if fields:
    raise CheckpointError(
        f'--workdir={workdir} holds checkpoints of a run whose config differs in '
        f'{", ".join(fields)}; use another --workdir, or pass --fresh to move them aside and '
        'start over')


class _FailedRestoreNoise(std_logging.Filter):
  """Keeps the aftermath of failed Orbax restores off the console while installed.

  When a checkpoint's array files cannot be read, Orbax raises the first error and closes its
  event loop while tensorstore finishes the other reads. Each of those then prints a traceback,
  at once or when garbage collected much later ("Event loop is closed", asyncio's "Task / Future
  exception was never retrieved", "coroutine ... was never awaited"): hundreds of lines for one
  corrupt checkpoint, which say nothing the one-line warning does not. Orbax is this process's
  only user of asyncio.
  """

  def __init__(self):
    super().__init__()
    self._previous_hook = sys.unraisablehook
    self._warnings = warnings.catch_warnings()
    self._last_quieted = time.monotonic()

  def filter(self, record):
    if 'exception was never retrieved' in record.getMessage():
      self._last_quieted = time.monotonic()
      return False
    return True

  def _unraisablehook(self, unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == 'Event loop is closed'):
      self._last_quieted = time.monotonic()
    else:
      self._previous_hook(unraisable)

  def note_failed_restore(self) -> None:
    """Starts the settling time of `remove` now: the failed restore's reads report from now on."""
    self._last_quieted = time.monotonic()

  def install(self) -> None:
    std_logging.getLogger('asyncio').addFilter(self)
    sys.unraisablehook = self._unraisablehook
    self._warnings.__enter__()  # pylint: disable=unnecessary-dunder-call
    warnings.filterwarnings('ignore', message="coroutine '.*' was never awaited",
                            category=RuntimeWarning)

  def remove(self, settle_s: float = 0.0) -> None:
    """Uninstalls, once nothing was quieted for `settle_s` (waiting at most 10x that): reads
    abandoned just before, as by a run that stops because no checkpoint is readable, report
    for a while after their restore failed."""
    deadline = time.monotonic() + 10 * settle_s
    while time.monotonic() - self._last_quieted < settle_s and time.monotonic() < deadline:
      time.sleep(settle_s / 10)
    gc.collect()  # reports the abandoned reads still waiting for collection, while quiet
    if sys.unraisablehook == self._unraisablehook:  # pylint: disable=comparison-with-callable
      sys.unraisablehook = self._previous_hook
    std_logging.getLogger('asyncio').removeFilter(self)
    self._warnings.__exit__(None, None, None)


class Checkpoints:
  """Periodic saves that keep the last `config.keep_checkpoints`, and restore of the latest
  readable one (an unreadable latest checkpoint falls back to the one before). A context
  manager: leaving the block waits for pending saves and closes the manager.

  Each checkpoint also keeps a small dict of metadata beside the state: what `metadata_fn`
  returns when it is saved (the run's `TrainingClock.reading`), and `restored_metadata` is that
  of the checkpoint `restore_latest` restored ({} if none, or a checkpoint saved without).
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))
    self.metadata_fn: Callable[[], dict[str, Any]] | None = None
    self.restored_metadata: dict[str, Any] = {}
    # Unreadable checkpoints newer than the restored one; set aside before the first save.
    self._unreadable: list[int] = []
    self._restore_noise = None  # installed at the first failed restore, until close()
    self._abandoned = False

  def restore_latest(self, state):
    """Returns the newest readable checkpoint shaped like `state`, or `state` if there is none.

    Raises:
      CheckpointError: there are checkpoints, but none can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    multi_process = jax.process_count() > 1
    if multi_process:  # read as global arrays replicated on every process's devices
      replicated = _replicated_on_all_devices()
      abstract = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(
              np.shape(s), jax.dtypes.canonicalize_dtype(np.result_type(s)), sharding=replicated),
          abstract)  # a Python scalar (the initial step) too: it was saved as an array
    noise = _FailedRestoreNoise()
    noise.install()  # a failed read can report before Orbax raises its error
    restored, self._unreadable = self._restore_newest_readable(abstract)
    if self._unreadable:
      noise.note_failed_restore()
      self._restore_noise = noise  # abandoned reads can report until close()
    else:
      noise.remove()
    if restored is None and self.manager.all_steps():
      raise CheckpointError(
          f'no checkpoint in {self.directory} can be read (see the warnings above); pass '
          '--fresh to move them aside and start over')
    if restored is None:
      return state
    if multi_process:  # this process's copy, like `state`
      restored = jax.tree.map(
          lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, restored)
    return restored

  def _restore_newest_readable(self, abstract):
    """Returns (the newest readable checkpoint or None, the newer unreadable steps)."""
    unreadable = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
            'Checkpoint at step %d in %s is unreadable (%s: %s); trying an older one',
            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        unreadable.append(step)
        continue
      logging.info('Restored checkpoint at step %d from %s', step, self.directory)
      self.restored_metadata = dict(self.manager.metadata(step).custom_metadata or {})
      return restored, unreadable
    return None, unreadable

  def save(self, step: int, state) -> None:
    """Saves asynchronously; `close` waits for pending saves."""
    if self._unreadable:
      self._set_aside_unreadable()
    self.manager.save(step, args=ocp.args.StandardSave(state),
                      custom_metadata=self.metadata_fn() if self.metadata_fn else None)

  def _set_aside_unreadable(self) -> None:
    """Renames the unreadable checkpoints newer than the restored one (never deletes them).

    Orbax skips a save at any step up to its latest step, so while they are in place the
    resumed run would save nothing until it passed them, and a run that ends at such a step
    would leave the unreadable checkpoint as its last.
    """
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for step in self._unreadable if jax.process_index() == 0 else ():
      path = os.path.join(self.directory, str(step))
      os.replace(path, f'{path}.unreadable-{stamp}')
      logging.warning('Moved the unreadable checkpoint %s to %s', path,
                      f'{path}.unreadable-{stamp}')
    _sync_processes('tlb_jax_set_aside_unreadable')
    self._unreadable = []
    self.manager.reload()

  def latest_saved_step(self) -> int | None:
    """The step of the newest complete checkpoint (pending saves finished first)."""
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def abandon(self) -> None:
    """Makes `close` return without waiting for pending saves. A multi-process run whose other
    process died calls it: Orbax's saves wait for every process, so they would never finish."""
    self._abandoned = True

  def close(self) -> None:
    """Waits for pending saves and releases the manager; `with Checkpoints(...)` calls it."""
    if not self._abandoned:
      self.manager.wait_until_finished()
      self.manager.close()
    if self._restore_noise is not None:
      self._restore_noise.remove(settle_s=RESTORE_NOISE_SETTLE_S)
      self._restore_noise = None
