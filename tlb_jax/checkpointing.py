"""Orbax checkpoints of the TrainState under `workdir/checkpoints`."""

import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
  """Periodic saves that keep the last `config.keep_checkpoints`, and restore of the latest
  readable one (an unreadable latest checkpoint falls back to the one before)."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))

  def restore_latest(self, state):
    """Returns the newest readable checkpoint shaped like `state`, or `state` if there is none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); trying an older one',
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      logging.info('Restored checkpoint at step %d from %s', step, self.directory)
      return restored
    return state

  def save(self, step: int, state) -> None:
    """Saves asynchronously; `close` waits for pending saves."""
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
