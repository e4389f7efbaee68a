"""The benchmark command, its profile breakdown, and the allocator: which one is loaded, and
tcmalloc by default."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from benchmarks import config_ab
from configs import smoke
from tlb_jax import allocator, benchmark, config_validation, profiling
from tlb_jax.models.tlb import TLB

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smoke config's TLB with one fast-stream layer that also cross-attends: every kind of block
# and the chunk loop, in less compile time than its two layers.
ONE_LAYER_TLB = ('--config.tlb.num_layers=1', '--config.tlb.cross_attention_every=1')


def test_benchmark_command_writes_timings_flops_and_a_train_step_profile(tmp_path):
  """`python -m tlb_jax.benchmark --profile_dir` prints the table and writes JSON with both
  steps' timings and FLOPs and a profile whose largest kinds include the backward scan's
  matmuls."""
  output, trace_dir = tmp_path / 'bench.json', tmp_path / 'trace'
  process = subprocess.run(
      [sys.executable, '-m', 'tlb_jax.benchmark', '--config=configs/smoke.py', *ONE_LAYER_TLB,
       '--repeats=2', '--warmup=1', '--profile_steps=2', f'--profile_dir={trace_dir}',
       f'--output={output}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=540, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert '| train |' in process.stdout and '| backward, in a loop | matmul |' in process.stdout
  result = json.loads(output.read_text())
  for step in ('train', 'eval'):
    assert result[step]['images_per_s'] > 0 and result[step]['gflop_per_image'] > 0
  assert result['train']['gflop_per_image'] > 2 * result['eval']['gflop_per_image']
  assert result['allocator'] in ('system', 'tcmalloc', 'jemalloc')
  profile = result['profile']
  assert profile['step'] == 'train'
  assert abs(sum(row['share'] for row in profile['breakdown']) - 1) < 1e-6
  backward_loop_matmul = [row for row in profile['breakdown']
                          if (row['phase'], row['kind']) == ('backward, in a loop', 'matmul')]
  assert backward_loop_matmul and backward_loop_matmul[0]['ms'] > 0
  assert profile['top_ops'] and all(row['ms'] > 0 for row in profile['top_ops'])
  assert list(trace_dir.rglob('*.xplane.pb'))


def test_benchmark_command_profiles_the_eval_step_when_asked(tmp_path):
  """`--profile_step=eval` traces the eval step: its ops are all forward ones."""
  output = tmp_path / 'bench.json'
  process = subprocess.run(
      [sys.executable, '-m', 'tlb_jax.benchmark', '--config=configs/smoke.py', *ONE_LAYER_TLB,
       '--noflops', '--repeats=1', '--warmup=1', '--profile_steps=1', '--profile_step=eval',
       f'--profile_dir={tmp_path / "trace"}', f'--output={output}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=540, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  profile = json.loads(output.read_text())['profile']
  assert profile['step'] == 'eval'
  phases = {row['phase'] for row in profile['breakdown'] if row['ms'] > 0}
  assert any(phase.startswith('forward') for phase in phases)
  assert not any(phase.startswith('backward') for phase in phases)


class _Program:
  """Stands in for a jax `Lowered` or `Compiled`: `cost_analysis()` gives `cost`."""

  def __init__(self, cost, compiled=None):
    self.cost, self.compiled = cost, compiled

  def cost_analysis(self):
    return self.cost

  def compile(self):
    return self.compiled


def test_flops_come_from_the_compiled_program_where_the_lowered_one_has_no_cost_analysis():
  """On GPU (JAX 0.11.2, H200) `Lowered.cost_analysis()` returns None; the benchmark crashed."""
  assert benchmark._gflops(_Program({'flops': 2e9})) == 2.0
  assert benchmark._gflops(_Program(None, _Program({'flops': 3e9}))) == 3.0
  assert benchmark._gflops(_Program(None, _Program([{'flops': 4e9}]))) == 4.0
  assert np.isnan(benchmark._gflops(_Program(None, _Program(None))))


def test_benchmark_without_flops_times_both_steps_and_prints_dashes_for_the_flop_columns(
    monkeypatch):
  # The matmul that measures the peak, small: its size is not under test here (see
  # test_peak_matmul_is_big_enough_to_hide_launch_overhead_on_accelerators_only).
  monkeypatch.setattr(benchmark, 'peak_matmul_size', lambda backend: 256)
  config = smoke.get_config()
  config.tlb.update(num_layers=1, cross_attention_every=1)  # as ONE_LAYER_TLB
  result = benchmark.benchmark(config, num_classes=10, repeats=1, warmup=1, count_flops=False)
  for step in ('train', 'eval'):
    assert result[step]['images_per_s'] > 0 and 'gflop_per_image' not in result[step]
  assert '| train |' in benchmark.format_table(result)
  assert benchmark.format_table(result).splitlines()[-1].endswith('| - | - | - | - |')


def test_peak_matmul_is_big_enough_to_hide_launch_overhead_on_accelerators_only():
  assert benchmark.peak_matmul_size('cpu') == 2048
  assert benchmark.peak_matmul_size('gpu') == benchmark.peak_matmul_size('tpu') == 8192


def test_self_time_subtracts_the_spans_nested_directly_inside():
  """A loop span of 10 holding body spans of 3 and 4 has self time 3; a span nested two levels
  down counts against its direct parent only."""
  spans = [(0, 10, 'while'), (1, 3, 'body_op'), (5, 4, 'fusion'), (6, 1, 'inner')]
  assert profiling.self_times_of_spans(spans) == {'while': 3, 'body_op': 3, 'fusion': 3,
                                                  'inner': 1}


def test_gaps_between_ops_go_to_the_op_that_ended_last_before_them():
  """A gap after an Eigen dot is that dot's; gaps inside a span holding nested ones are none."""
  spans = [(0, 10, 'dot.1'), (15, 20, 'fusion'), (16, 18, 'nested'), (25, 30, 'dot.1'),
           (30, 31, 'copy'), (40, 41, 'copy')]
  assert profiling.gaps_between_spans(spans, {'dot.1'}) == {'after an Eigen matmul': 5,
                                                            'other': 14}


