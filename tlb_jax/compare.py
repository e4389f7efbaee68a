"""`--mode=compare`: several runs side by side, a table of their final figures and a picture of
their validation top-1 against training time, read from their workdirs."""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tlb_jax import plots, run_files, training_clock

# For runs that did not log their training seconds: a pause between two events longer than
# this is time the run was not running (stopped, then resumed), and does not count.
RESUME_GAP_S = 600.0


@dataclasses.dataclass(frozen=True)
class RunCurve:
  """A run's validation top-1 (N,) against its training wall-clock minutes (N,)."""

  minutes: np.ndarray
  accuracy: np.ndarray


def training_minutes(wall_times: Sequence[float]) -> np.ndarray:
  """Minutes since the first event at each of `wall_times` (sorted, in seconds), with the time
  between a stop and its resume (gaps over RESUME_GAP_S) left out."""
  times = np.asarray(wall_times, np.float64)
  if not len(times):
    return times
  gaps = np.diff(times, prepend=times[0])
  return np.cumsum(np.where(gaps > RESUME_GAP_S, 0.0, gaps)) / 60.0


def read_curve(workdir: str) -> RunCurve:
  """The run's per-epoch validation top-1 against training minutes, from its events.

  The minutes are the run's training seconds logged with each validation (all segments,
  validation passes left out: `training_clock`); runs of older tlb-jax versions, which did
  not log them, are placed by the events' wall times (`training_minutes`).
  """
  records = plots.read_scalar_records(workdir)
  minutes = training_minutes([wall_time for wall_time, _, _, _ in records])
  accuracy, clock, wall = {}, {}, {}  # by step; a step logged twice keeps its last value
  for (_, tag, step, value), minute in zip(records, minutes):
    if tag == 'eval_accuracy':
      accuracy[step], wall[step] = value, minute
    elif tag == training_clock.SECONDS:
      clock[step] = value / 60.0
  steps = sorted(accuracy)
  timed = clock if all(step in clock for step in steps) else wall
  return RunCurve(minutes=np.array([timed[step] for step in steps]),
                  accuracy=np.array([accuracy[step] for step in steps]))


COLUMNS = (  # (results.json field, column title, format)
    ('model', 'model', '{}'),
    ('dataset', 'dataset', '{}'),
    ('num_params', 'parameters', '{:,}'),
    ('epochs', 'epochs', '{:.1f}'),
    ('train_wall_time_s', 'train min', lambda s: f'{s / 60:.1f}'),
    ('train_images_per_s', 'train img/s', '{:.0f}'),
    ('test_images_per_s', 'test img/s', '{:.0f}'),
    ('eval_top1', 'val top-1', '{:.2%}'),
    ('eval_top5', 'val top-5', '{:.2%}'),
    ('test_top1', 'test top-1', '{:.2%}'),
    ('test_top5', 'test top-5', '{:.2%}'),
)


def _cell(value: Any, fmt) -> str:
  if value is None:
    return '-'
  return fmt(value) if callable(fmt) else fmt.format(value)


def results_table(names: Sequence[str], results: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of the runs' final figures, one row per run ('-': not in results.json)."""
  header = ['run'] + [title for _, title, _ in COLUMNS]
  rows = [[name] + [_cell(result.get(field), fmt) for field, _, fmt in COLUMNS]
          for name, result in zip(names, results)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def run_figures(workdir: str) -> tuple[str, dict[str, Any]]:
  """The run's name in the table and its results.json; for a run still training (a config.json
  but no results.json yet), the name marked unfinished and only its model and dataset.

  Raises:
    run_files.WorkdirError: a workdir does not exist, or is not a training run's.
  """
  run_files.check_workdir(workdir)
  name = os.path.basename(os.path.normpath(workdir))
  config = (None if os.path.exists(run_files.results_path(workdir))
            else run_files.saved_config(workdir))
  if config is None:
    return name, run_files.load_results(workdir)  # a WorkdirError where there is none
  return f'{name} (unfinished)', {'model': config.get('model'),
                                  'dataset': config.get('dataset', '?')}


def compare(workdirs: Sequence[str], output: str) -> str:
  """Draws the runs' validation curves into `output` (PNG) and returns their results table.
  A run still training is drawn up to its last validation and has no final figures; runs of
  one model on one dataset (seeds) share a colour.

  Raises:
    run_files.WorkdirError: a workdir does not exist, or is not a training run's.
  """
  names, results, curves, groups = [], [], {}, {}
  for workdir in workdirs:
    name, result = run_figures(workdir)
    names.append(name)
    results.append(result)
    curve = read_curve(workdir)
    curves[name] = (curve.minutes, curve.accuracy)
    if result.get('model'):
      groups[name] = f"{result['model']} {result.get('dataset')}"
  datasets = sorted({result.get('dataset', '?') for result in results})
  plots.save_png(plots.plot_runs(curves, title=' / '.join(datasets), groups=groups), output)
  return results_table(names, results)
