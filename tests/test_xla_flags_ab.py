"""`benchmarks.xla_flags_ab`: each side's flags reach its benchmark process, and a flag that is
not XLA's, or one XLA rejects, stops the A/B with a one-line error."""

import sys

import pytest

from benchmarks import xla_flags_ab


def test_side_flags_follow_the_callers_xla_flags():
  environ = xla_flags_ab.with_xla_flags({'XLA_FLAGS': '--xla_a=1', 'HOME': '/h'}, ['--xla_b=2'])
  assert environ == {'XLA_FLAGS': '--xla_a=1 --xla_b=2', 'HOME': '/h'}


def test_no_side_flags_keep_the_callers_xla_flags():
  assert xla_flags_ab.with_xla_flags({}, [])['XLA_FLAGS'] == ''


def test_a_flag_that_is_not_xlas_is_refused(capsys):
  with pytest.raises(SystemExit):
    xla_flags_ab.parse_args(['--b=--config.batch_size=64'])
  assert 'is not an XLA flag' in capsys.readouterr().err


def test_a_failed_benchmark_process_names_its_flags(tmp_path, capsys):
  failing = [sys.executable, '-c', 'import sys; print("bad flag"); sys.exit(1)']
  with pytest.raises(SystemExit, match='--xla_bogus=1'):
    xla_flags_ab.measure(failing, {'XLA_FLAGS': '--xla_bogus=1'}, str(tmp_path / 'result.json'))
  assert 'bad flag' in capsys.readouterr().err


def test_benchmark_command_times_the_named_config_without_counting_flops():
  command = xla_flags_ab.benchmark_command('cifar10', 128, 5, 2, '/tmp/r.json')
  assert command[1:] == ['-m', 'tlb_jax.benchmark', '--config=configs/cifar10.py',
                         '--config.batch_size=128', '--noflops', '--repeats=5', '--warmup=2',
                         '--output=/tmp/r.json']