def test_idle_time_counts_the_threads_that_run_the_step_only(tmp_path):
  """A thread busy with ops 8 of its 12 ps counts its gaps; one that starts an op at each end of
  the trace and waits between them does not."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  plane = space.planes.add(name='/host:CPU')
  for metadata_id, name in enumerate(['dot.1', 'add.2'], start=1):
    plane.event_metadata[metadata_id].name = name
  for line_name, events in (('worker', [(0, 4, 1), (6, 4, 2), (12, 0, 2)]),
                            ('client', [(0, 1, 2), (11, 1, 2)])):
    line = plane.lines.add(name=line_name)
    for offset, duration, metadata_id in events:
      line.events.add(offset_ps=offset * 10**9, duration_ps=duration * 10**9,
                      metadata_id=metadata_id)
  path = tmp_path / 'trace.xplane.pb'
  path.write_bytes(space.SerializeToString())
  hlo = '\n'.join(['ENTRY %main (p: f32[4,4]) -> f32[4,4] {',
                   '  %dot.1 = f32[4,4] dot(%p, %p), metadata={op_name="jit(f)/dot"}',
                   '  ROOT %add.2 = f32[4,4] add(%dot.1, %p), metadata={op_name="jit(f)/add"}',
                   '}'])
  assert profiling.idle_times_ms(profiling.read_trace(str(path)), hlo, num_steps=2) == {
      'after an Eigen matmul': 1.0, 'other': 1.0}


def test_breakdown_adds_the_time_between_ops_as_its_own_phase():
  hlo = '\n'.join(['ENTRY %main (p: f32[4,4]) -> f32[4,4] {',
                   '  ROOT %a = f32[4,4] add(%p, %p), metadata={op_name="jit(f)/add"}', '}'])
  rows = profiling.breakdown({'a': 1.0}, hlo, {'after an Eigen matmul': 3.0})
  assert [(r['phase'], r['kind'], r['share']) for r in rows] == [
      (profiling.BETWEEN_OPS, 'after an Eigen matmul', 0.75),
      ('forward, outside loops', 'other', 0.25)]


def test_classify_ops_finds_scan_matmuls_backward_and_dropout_random_bits():
  """In the compiled gradient of a TLB with dropout, some ops are backward matmuls in the chunk
  loop, some forward matmuls in it, and some the dropout's random bits."""
  model = TLB(num_classes=10, patch_size=4, embed_dim=16, chunk_size=4, num_latents=2,
              num_layers=2, num_heads=2, mlp_ratio=2, dropout_rate=0.1)
  images = np.zeros((2, 16, 16, 3), np.float32)
  # Shapes only: the gradient is compiled, never run.
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          images)['params']

  def loss(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': jax.random.PRNGKey(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, np.zeros(2, np.int32)).mean()

  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  classes = set(profiling.classify_ops(hlo).values())
  assert ('backward, in a loop', 'matmul') in classes
  assert ('forward, in a loop', 'matmul') in classes
  assert any(kind == 'dropout' for _, kind in classes)


def test_top_ops_lists_the_steps_ops_by_self_time_with_their_source_path():
  """Ops missing from the HLO (runtime spans) are left out; the source loses its jit prefix."""
  hlo = '\n'.join([
      'ENTRY %main (p: f32[4,4]) -> f32[4,4] {',
      '  %a = f32[4,4] dot(%p, %p), metadata={op_name="pmap(step)/jit(main)/jvp(m)/dot"}',
      '  %b = f32[4,4] add(%a, %a), metadata={op_name="pmap(step)/jit(main)/jvp(m)/add"}',
      '  ROOT %c = f32[4,4] copy(%b)', '}'])
  rows = profiling.top_ops({'a': 1.0, 'b': 3.0, 'c': 0.5, 'gone': 9.0}, hlo, count=2)
  assert [(r['op'], r['kind'], r['source']) for r in rows] == [
      ('b', 'other', 'jvp(m)/add'), ('a', 'matmul', 'jvp(m)/dot')]
  np.testing.assert_allclose([r['share'] for r in rows], [3 / 4.5, 1 / 4.5])


def test_breakdown_groups_op_times_by_phase_and_kind_largest_first():
  """Ops of one (phase, kind) are summed; ops missing from the HLO are reported, not dropped."""
  hlo = '\n'.join([
      'ENTRY %main (p: f32[4,4]) -> f32[4,4] {',
      '  %a = f32[4,4] dot(%p, %p), metadata={op_name="jit(f)/transpose(jvp(m))/while/body/dot"}',
      '  %b = f32[4,4] add(%a, %a), metadata={op_name="jit(f)/jvp(m)/add"}',
      '  ROOT %c = f32[4,4] dot(%b, %b), metadata={op_name="jit(f)/transpose(jvp(m))/while/x"}',
      '}'])
  rows = profiling.breakdown({'a': 2.0, 'b': 1.0, 'c': 3.0, 'gone': 2.0}, hlo)
  assert [(r['phase'], r['kind'], r['ms']) for r in rows] == [
      ('backward, in a loop', 'matmul', 5.0), ("not in the step's HLO", 'other', 2.0),
      ('forward, outside loops', 'other', 1.0)]
  np.testing.assert_allclose([r['share'] for r in rows], [0.625, 0.25, 0.125])


def test_preloaded_allocator_is_read_from_the_process_memory_map(tmp_path):
  """tcmalloc or jemalloc mapped into the process is reported by name; otherwise 'system'."""
  maps = tmp_path / 'maps'
  maps.write_text('7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n')
  assert allocator.preloaded_allocator(str(maps)) == 'tcmalloc'
  maps.write_text('7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n')
  assert allocator.preloaded_allocator(str(maps)) == 'system'
  assert allocator.preloaded_allocator(str(tmp_path / 'missing')) == 'system'


def _maps_with(tmp_path, library):
  maps = tmp_path / 'maps'
  maps.write_text(f'7f00-7f10 r-xp 0 08:01 1 {library}\n')
  return str(maps)


def test_a_process_on_the_system_malloc_restarts_with_installed_tcmalloc_preloaded(tmp_path):
  library = tmp_path / 'libtcmalloc_minimal.so.4'
  library.write_bytes(b'')
  environment = allocator.tcmalloc_environment(
      {'LD_PRELOAD': '/opt/other.so', 'HOME': '/root'},
      maps_path=_maps_with(tmp_path, '/usr/lib/x86_64-linux-gnu/libc.so.6'),
      candidates=(str(tmp_path / 'absent.so'), str(library)))
  assert environment == {'LD_PRELOAD': f'{library} /opt/other.so', 'HOME': '/root',
                         allocator.RESTARTED: '1'}


@pytest.mark.parametrize('environ, loaded, installed', [
    ({allocator.OPT_OUT: 'system'}, 'libc.so.6', True),   # the user opted out
    ({allocator.RESTARTED: '1'}, 'libc.so.6', True),      # the preload did not take
    ({}, 'libtcmalloc_minimal.so.4', True),               # already preloaded
    ({}, 'libjemalloc.so.2', True),                       # another fast malloc is loaded
    ({}, 'libc.so.6', False),                             # tcmalloc is not installed
], ids=['opted_out', 'restarted_once', 'tcmalloc_loaded', 'jemalloc_loaded', 'not_installed'])
def test_a_process_carries_on_as_it_is(tmp_path, environ, loaded, installed):
  library = tmp_path / 'libtcmalloc_minimal.so.4'
  if installed:
    library.write_bytes(b'')
  assert allocator.tcmalloc_environment(
      environ, maps_path=_maps_with(tmp_path, f'/usr/lib/{loaded}'),
      candidates=(str(library),)) is None


@pytest.mark.skipif(allocator.installed_tcmalloc() is None, reason='tcmalloc is not installed')
@pytest.mark.parametrize('opt_out, expected', [(None, 'tcmalloc'), ('system', 'system')])
def test_use_tcmalloc_restarts_the_command_under_it_unless_opted_out(opt_out, expected):
  """A command that calls `use_tcmalloc` first runs (as the same command line) under tcmalloc;
  with TLB_JAX_MALLOC=system it stays on the system malloc."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', allocator.OPT_OUT, allocator.RESTARTED)}
  if opt_out:
    env[allocator.OPT_OUT] = opt_out
  script = ('import sys; from tlb_jax import allocator; allocator.use_tcmalloc(); '
            'print(allocator.preloaded_allocator(), sys.argv[1:])')
  process = subprocess.run([sys.executable, '-c', script, 'an', 'argument'], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=60, check=True)
  assert process.stdout.split('\n')[0] == f"{expected} ['an', 'argument']"


# Every command that restarts itself under tcmalloc: main.py and the modules run with -m.
RESTARTING_COMMANDS = sorted(
    str(path.relative_to(REPO_ROOT))
    for pattern in ('main.py', 'tlb_jax/*.py', 'benchmarks/*.py')
    for path in pathlib.Path(REPO_ROOT).glob(pattern)
    if 'allocator.use_tcmalloc()' in path.read_text())


def test_restarting_commands_are_found():
  assert {'main.py', 'tlb_jax/benchmark.py', 'benchmarks/config_ab.py'} <= set(
      RESTARTING_COMMANDS)


@pytest.mark.parametrize('path', RESTARTING_COMMANDS)
def test_each_command_restarts_under_tcmalloc_before_importing_jax_or_tensorflow(path):
  """The restart runs the command's imports again: JAX, TensorFlow and Keras take seconds."""
  run = (f"runpy.run_path('{path}', run_name='__main__')" if path == 'main.py' else
         f"runpy.run_module('{path[:-3].replace('/', '.')}', run_name='__main__')")
  script = ('import runpy, sys\n'
            'from tlb_jax import allocator\n'
            'def restart():\n'
            "  print(sorted({'jax', 'tensorflow', 'keras'} & set(sys.modules)))\n"
            '  raise SystemExit(0)\n'
            'allocator.use_tcmalloc = restart\n'
            + run)
  process = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-2000:]
  assert process.stdout.strip() == '[]'


