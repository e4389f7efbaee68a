"""Throughput checks for a GPU machine, in one command of under 8 minutes:

  python -m benchmarks.gpu_check [--out DIR] [--budget-s 400]
  python -m benchmarks.gpu_check --dry-run   # CPU rehearsal: smoke config, batch 8, 2 steps

Items, most important first, each skipped if it would not end within the budget: the train and
eval steps (tlb_jax.benchmark, timings only) of configs/cifar10.py and configs/cifar10_48px.py
in bfloat16 and float32 at batch 128, 512 and 2048; the whole training loop on generated data
against the same step timed alone (benchmark.loop_throughput: input pipeline, prefetching, the
loop's reads of its metrics); with more than one GPU, pmap scaling at 128 images per device.
DIR (default gpu_check_out/) gets summary.json (each item's figures, its error, or why it was
skipped) and one JSON per item (step items as `python -m tlb_jax.benchmark --output` writes).

The machine needs JAX, flax, optax and orbax-checkpoint. TFDS, clu, ml_collections, PIL and
matplotlib, where not installed, are replaced by stand-ins (benchmarks/standins.py) before
tlb_jax is imported. --hide-modules A,B rehearses a machine without those packages (stand-ins
for them, ImportError for any other, such as tensorflow).
"""

import argparse
import importlib
import json
import pathlib
import signal
import sys
import time
import traceback
from types import SimpleNamespace

NUM_CLASSES = 10
FULL = SimpleNamespace(
    configs=('cifar10', 'cifar10_48px'), dtypes=('bfloat16', 'float32'), batches=(128, 512, 2048),
    repeats=20, warmup=3, loop_steps=300, log_every=50, scaling_per_device=128,
    more_loops=(('cifar10', 'bfloat16', 2048), ('cifar10_48px', 'bfloat16', 512)))
DRY_RUN = SimpleNamespace(configs=('smoke',), dtypes=('float32',), batches=(8,), repeats=2,
                          warmup=1, loop_steps=2, log_every=1, scaling_per_device=4, more_loops=())


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.gpu_check', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  # One line rather than argparse's usage block.
  parser.error = lambda message: parser.exit(2, f'error: {message} (see --help)\n')
  parser.add_argument('--out', default='gpu_check_out', metavar='DIR', help='for the JSON')
  parser.add_argument('--budget-s', type=float, default=400, metavar='S',
                      help='seconds for all items')
  parser.add_argument('--dry-run', action='store_true', help='the CPU rehearsal')
  parser.add_argument('--hide-modules', type=lambda names: [n for n in names.split(',') if n],
                      default=[], metavar='A,B', help='packages to treat as missing')
  return parser.parse_args(argv)


def plan(settings, num_devices: int) -> list[tuple[str, str, str, int]]:
  """(kind, config, dtype, batch size) of every item, most important first."""
  first = (settings.configs[0], settings.dtypes[0], settings.batches[0])
  items = [('step', *first), ('loop', *first)]
  if num_devices > 1:
    items.append(('scaling', *first[:2], settings.scaling_per_device))
  items += [('step', c, d, b) for d in settings.dtypes for c in settings.configs
            for b in settings.batches if ('step', c, d, b) not in items]
  return items + [('loop', *loop) for loop in settings.more_loops]


def measure(benchmark, settings, kind: str, name: str, dtype: str, batch: int,
            num_devices: int) -> dict:
  """One item's figures from `tlb_jax.benchmark` (passed in: it imports only after the
  stand-ins are in place)."""
  config = importlib.import_module(f'configs.{name}').get_config()
  config.dtype = dtype
  config.batch_size = config.eval_batch_size = batch
  timing = {'repeats': settings.repeats, 'warmup': settings.warmup}
  if kind == 'step':
    return benchmark.benchmark(config, NUM_CLASSES, count_flops=False, **timing)
  if kind == 'loop':
    return benchmark.loop_throughput(config, NUM_CLASSES, settings.loop_steps, settings.log_every,
                                     **timing)
  return {'rows': benchmark.pmap_scaling(config, NUM_CLASSES, batch, sorted({1, num_devices}),
                                         **timing)}


def one_line(kind: str, result: dict) -> str:
  if kind == 'step':
    return (f"train {result['train']['images_per_s']:.0f} img/s, "
            f"eval {result['eval']['images_per_s']:.0f} img/s")
  if kind == 'loop':
    return (f"loop {result['loop_images_per_s']:.0f} img/s = {100 * result['loop_over_step']:.1f}%"
            f" of the step's {result['step_images_per_s']:.0f}")
  return ', '.join(f"{row['devices']} dev {row['images_per_s']:.0f} img/s "
                   f"({100 * row['efficiency']:.0f}%)" for row in result['rows'])


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.monotonic()
  signal.alarm(int(args.budget_s) + 60)  # the budget stops starting items; this ends a hang
  out = pathlib.Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  # pylint: disable=import-outside-toplevel  (tlb_jax must come after the stand-ins)
  from benchmarks import standins
  stand_ins = standins.install(hidden=args.hide_modules)
  print(f'stand-ins: {",".join(stand_ins) or "none"}', flush=True)
  import jax
  from tlb_jax import benchmark

  settings = DRY_RUN if args.dry_run else FULL
  summary = {'jax': jax.__version__, 'backend': jax.default_backend(),
             'devices': [str(d.device_kind) for d in jax.local_devices()],
             'dry_run': args.dry_run, 'standins': stand_ins, 'budget_s': args.budget_s,
             'items': []}
  took = {}  # kind -> the longest an item of that kind took
  for kind, name, dtype, batch in plan(settings, jax.local_device_count()):
    label = f'{kind}_{name}_{"bf16" if dtype == "bfloat16" else "f32"}_b{batch}'
    entry = {'item': label, 'kind': kind, 'config': f'configs/{name}.py', 'dtype': dtype,
             'batch_size': batch}
    elapsed, expected = time.monotonic() - start, took.get(kind, 60.0)
    if elapsed + expected > args.budget_s:
      entry['skipped'] = f'budget: {elapsed:.0f} s used, about {expected:.0f} s needed'
      print(f'{label}: skipped ({entry["skipped"]})', flush=True)
    else:
      started = time.monotonic()
      try:
        entry['result'] = measure(benchmark, settings, kind, name, dtype, batch,
                                  jax.local_device_count())
        (out / f'{label}.json').write_text(json.dumps(entry['result'], indent=2))
      except Exception as e:  # pylint: disable=broad-except  (out of memory at 2048: go on)
        traceback.print_exc()
        entry['error'] = f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:300]}'
      entry['seconds'] = time.monotonic() - started
      took[kind] = max(took.get(kind, 0.0), entry['seconds'])
      line = one_line(kind, entry['result']) if 'result' in entry else f'error {entry["error"]}'
      print(f'{label}: {line} [{entry["seconds"]:.0f} s]', flush=True)
    summary['items'].append(entry)
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
  summary['total_s'] = time.monotonic() - start
  (out / 'summary.json').write_text(json.dumps(summary, indent=2))
  print(f'wrote {out / "summary.json"} in {summary["total_s"]:.0f} s')
  return 1 if any('error' in entry for entry in summary['items']) else 0


if __name__ == '__main__':
  sys.exit(main())
