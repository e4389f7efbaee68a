r"""A/B of two settings of a config: the train (or eval) step's images/s of each, in interleaved
pairs.

  python -m benchmarks.config_ab --b=tlb.remat=dots_activations            # configs/cifar10.py
  python -m benchmarks.config_ab --config=cifar10_seed --a=tlb.variant=paper \
      --b=tlb.variant=paper --b=tlb.remat=full --batch_size=256
  python -m benchmarks.config_ab --step=eval --b=tlb.scan_unroll=1

A and B are the config (a module of configs/) with their `--a` / `--b` overrides (`field=value`,
dotted fields, values read as Python literals or else as strings). Each is the pmapped
`tlb_jax.train.train_step` (augmentation included) or, with `--step=eval`,
`tlb_jax.evaluation.eval_step` (the central view, with its metrics) that `tlb_jax.benchmark`
times, compiled once in this process, on one fixed random batch of `--batch_size` images, both
on the host devices `main.py` would train A on.
Each pair runs `--repeats` calls of each, interleaved call by call (`time_pairs`), so that the
drift of a shared machine's speed falls on both; compare the ratios, not figures of other runs.
"""

import argparse
import ast
import importlib
import time
from unittest import mock

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax
import numpy as np

from tlb_jax import benchmark, config_validation, host_devices
from tlb_jax.models import layers

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


def use_trainer_devices(config) -> None:
  """Starts JAX with the host devices `main.py` would train `config` on (one per core unless
  the batch sizes or `TLB_JAX_CPU_DEVICES` say otherwise); call before any computation."""
  host_devices.use_one_device_per_core(config.batch_size, config.eval_batch_size,
                                       config.microbatch_size)


def time_layer_versions(args: argparse.Namespace, attribute: str, versions: dict,
                        description: str) -> None:
  """Times the train step of `configs/<args.config>` at `args.batch_size` with
  `tlb_jax.models.layers.<attribute>` replaced by each of `versions` ({name: replacement}, the
  baseline first), in interleaved pairs (`time_pairs`), on the trainer's host devices; each
  step is compiled before any is timed. `description` goes into the printed header. `args`
  from `shared_overrides_ab_parser`: its `--set` overrides apply to every version."""
  config = importlib.import_module(f'configs.{args.config}').get_config()
  config.batch_size = config.eval_batch_size = args.batch_size
  config = with_overrides(config, args.set)
  use_trainer_devices(config)
  config_validation.validate(config, jax.local_device_count())
  runners = {}
  for name, version in versions.items():
    with mock.patch.object(layers, attribute, version):
      runners[name], _, _ = benchmark.pmapped_steps(config, NUM_CLASSES[config.dataset])
  overrides = ''.join(f' {override}' for override in args.set)
  print(f'configs/{args.config}.py{overrides}, batch {args.batch_size}, '
        f'{jax.local_device_count()} devices, {allocator.preloaded_allocator()} malloc; '
        f'{description}; train images/s:', flush=True)
  time_pairs(runners, dict.fromkeys(runners, args.batch_size), args.pairs, args.repeats,
             args.warmup)


def step_ab_parser(module: str, description: str, pairs: int = 3) -> argparse.ArgumentParser:
  """The arguments of every train-step A/B in benchmarks/ (`python -m benchmarks.<module>`):
  the config, its batch, and the pairs' timing (`time_pairs`)."""
  parser = argparse.ArgumentParser(prog=f'python -m benchmarks.{module}', description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='cifar10', help='a module of configs/')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--pairs', type=int, default=pairs)
  parser.add_argument('--repeats', type=int, default=10, help='timed calls per measurement')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls before the first')
  return parser


def add_step_argument(parser: argparse.ArgumentParser) -> None:
  """`--step`: the step an A/B times, 'train' (the default) or 'eval'."""
  parser.add_argument('--step', choices=('train', 'eval'), default='train',
                      help='the step timed: training or evaluation (`evaluation.eval_step`)')


def shared_overrides_ab_parser(module: str, description: str,
                               pairs: int = 3) -> argparse.ArgumentParser:
  """`step_ab_parser` and `--set`, overrides of the config for both sides of the A/B (the two
  versions of a layer in `time_layer_versions`)."""
  parser = step_ab_parser(module, description, pairs)
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='an override of the config for both sides, as in config_ab '
                      '(repeat the flag for several)')
  return parser