@pytest.mark.parametrize('model_name', ['vit', 'perceiver'])
def test_sweep_runs_a_baseline_with_the_tlbs_tokens_width_and_depth(model_name):
  """A swept ViT or Perceiver reads the TLB's patches with its width, heads and number of
  blocks (the Perceiver: the TLB's latents as its latent array), and is a valid config."""
  config = smoke.get_config()
  swept = benchmark.sweep_config(config, model_name, image_size=32, batch_size=4)
  section, tlb = swept[model_name], config.tlb
  for field in ('patch_size', 'tokenizer', 'embed_dim', 'num_heads', 'mlp_ratio', 'num_layers'):
    assert section[field] == tlb[field], field
  if model_name == 'perceiver':
    assert section.num_latents == tlb.num_latents
  assert (swept.model, swept.image_size, swept.batch_size) == (model_name, 32, 4)
  config_validation.validate(swept)


def test_sweep_times_the_train_step_of_every_model_at_every_size():
  """One row per model and image size, in that order, with its token count and a positive
  throughput."""
  config = smoke.get_config()
  config.tlb.update(num_layers=1, cross_attention_every=1)
  rows = benchmark.sweep(config, num_classes=10, image_sizes=[8, 16], batch_size=2,
                         models=['perceiver', 'vit'], repeats=1, warmup=1)
  assert [(r['model'], r['tokens']) for r in rows] == [
      ('perceiver', 4), ('perceiver', 16), ('vit', 4), ('vit', 16)]
  assert all(r['images_per_s'] > 0 and r['us_per_token'] > 0 for r in rows)


