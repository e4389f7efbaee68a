"""`benchmarks.xla_flags_ab`: each side's flags become compile options of its own compilation,
and a flag that is not XLA's, or one XLA rejects, stops the A/B with a one-line error."""

import pytest

from benchmarks import xla_flags_ab
from configs import smoke


def test_flags_become_typed_compile_options_the_later_winning():
  assert xla_flags_ab.compiler_options(
      ['--xla_cpu_a=1', '--xla_cpu_b=A,B', '--xla_cpu_c=false', '--xla_cpu_d=0.5',
       '--xla_cpu_a=2', '--xla_cpu_e=True']) == {
          'xla_cpu_a': 2, 'xla_cpu_b': 'A,B', 'xla_cpu_c': False, 'xla_cpu_d': 0.5,
          'xla_cpu_e': True}


@pytest.mark.parametrize('flag', ['--config.batch_size=64', '--xla_cpu_fast_math'])
def test_a_flag_that_is_not_xla_name_value_is_refused(flag, capsys):
  with pytest.raises(SystemExit):
    xla_flags_ab.parse_args([f'--b={flag}'])
  assert 'is not an XLA flag' in capsys.readouterr().err


def test_a_flag_xla_rejects_stops_the_ab_naming_it():
  config = smoke.get_config()
  with pytest.raises(SystemExit, match='error: XLA did not compile with --xla_bogus_option=1'):
    xla_flags_ab.compile_steps(config, ['--xla_bogus_option=1'])


def test_each_side_compiles_with_its_own_flags():
  """With the YNNPACK fusion list emptied, the train step has none of XLA's YNNPACK fusions."""
  config = smoke.get_config()
  config.tlb.update(num_layers=1, cross_attention_every=1)
  _, _, plain = xla_flags_ab.compile_steps(config, [])
  _, _, without = xla_flags_ab.compile_steps(config, ['--xla_cpu_experimental_ynn_fusion_type='])
  assert '__ynn_fusion' in plain['train']() and '__ynn_fusion' not in without['train']()
