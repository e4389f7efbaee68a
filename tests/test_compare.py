"""`--mode=compare`: the runs' final figures as a table and their validation curves against
training time."""

import os
import shutil

import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

import trained_run
from test_main import _error_lines, _main
from tlb_jax import compare, plots, run_files


def test_training_minutes_leave_out_the_pause_between_a_stop_and_its_resume():
  """Minutes count from the first event; a gap longer than RESUME_GAP_S counts as zero."""
  gap = compare.RESUME_GAP_S + 1
  minutes = compare.training_minutes([100.0, 160.0, 220.0, 220.0 + gap, 280.0 + gap])
  np.testing.assert_allclose(minutes, [0.0, 1.0, 2.0, 2.0, 3.0])


def test_results_table_has_a_row_per_run_and_a_dash_for_missing_figures():
  table = compare.results_table(
      ['tlb', 'vit'],
      [{'model': 'tlb', 'num_params': 379338, 'epochs': 62.0, 'train_wall_time_s': 6000.0,
        'test_top1': 0.8549}, {'model': 'vit'}])
  lines = table.splitlines()
  assert len(lines) == 4
  assert lines[0].startswith('| run | model | dataset | parameters | epochs | train min |')
  assert lines[2].startswith('| tlb | tlb | - | 379,338 | 62.0 | 100.0 | ')
  assert '| 85.49% |' in lines[2]
  assert lines[3].startswith('| vit | vit | - | - |')


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """The shared trained workdir and a copy of it under another name."""
  run = trained_run.trained_workdir(tmp_path_factory)
  other = str(tmp_path_factory.mktemp('other') / 'second_run')
  shutil.copytree(run, other)
  return run, other


def test_read_curve_places_validations_at_the_training_seconds_logged_with_them(tmp_path):
  """Each validation's minutes are the training seconds logged with it, whatever the events'
  wall times (here both written within a second)."""
  writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  for step, seconds, accuracy in ((100, 90.0, 0.3), (200, 150.0, 0.5)):
    writer.write_scalars(step, {'eval_accuracy': accuracy, 'train_seconds': seconds})
  writer.close()
  curve = compare.read_curve(str(tmp_path))
  np.testing.assert_allclose(curve.minutes, [1.5, 2.5])
  np.testing.assert_allclose(curve.accuracy, [0.3, 0.5])


def test_read_curve_gives_one_validation_point_per_epoch_in_increasing_time(two_runs):
  """A trained run logs its training seconds with every validation; the curve uses them."""
  curve = compare.read_curve(two_runs[0])
  assert len(curve.accuracy) == trained_run.config().num_epochs
  assert (np.diff(curve.minutes) >= 0).all() and (curve.accuracy <= 1).all()
  scalars = plots.read_scalars(two_runs[0])
  assert sorted(scalars['train_seconds']) == sorted(scalars['eval_accuracy'])
  np.testing.assert_allclose(curve.minutes, np.array(list(scalars['train_seconds'].values())) / 60)


def test_compare_mode_prints_the_table_and_draws_the_curves(two_runs, tmp_path):
  """python main.py --mode=compare prints one row per workdir and writes the PNG."""
  output = str(tmp_path / 'compare.png')
  process = _main('--mode=compare', f'--workdirs={",".join(two_runs)}', f'--output={output}',
                  timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  rows = [line for line in process.stdout.splitlines() if line.startswith('| ')]
  assert len(rows) == 4  # the header, its rule and the two runs
  assert rows[3].startswith('| second_run | tlb | cifar10 |')
  with Image.open(output) as image:
    assert image.mode == 'RGB' and image.size[0] > 0


def test_a_run_still_training_is_drawn_so_far_and_has_no_final_figures(two_runs, tmp_path):
  running = str(tmp_path / 'running')
  shutil.copytree(two_runs[0], running)
  os.remove(os.path.join(running, 'results.json'))
  table = compare.compare([two_runs[0], running], str(tmp_path / 'compare.png'))
  last_row = table.splitlines()[-1]
  assert last_row.startswith('| running (unfinished) | tlb | cifar10 | - |')
  assert last_row.count('| - ') == len(compare.COLUMNS) - 2
  assert os.path.getsize(tmp_path / 'compare.png') > 0


def test_a_directory_that_is_not_a_training_run_is_an_error(tmp_path):
  with pytest.raises(run_files.WorkdirError, match='results.json is missing'):
    compare.compare([str(tmp_path)], str(tmp_path / 'compare.png'))


def test_compare_mode_without_workdirs_is_one_error_line(tmp_path):
  process = _main('--mode=compare', f'--output={tmp_path / "x.png"}', timeout=120)
  assert process.returncode == 2
  assert _error_lines(process.stderr) == [
      'error: --mode=compare needs --workdirs=A,B,...; the other modes take one --workdir']