def test_config_ab_overrides_dotted_fields_with_literals_or_strings_and_leaves_the_base():
  base = smoke.get_config()
  changed = config_ab.with_overrides(
      base, ['tlb.remat=dots_activations', 'batch_size=64', 'learning_rate=2e-3'])
  assert (changed.tlb.remat, changed.batch_size, changed.learning_rate) == (
      'dots_activations', 64, 2e-3)
  assert (base.tlb.remat, base.batch_size) == (smoke.get_config().tlb.remat,
                                               smoke.get_config().batch_size)


@pytest.mark.parametrize('override', ['tlb.remmat=full', 'batch_size'])
def test_config_ab_rejects_an_unknown_field_or_a_missing_value(override):
  with pytest.raises(SystemExit, match='error: '):
    config_ab.with_overrides(smoke.get_config(), [override])


def _clocked_runners(monkeypatch, seconds: dict) -> tuple[dict, list[str]]:
  """Runners {name: callable} that each advance a fake `time.perf_counter` by `seconds[name]`
  per call, and the list they append their names to as they run."""
  clock, calls = [0.0], []
  monkeypatch.setattr(config_ab.time, 'perf_counter', lambda: clock[0])

  def runner(name):
    def run():
      calls.append(name)
      clock[0] += seconds[name]
    return run

  return {name: runner(name) for name in seconds}, calls


