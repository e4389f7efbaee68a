"""Throughput of the real train and eval steps, against this machine's measured matmul peak.

  python -m tlb_jax.benchmark --config=configs/cifar10_seed.py --config.batch_size=256
  python -m tlb_jax.benchmark --config=configs/cifar10_seed.py --sweep   # tokens sweep, 3 models
  python -m tlb_jax.benchmark --config=configs/cifar10_seed.py --profile_dir=/tmp/trace  # + where
      # the train step's time goes (tlb_jax.profiling); --profile_step=eval for the eval step
  python -m tlb_jax.benchmark --config=configs/cifar10.py --noflops  # timings only: two
      # compiles fewer (on a GPU one train-step compile can take most of a minute)

Times the pmapped `train.train_step` (augmentation included) and `evaluation.eval_step` on random
uint8 batches: warm-up calls excluded, the median of `--repeats` calls reported. FLOPs come
from XLA's cost analysis of the same step lowered with the chunk scan fully unrolled and
without remat (XLA counts a while-loop body once), so they are the model's FLOPs and
recomputation counts as overhead. The peak is a large f32 / bf16 matmul timed in the same run.
"""

import copy
import functools
import json
import sys
import time

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import jax_utils
from ml_collections import config_flags

from tlb_jax import (config_validation, evaluation, host_devices, input_pipeline,
                     profiling, train, train_state)
from tlb_jax.models import MODELS, create_model, layers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/cifar10_seed.py', 'Config to benchmark.',
                                lock_config=False)
flags.DEFINE_integer('repeats', 10, 'Timed calls per measurement (the median is reported).')
flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing (the first one compiles).')
flags.DEFINE_integer('num_classes', 10, 'Logits of the benchmarked model.')
flags.DEFINE_bool('sweep', False, 'Sweep the number of tokens for --sweep_models instead.')
flags.DEFINE_list('sweep_image_sizes', ['32', '48', '96', '144', '192'],
                  'Image sizes for --sweep (tokens = (size / patch_size) ** 2).')
flags.DEFINE_integer('sweep_batch_size', 32, 'Global batch size for --sweep.')
flags.DEFINE_list('sweep_models', ['tlb', 'vit', 'perceiver'], 'Models for --sweep, at the '
                  'width/depth of the config\'s TLB (see `sweep_config`).')
flags.register_validator('sweep_models', lambda names: set(names) <= set(MODELS),
                         f'--sweep_models takes names from {", ".join(MODELS)}')
flags.DEFINE_string('output', None, 'Write the results as JSON here.')
flags.DEFINE_string('profile_dir', None, 'Also trace --profile_steps calls of the '
                    '--profile_step step with jax.profiler into this directory (TensorBoard '
                    'profile plugin) and print where their time goes: forward/backward, in the '
                    'chunk scan or not, matmuls, dropout, the rest; and its costliest ops.')
flags.DEFINE_enum('profile_step', 'train', ['train', 'eval'], 'The step --profile_dir traces.')
flags.DEFINE_integer('profile_steps', 3, 'Calls traced with --profile_dir.')
flags.DEFINE_integer('loop_steps', 0, 'Also time this many steps of the training loop on '
                     'generated data (`loop_throughput`) against its step; 0: do not.')
flags.DEFINE_integer('loop_segments', 3, 'With --loop_steps: segments of the loop, each '
                     'compared with the step timed right before and after it.', lower_bound=1)
flags.DEFINE_bool('flops', True, 'Count FLOPs and the fraction of peak; this compiles the '
                  'unrolled train and eval steps too, which --noflops skips (timings only).')


def median_seconds(fn, repeats: int, warmup: int) -> float:
  """Median wall time of `fn()` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def mean_seconds(fn, repeats: int, warmup: int) -> float:
  """Wall time of `repeats` consecutive calls of `fn()` (which must block until its result is
  ready) over `repeats`: every call counts, a slow one too, as in a loop's images/s."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def peak_matmul_size(backend: str) -> int:
  """Side of the square matmul that measures the peak. An accelerator does a 2048-matmul in
  microseconds, so launch overhead would hide most of its peak; at 8192 a CPU would take
  seconds per product."""
  return 2048 if backend == 'cpu' else 8192


