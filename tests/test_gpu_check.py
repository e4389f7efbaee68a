"""benchmarks/gpu_check.py: its command line, and (slow) a dry run on CPU without the packages a
GPU machine may lack."""

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a GPU machine with only JAX, flax, optax and orbax lacks.
MISSING = 'tensorflow,tensorflow_datasets,clu,ml_collections,PIL,matplotlib'


def _run(*args, timeout=60):
  return subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check', *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_command_line_explains_itself():
  """--help prints its description; an unknown argument or a bad value is one `error:` line
  and exit 2."""
  process = _run('--help')
  assert process.returncode == 0 and '--dry-run' in process.stdout
  process = _run('--bogus')
  assert process.returncode == 2
  assert process.stderr.strip() == 'error: unrecognized arguments: --bogus (see --help)'
  process = _run('--budget-s', 'soon')
  assert process.returncode == 2
  assert process.stderr.strip() == ("error: argument --budget-s: invalid float value: 'soon' "
                                    '(see --help)')


def test_items_past_the_budget_are_skipped_and_listed(tmp_path):
  """With no time left, no item starts: summary.json lists each one, most important first, with
  why it was skipped, and the run still succeeds."""
  process = _run('--dry-run', '--budget-s', '0', '--out', str(tmp_path))
  assert process.returncode == 0, process.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [item['kind'] for item in summary['items']] == ['step', 'loop', 'scaling']
  assert all(item['skipped'].startswith('budget: ') for item in summary['items'])
  assert sorted(path.name for path in tmp_path.iterdir()) == ['summary.json']


@pytest.mark.slow
def test_dry_run_measures_every_kind_of_item_with_stand_ins(tmp_path):
  """A dry run (smoke config, batch 8, 2 loop steps) on the test's two CPU devices, with
  TensorFlow, TFDS, clu, ml_collections, PIL and matplotlib hidden: the stand-ins are used, and
  summary.json holds a step, a loop and a scaling item with their figures."""
  out = tmp_path / 'out'
  process = _run('--dry-run', '--out', str(out), '--hide-modules', MISSING, timeout=900)
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['dry_run'] and summary['backend'] == 'cpu'
  assert set(summary['standins']) == set(MISSING.split(',')) - {'tensorflow'}
  items = {item['kind']: item for item in summary['items']}
  assert set(items) == {'step', 'loop', 'scaling'}
  assert all('result' in item for item in summary['items']), summary['items']
  assert items['step']['result']['train']['images_per_s'] > 0
  loop = items['loop']['result']
  assert loop['loop_images_per_s'] > 0 and loop['step_images_per_s'] > 0
  assert [row['devices'] for row in items['scaling']['result']['rows']] == [1, 2]
  assert (out / 'step_smoke_f32_b8.json').exists()