def test_time_pairs_interleaves_the_two_steps_call_by_call(monkeypatch, capsys):
  runners, calls = _clocked_runners(monkeypatch, {'a': 1.0, 'b': 1.0})
  config_ab.time_pairs(runners, {'a': 1, 'b': 1}, pairs=2, repeats=3, warmup=1)
  assert ''.join(calls) == 'ab' + 'abbaab' + 'baabba'
  assert capsys.readouterr().out.count('pair ') == 2


def test_time_pairs_reports_the_second_steps_speed_over_the_firsts(monkeypatch, capsys):
  """B takes half A's time per call on twice A's batch: 4x A's images/s."""
  runners, _ = _clocked_runners(monkeypatch, {'a': 0.2, 'b': 0.1})
  config_ab.time_pairs(runners, {'a': 10, 'b': 20}, pairs=1, repeats=4, warmup=0)
  output = capsys.readouterr().out
  assert 'pair 0: a 50.0, b 200.0, ratio b/a 4.000' in output
  assert 'median ratio b/a: 4.000' in output


def test_config_ab_times_the_eval_step_of_both_settings_when_asked(monkeypatch, capsys):
  """`--step=eval` times each setting's eval step, and neither runs nor compiles its train
  step."""
  calls = []

  def steps_of(config, num_classes, compile_train_now):
    del num_classes
    remat = config.tlb.remat
    assert not compile_train_now
    return (lambda: calls.append(('train', remat)), lambda: calls.append(('eval', remat)), {})

  monkeypatch.setattr(config_ab.benchmark, 'pmapped_steps', steps_of)
  monkeypatch.setattr(config_ab, 'use_trainer_devices', lambda config: None)
  config_ab.main(['--config=smoke', '--batch_size=8', '--step=eval', '--b=tlb.remat=full',
                  '--pairs=1', '--repeats=2', '--warmup=0'])
  assert {step for step, _ in calls} == {'eval'}
  assert {remat for _, remat in calls} == {'dots', 'full'}
  assert 'eval images/s' in capsys.readouterr().out


def test_pmapped_steps_can_leave_the_train_step_uncompiled_until_its_first_use(monkeypatch):
  """An eval A/B compiles no train step: building the steps compiles nothing, and running the
  eval step compiles that one program."""
  compiled = []
  compile_lowered = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, 'compile',
                      lambda self, *args: compiled.append(self) or compile_lowered(self, *args))
  config = smoke.get_config()
  config.tlb.update(num_layers=1, cross_attention_every=1)  # as ONE_LAYER_TLB
  config.batch_size = 4
  _, run_eval, _ = benchmark.pmapped_steps(config, num_classes=10, compile_train_now=False)
  assert not compiled
  run_eval()
  assert len(compiled) == 1


def test_each_loop_segment_is_compared_with_the_step_timed_on_either_side_of_it():
  """A machine slowing down from 600 to 400 images/s: a loop segment run between step timings
  of 600 and 500 at 550 images/s runs at 100% of its step, as does the next at 450."""
  assert benchmark.segment_ratios([550.0, 450.0], [600.0, 500.0, 400.0]) == [1.0, 1.0]


def test_the_loops_step_time_counts_every_call_a_slow_one_too(monkeypatch):
  """Calls of 1, 1 and 4 s (after a warm-up call that is not counted) take 2 s each on
  average, as a loop of them would; their median, 1 s, would leave the slow call out."""
  clock = iter([0.0, 6.0])
  monkeypatch.setattr(benchmark.time, 'perf_counter', lambda: next(clock))
  calls = []
  assert benchmark.mean_seconds(lambda: calls.append(1), repeats=3, warmup=1) == 2.0
  assert len(calls) == 4


def test_segment_ratios_need_one_step_timing_more_than_segments():
  with pytest.raises(ValueError, match='2 segments need 3 step timings'):
    benchmark.segment_ratios([550.0, 450.0], [600.0, 500.0])