def layer_versions_main(module: str, description: str, option: str, versions: dict,
                        argv=None) -> None:
  """Runs an A/B of layer versions: `--<option>` picks an entry of `versions` ({choice:
  (attribute of tlb_jax.models.layers, the baseline put in its place)}, the first the default)
  and `time_layer_versions` times that baseline against the model's own version."""
  parser = shared_overrides_ab_parser(module, description)
  parser.add_argument(f'--{option}', choices=sorted(versions), default=next(iter(versions)))
  args = parser.parse_args(argv)
  choice = getattr(args, option)
  attribute, baseline = versions[choice]
  time_layer_versions(args, attribute, {'baseline': baseline,
                                        'shipped': getattr(layers, attribute)},
                      f'--{option}={choice}')


def parse_args(argv=None) -> argparse.Namespace:
  parser = step_ab_parser('config_ab', __doc__)
  add_step_argument(parser)
  parser.add_argument('--a', action='append', default=[], metavar='FIELD=VALUE',
                      help="A's overrides (repeat the flag for several)")
  parser.add_argument('--b', action='append', default=[], metavar='FIELD=VALUE',
                      help="B's overrides (repeat the flag for several)")
  return parser.parse_args(argv)


def with_overrides(config, overrides: list[str]):
  """`config` with each 'field=value' of `overrides` set (dotted fields: 'tlb.remat=full').

  Raises:
    SystemExit: an override is not FIELD=VALUE, or names a field the config lacks.
  """
  known = config_validation.dotted_fields(config)
  config = config.copy_and_resolve_references()
  for override in overrides:
    field, sep, text = override.partition('=')
    if not sep:
      raise SystemExit(f'error: {override!r} is not FIELD=VALUE')
    if field not in known:
      raise SystemExit(f'error: {field!r} is not a field of the config')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *sections, name = field.split('.')
    section = config
    for key in sections:
      section = section[key]
    section[name] = value
  return config


def time_pairs(runners: dict, batch_sizes: dict, pairs: int, repeats: int, warmup: int) -> None:
  """Times two steps ({name: blocking callable}, the baseline first) in `pairs` pairs of
  `repeats` calls each, interleaved call by call (A B, B A, A B, ...), so that a slow spell of a
  shared machine, which lasts seconds, falls on both. Prints each pair's images/s (the median
  call of each) and its ratio (second over first: the median of its rounds' ratios), then the
  median ratio of all rounds. `batch_sizes`: {name: images per call}."""
  first, second = runners
  for name in (first, second):
    for _ in range(warmup):
      runners[name]()
  all_ratios = []
  for pair in range(pairs):
    seconds = {first: [], second: []}
    for call in range(repeats):
      for name in ((first, second) if (pair * repeats + call) % 2 == 0 else (second, first)):
        start = time.perf_counter()
        runners[name]()
        seconds[name].append(time.perf_counter() - start)
    rate = {name: batch_sizes[name] / np.array(times) for name, times in seconds.items()}
    ratios = rate[second] / rate[first]
    all_ratios.extend(ratios)
    print(f'pair {pair}: {first} {np.median(rate[first]):.1f}, {second} '
          f'{np.median(rate[second]):.1f}, ratio {second}/{first} {np.median(ratios):.3f}',
          flush=True)
  print(f'median ratio {second}/{first}: {np.median(all_ratios):.3f}')


def main(argv=None):
  args = parse_args(argv)
  base = importlib.import_module(f'configs.{args.config}').get_config()
  base.batch_size = base.eval_batch_size = args.batch_size
  configs = {'A': with_overrides(base, args.a), 'B': with_overrides(base, args.b)}
  use_trainer_devices(configs['A'])  # both on A's devices
  runners, batch_sizes = {}, {}
  for name, config in configs.items():
    config_validation.validate(config, jax.local_device_count())
    run_train, run_eval, _ = benchmark.pmapped_steps(
        config, NUM_CLASSES[config.dataset], compile_train_now=args.step == 'train')
    runners[name] = run_train if args.step == 'train' else run_eval
    batch_sizes[name] = config.batch_size
    runners[name]()  # compile both before timing either
  print(f'configs/{args.config}.py, batch {args.batch_size}, {jax.local_device_count()} devices, '
        f'{allocator.preloaded_allocator()} malloc; {args.step} images/s; '
        f"A: {' '.join(args.a) or 'as it is'}; B: {' '.join(args.b) or 'as it is'}")
  time_pairs(runners, batch_sizes, args.pairs, args.repeats, args.warmup)


if __name__ == '__main__':
  main()