def matmul_peak(dtype, size: int | None = None, repeats: int = 10) -> float:
  """Measured GFLOP/s of a (size x size) @ (size x size) matmul in `dtype` (random operands:
  some accelerators run constant ones faster); `size` defaults to `peak_matmul_size`."""
  size = size or peak_matmul_size(jax.default_backend())
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  seconds = median_seconds(lambda: matmul(a).block_until_ready(), repeats, warmup=2)
  return 2 * size**3 / seconds / 1e9


def unrolled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same model with the chunk scan fully unrolled and no remat, for FLOP counting."""
  config = copy.deepcopy(config)
  model = config[config.model]
  if 'scan_unroll' in model:
    model.scan_unroll = 1 << 20  # clamped to the number of chunks
  if 'remat' in model:
    model.remat = 'none'
  return config


def synthetic_batch(batch_size: int, num_classes: int, mask: bool) -> dict:
  """A fixed random batch of 32x32 uint8 images and int32 labels (and an all-True 'mask')."""
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
           'label': rng.integers(0, num_classes, (batch_size,)).astype(np.int32)}
  if mask:
    batch['mask'] = np.ones((batch_size,), bool)
  return batch


def _steps(config, num_classes: int):
  model = create_model(config, num_classes)
  learning_rate_fn = train_state.create_learning_rate_fn(config, 100, 1000)
  state = train_state.create_train_state(jax.random.PRNGKey(0), model, config.image_size,
                                   train_state.create_optimizer(config, learning_rate_fn))
  return state, train.make_train_step(config, learning_rate_fn), evaluation.make_eval_step(config,
                                                                                   model)


def step_gflops(config, batch_size: int, num_classes: int) -> dict[str, float]:
  """GFLOPs of one train step and one eval step on `batch_size` images (XLA cost analysis)."""
  state, train_step, eval_step = _steps(unrolled(config), num_classes)
  # vmap over a size-1 axis named 'batch' gives the collectives their axis without pmap.
  one = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  train_batch = one(synthetic_batch(batch_size, num_classes, mask=False))
  eval_batch = one(synthetic_batch(batch_size, num_classes, mask=True))
  lowered_train = jax.jit(jax.vmap(train_step, axis_name='batch')).lower(one(state), train_batch)
  lowered_eval = jax.jit(jax.vmap(eval_step, axis_name='batch')).lower(one(state.params),
                                                                     eval_batch)
  return {'train': _gflops(lowered_train), 'eval': _gflops(lowered_eval)}


def _gflops(lowered) -> float:
  """GFLOPs by XLA's cost analysis: of the lowered program where the backend analyses it
  unoptimized (CPU), else of the compiled one (GPU gives None for the lowered); NaN if neither."""
  cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # one entry per program in older JAX versions
    cost = cost[0] if cost else None
  return cost['flops'] / 1e9 if cost and 'flops' in cost else float('nan')


def pmapped_steps(config, num_classes: int, devices=None, compiler_options=None,
                  compile_train_now: bool = True):
  """Blocking zero-argument callables running the pmapped train and eval steps on fixed
  batches, and {'train': f, 'eval': f}, functions giving each compiled step's HLO text.
  `devices`: the local devices to run on (default: all). `compiler_options`: XLA options
  ({'xla_cpu_...': value}, as XLA_FLAGS names them without '--') for these two compilations
  only. The train step compiles here (callers that patch the model compile it inside their
  patch), or with `compile_train_now=False` on its first use, as the eval step always does."""
  devices = devices or jax.local_devices()
  state, train_step, eval_step = _steps(config, num_classes)
  shard = lambda b: {k: v.reshape((len(devices), -1) + v.shape[1:]) for k, v in b.items()}
  train_batch = shard(synthetic_batch(config.batch_size, num_classes, mask=False))
  eval_batch = shard(synthetic_batch(config.batch_size, num_classes, mask=True))
  replicated = {'state': jax_utils.replicate(state, devices, axis_name='batch')}
  # Compiled ahead of time (not by jit on a call) so that the profile reads the HLO of the
  # very program it traces.
  @functools.cache
  def p_train():
    return jax.pmap(train_step, axis_name='batch', donate_argnums=(0,), devices=devices).lower(
        replicated['state'], train_batch).compile(compiler_options)

  @functools.cache
  def p_eval():
    return jax.pmap(eval_step, axis_name='batch', devices=devices).lower(
        replicated['state'].params, eval_batch).compile(compiler_options)

  if compile_train_now:
    p_train()

  def run_train():
    replicated['state'], step_metrics = p_train()(replicated['state'], train_batch)
    jax.block_until_ready((replicated['state'], step_metrics))

  def run_eval():
    jax.block_until_ready(p_eval()(replicated['state'].params, eval_batch))

  return run_train, run_eval, {'train': lambda: p_train().as_text(),
                               'eval': lambda: p_eval().as_text()}


def measure(batch_size: int, steps: dict, repeats: int, warmup: int) -> dict[str, dict]:
  """Times each of `steps` ({name: blocking callable from `pmapped_steps`}) on `batch_size`
  images."""
  results = {}
  for name, fn in steps.items():
    seconds = median_seconds(fn, repeats, warmup)
    results[name] = {'ms_per_step': seconds * 1e3, 'images_per_s': batch_size / seconds}
  return results


def loop_throughput(config, num_classes: int, num_steps: int, log_every: int = 50,
                    repeats: int = 10, warmup: int = 2, segments: int = 3) -> dict:
  """Images/s of the training loop on generated data, against its step's.

  Drives the loop step as `train._train_and_test` does between checkpoints: batches of
  `input_pipeline.train_batches` on a generated split, prefetched to the devices, dispatched
  by `train.dispatch_steps`, the carry read at every `log_every`-th step while the next step
  runs, and once at the end of each segment (which waits for every step). Validation,
  checkpoints and TensorBoard writes are left out. The loop runs in `segments` segments of
  num_steps / segments steps, and the step is timed (`repeats` calls of the same compiled step
  on one batch already on the devices, each waited for) before the first segment, after a
  warm-up loop, and after each segment: a shared machine's speed drifts within a minute by
  more than the loop's own cost, so each segment is compared with the mean of the step's
  figures right before and right after it, and 'loop_over_step' is the median of those
  ratios. The step is timed as the loop is, over every call (`mean_seconds`), not by a
  median: on a shared machine one call in seven can take a third longer.
  """
  devices = jax.local_device_count()
  model = create_model(config, num_classes)
  learning_rate_fn = train_state.create_learning_rate_fn(config, 100, 1000)
  state = train_state.create_train_state(jax.random.PRNGKey(0), model, config.image_size,
                                         train_state.create_optimizer(config, learning_rate_fn))
  holder = {'state': jax_utils.replicate(state, axis_name='batch')}
  p_loop_step = train.make_loop_step(config, learning_rate_fn)
  rng = np.random.default_rng(0)
  num_examples = 4 * config.batch_size
  split = input_pipeline.Split(
      images=rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8),
      labels=rng.integers(0, num_classes, (num_examples,)).astype(np.int32))
  batches = jax_utils.prefetch_to_device(train.with_stop_signal(
      (input_pipeline.shard(b, devices)
       for b in input_pipeline.train_batches(split, config.batch_size, config.seed)), [],
      devices), 2)
  empty = train.empty_carry()
  fixed = next(batches)

  def one_step():
    holder['state'], carry = p_loop_step(holder['state'], empty, fixed)
    jax.block_until_ready((holder['state'], carry))

  def run(state, num_steps):
    carry, pending, step = empty, None, 0
    while step < num_steps:
      until = min(num_steps, (step // log_every + 1) * log_every)
      state, carry, step = train.dispatch_steps(p_loop_step, state, carry, batches, step,
                                                step + 1 if pending else until, [])
      if pending is not None:
        train.fetch(pending)
        pending = None
        if step < until:
          state, carry, step = train.dispatch_steps(p_loop_step, state, carry, batches, step,
                                                    until, [])
      if step < num_steps:
        jax.tree.map(lambda x: x.copy_to_host_async(), carry)
        pending, carry = carry, carry.replace(metrics=empty.metrics)
    train.fetch(carry)
    return state

  holder['state'] = run(holder.pop('state'), min(num_steps, log_every))  # a warm pipeline
  segment_steps = max(1, num_steps // segments)
  step_images_per_s = [config.batch_size / mean_seconds(one_step, repeats, warmup)]
  loop_seconds = []
  for _ in range(segments):
    start = time.perf_counter()
    holder['state'] = run(holder.pop('state'), segment_steps)
    loop_seconds.append(time.perf_counter() - start)
    step_images_per_s.append(config.batch_size / mean_seconds(one_step, repeats, warmup=0))
  loop_images_per_s = [segment_steps * config.batch_size / s for s in loop_seconds]
  ratios = segment_ratios(loop_images_per_s, step_images_per_s)
  steps_run = segment_steps * segments
  return {'batch_size': config.batch_size, 'steps': steps_run, 'log_every_steps': log_every,
          'step_images_per_s': float(np.mean(step_images_per_s)),
          'loop_images_per_s': steps_run * config.batch_size / sum(loop_seconds),
          'loop_over_step': float(np.median(ratios)),
          'segment_loop_images_per_s': loop_images_per_s,
          'segment_loop_over_step': ratios,
          'step_images_per_s_around_segments': step_images_per_s}


def segment_ratios(loop_images_per_s: list[float], step_images_per_s: list[float]) -> list[float]:
  """Each loop segment's images/s over the mean of the step's images/s timed right before and
  right after it (`step_images_per_s` has one figure more than `loop_images_per_s`)."""
  if len(step_images_per_s) != len(loop_images_per_s) + 1:
    raise ValueError(f'{len(loop_images_per_s)} segments need {len(loop_images_per_s) + 1} step '
                     f'timings, got {len(step_images_per_s)}')
  return [loop / ((before + after) / 2) for loop, before, after
          in zip(loop_images_per_s, step_images_per_s, step_images_per_s[1:])]


def pmap_scaling(config, num_classes: int, per_device_batch: int, device_counts,
                 repeats: int, warmup: int) -> list[dict]:
  """Train-step images/s on the first n local devices for each n of `device_counts`, with
  `per_device_batch` images per device; `efficiency` is against n times the first count's
  per-device figure."""
  rows = []
  for n in device_counts:
    c = copy.deepcopy(config)
    c.batch_size = c.eval_batch_size = n * per_device_batch
    run_train, _, _ = pmapped_steps(c, num_classes, devices=jax.local_devices()[:n])
    rows.append({'devices': n, 'batch_size': c.batch_size,
                 **measure(c.batch_size, {'train': run_train}, repeats, warmup)['train']})
  base = rows[0]['images_per_s'] / rows[0]['devices']
  for row in rows:
    row['efficiency'] = row['images_per_s'] / (row['devices'] * base)
  return rows


def profile_step(run_step, hlo_text: str, log_dir: str, num_steps: int) -> dict[str, list]:
  """Traces `num_steps` warm calls of `run_step` (whose compiled HLO is `hlo_text`) into
  `log_dir`; returns {'breakdown': `profiling.breakdown` rows, 'top_ops': `profiling.top_ops`
  rows}."""
  trace = profiling.read_trace(profiling.capture(run_step, num_steps, log_dir))
  op_ms = profiling.self_times_ms(trace, num_steps)
  return {'breakdown': profiling.breakdown(op_ms, hlo_text,
                                           profiling.idle_times_ms(trace, hlo_text, num_steps)),
          'top_ops': profiling.top_ops(op_ms, hlo_text)}


def benchmark(config, num_classes: int, repeats: int, warmup: int,
              profile_dir: str | None = None, profile_steps: int = 3,
              count_flops: bool = True, profiled_step: str = 'train') -> dict:
  """The full table for one config: peaks, step times and (with `count_flops`) FLOPs and the
  fraction of peak; with `profile_dir`, also 'profile', where the time of `profiled_step`
  ('train' or 'eval') goes (`profile_step`)."""
  config_validation.validate(config, jax.local_device_count())
  compute_dtype = np.dtype(layers.resolve_dtype(config.dtype)).name
  peaks = {'float32': matmul_peak(jnp.float32), 'bfloat16': matmul_peak(jnp.bfloat16)}
  gflops = step_gflops(config, config.batch_size, num_classes) if count_flops else None
  run_train, run_eval, hlo_texts = pmapped_steps(config, num_classes)
  runners = {'train': run_train, 'eval': run_eval}
  timings = measure(config.batch_size, runners, repeats, warmup)
  peak = peaks.get(compute_dtype, peaks['float32'])
  if gflops:
    for name, row in timings.items():
      row['gflop_per_image'] = gflops[name] / config.batch_size
      row['gflop_per_s'] = gflops[name] / (row['ms_per_step'] / 1e3)
      row['peak_fraction'] = row['gflop_per_s'] / peak
      row['compute_limit_images_per_s'] = peak / row['gflop_per_image']
  result = {
      'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
      'local_devices': jax.local_device_count(), 'model': config.model,
      'allocator': allocator.preloaded_allocator(),
      'batch_size': config.batch_size, 'compute_dtype': compute_dtype,
      'matmul_peak_gflop_per_s': peaks, **timings,
  }
  if profile_dir:
    result['profile'] = {'step': profiled_step, 'traced_calls': profile_steps,
                         **profile_step(runners[profiled_step], hlo_texts[profiled_step](),
                                        profile_dir, profile_steps)}
  return result


# The fields a baseline shares with the TLB in --sweep: same tokens, width, heads and MLP.
_SHARED_WITH_TLB = ('patch_size', 'tokenizer', 'embed_dim', 'num_heads', 'mlp_ratio',
                    'dropout_rate', 'attention_dropout_rate')


def sweep_config(config, model_name: str, image_size: int,
                 batch_size: int) -> ml_collections.ConfigDict:
  """`config` at `image_size` and `batch_size`, running `model_name` at the width and depth of
  its TLB: a ViT of as many layers; a Perceiver with the TLB's latents as its latent array and
  its layers as the latent tower, run `perceiver.num_iterations` times as the config says (2 by
  default, with shared weights)."""
  base = config.tlb
  c = copy.deepcopy(config)
  c.unlock()
  c.model = model_name
  shared = {k: base[k] for k in _SHARED_WITH_TLB}
  if model_name == 'vit':
    c.vit = ml_collections.ConfigDict({**shared, 'num_layers': base.num_layers})
  elif model_name == 'perceiver':
    c.perceiver.update(shared, num_latents=base.num_latents, num_layers=base.num_layers,
                       head_dim=None)
  c.image_size = c.resize_size = image_size
  c.batch_size = c.eval_batch_size = batch_size
  return c


def sweep(config, num_classes: int, image_sizes, batch_size: int, models, repeats: int,
          warmup: int) -> list[dict]:
  """Train-step throughput against sequence length for each of `models` ('tlb', 'vit',
  'perceiver') at the width/depth of the config's TLB (`sweep_config`)."""
  rows = []
  for model_name in models:
    for size in image_sizes:
      c = sweep_config(config, model_name, size, batch_size)
      tokens = (size // config.tlb.patch_size) ** 2
      run_train, _, _ = pmapped_steps(c, num_classes)
      timing = measure(batch_size, {'train': run_train}, repeats, warmup)['train']
      row = {'model': model_name, 'image_size': size, 'tokens': tokens, **timing,
             'us_per_token': timing['ms_per_step'] * 1e3 / (batch_size * tokens)}
      rows.append(row)
      print(f"{model_name:9s} {size:4d}px {tokens:5d} tokens  {row['images_per_s']:9.1f} img/s  "
            f"{row['us_per_token']:8.3f} us/token", flush=True)
  return rows


def format_table(result: dict) -> str:
  lines = [f"{result['model']} on {result['device']} ({result['backend']}, "
           f"{result['local_devices']} devices, {result['allocator']} malloc), "
           f"batch {result['batch_size']}, "
           f"{result['compute_dtype']}; matmul peak f32 "
           f"{result['matmul_peak_gflop_per_s']['float32']:.0f} GFLOP/s, bf16 "
           f"{result['matmul_peak_gflop_per_s']['bfloat16']:.0f} GFLOP/s",
           '| step | images/s | ms/step | GFLOP/image | GFLOP/s | of peak | compute limit img/s |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for name in ('train', 'eval'):
    r = result[name]
    flops = (f"{r['gflop_per_image']:.3f} | {r['gflop_per_s']:.0f} | "
             f"{100 * r['peak_fraction']:.0f}% | {r['compute_limit_images_per_s']:.0f}"
             if 'gflop_per_image' in r else '- | - | - | -')
    lines.append(f"| {name} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | {flops} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  # The train and eval steps are timed at one batch size.
  batch_size = FLAGS.sweep_batch_size if FLAGS.sweep else config.batch_size
  try:  # before JAX's backend starts, as in main.py
    host_devices.use_one_device_per_core(batch_size, batch_size, config.microbatch_size)
  except host_devices.DeviceCountError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if FLAGS.profile_dir:
    # Per-op spans on CPU; must be set before the backend starts. Spans are recorded only
    # while the trace runs, after the timing.
    profiling.enable_cpu_op_tracing()
  if FLAGS.sweep:
    result = {'sweep': sweep(config, FLAGS.num_classes, [int(s) for s in FLAGS.sweep_image_sizes],
                             FLAGS.sweep_batch_size, FLAGS.sweep_models, FLAGS.repeats,
                             FLAGS.warmup)}
  else:
    try:
      result = benchmark(config, FLAGS.num_classes, FLAGS.repeats, FLAGS.warmup,
                         FLAGS.profile_dir, FLAGS.profile_steps, FLAGS.flops,
                         FLAGS.profile_step)
    except config_validation.ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    if FLAGS.loop_steps:
      result['loop'] = loop_throughput(config, FLAGS.num_classes, FLAGS.loop_steps,
                                       config.log_every_steps, FLAGS.repeats, FLAGS.warmup,
                                       FLAGS.loop_segments)
    print(format_table(result))
    if 'loop' in result:
      loop = result['loop']
      segments = ', '.join(f'{100 * r:.1f}%' for r in loop['segment_loop_over_step'])
      print(f"loop: {loop['loop_images_per_s']:.0f} images/s over {loop['steps']} steps; each "
            f"segment against the step timed on either side of it: {segments} (median "
            f"{100 * loop['loop_over_step']:.1f}%)")
    if 'profile' in result:
      print(f'\nWhere the {FLAGS.profile_step} step\'s time goes ({FLAGS.profile_steps} traced '
            f'calls; trace in {FLAGS.profile_dir}):')
      print(profiling.format_breakdown(result['profile']['breakdown']))
      print('\nIts costliest ops:')
      print(profiling.format_top_ops(result['profile']['top_ops']))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
