"""The training time of a whole run, summed over its segments and kept with its checkpoints.

A run that is stopped and resumed trains in segments: one per start of `main.py` that trains at
least one step. Each checkpoint records the training seconds and the number of segments up to
its step (`TrainingClock.reading`, saved as the checkpoint's metadata), and a resumed run starts
its clock from the reading of the checkpoint it restored. So the run's `train_wall_time_s` and
`train_images_per_s` cover every segment, and leave out the time between segments, the
validation passes, and the work of a killed segment after its last checkpoint (those steps are
trained again, and counted once).
"""

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from absl import logging

SECONDS = 'train_seconds'
SEGMENTS = 'train_segments'


@dataclasses.dataclass
class TrainingClock:
  """Training seconds and segments of a run: the earlier segments' (restored from a checkpoint)
  plus the current segment's, from `start` on, less the time spent in `paused` blocks."""

  earlier_seconds: float = 0.0
  earlier_segments: int = 0
  first_counted_step: int = 0  # > 0 after a checkpoint that recorded no time
  now: Callable[[], float] = time.monotonic
  _started_at: float | None = None
  _paused_seconds: float = 0.0

  @classmethod
  def resumed_from(cls, reading: dict[str, Any], step: int, **kwargs) -> 'TrainingClock':
    """A clock continuing the `reading` of the checkpoint of `step` (step 0: a new run).

    A checkpoint saved without a reading (by an older tlb-jax) starts the count at its step.
    """
    if step > 0 and SECONDS not in reading:
      logging.warning('The checkpoint of step %d records no training time; the training time '
                      'and speed in results.json will cover the steps after it only', step)
      return cls(first_counted_step=step, **kwargs)
    return cls(earlier_seconds=float(reading.get(SECONDS, 0.0)),
               earlier_segments=int(reading.get(SEGMENTS, 0)), **kwargs)

  def start(self) -> None:
    """Starts this segment (call it once, when its first step is about to run)."""
    self._started_at = self.now()

  @property
  def running(self) -> bool:
    return self._started_at is not None

  @contextlib.contextmanager
  def paused(self):
    """A block whose time does not count (a validation pass)."""
    entered_at = self.now()
    try:
      yield
    finally:
      self._paused_seconds += self.now() - entered_at

  @property
  def seconds(self) -> float:
    """Training seconds of every segment so far."""
    if self._started_at is None:
      return self.earlier_seconds
    return self.earlier_seconds + self.now() - self._started_at - self._paused_seconds

  @property
  def segments(self) -> int:
    """The number of segments so far, this one included once it has started."""
    return self.earlier_segments + (1 if self.running else 0)

  def reading(self) -> dict[str, Any]:
    """What a checkpoint saved now records: {SECONDS: float, SEGMENTS: int}."""
    return {SECONDS: self.seconds, SEGMENTS: self.segments}

  def results(self, last_step: int, batch_size: int) -> dict[str, Any]:
    """results.json's training figures for a run that ended at `last_step`: the training
    seconds of all its segments, images per second over them, and how many there were."""
    seconds = self.seconds
    images = (last_step - self.first_counted_step) * batch_size
    return {'train_wall_time_s': seconds, 'train_segments': self.segments,
            'train_images_per_s': images / seconds if seconds > 0 and images > 0 else None}

