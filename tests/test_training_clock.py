"""The run's training clock: seconds and segments summed across resumes, pauses left out."""

from tlb_jax.training_clock import SECONDS, SEGMENTS, TrainingClock


class FakeTime:
  """A clock the test moves by hand."""

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def test_a_segment_counts_from_its_start_with_paused_blocks_left_out():
  now = FakeTime()
  clock = TrainingClock.resumed_from({}, step=0, now=now)
  now.t += 5.0  # before the start: setup and compilation of the data, not counted
  assert clock.seconds == 0.0 and clock.segments == 0
  clock.start()
  now.t += 10.0
  with clock.paused():
    now.t += 3.0
  now.t += 2.0
  assert clock.seconds == 12.0
  assert clock.reading() == {SECONDS: 12.0, SEGMENTS: 1}


def test_a_resumed_clock_adds_to_the_reading_of_its_checkpoint():
  now = FakeTime()
  clock = TrainingClock.resumed_from({SECONDS: 100.0, SEGMENTS: 2}, step=40, now=now)
  assert clock.segments == 2  # no step trained yet in this segment
  clock.start()
  now.t += 25.0
  assert clock.reading() == {SECONDS: 125.0, SEGMENTS: 3}
  assert clock.results(last_step=80, batch_size=10) == {
      'train_wall_time_s': 125.0, 'train_segments': 3, 'train_images_per_s': 800 / 125.0}


def test_a_checkpoint_without_a_reading_counts_the_steps_after_it_only():
  now = FakeTime()
  clock = TrainingClock.resumed_from({}, step=40, now=now)
  clock.start()
  now.t += 20.0
  assert clock.results(last_step=80, batch_size=10) == {
      'train_wall_time_s': 20.0, 'train_segments': 1, 'train_images_per_s': 400 / 20.0}


def test_a_run_that_trained_nothing_reports_no_speed():
  clock = TrainingClock.resumed_from({SECONDS: 0.0, SEGMENTS: 0}, step=0, now=FakeTime())
  assert clock.results(last_step=0, batch_size=10)['train_images_per_s'] is None
