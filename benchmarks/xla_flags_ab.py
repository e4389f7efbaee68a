r"""A/B of XLA flags: the train and eval steps' images/s with and without them, in interleaved pairs.

  python -m benchmarks.xla_flags_ab --b=--xla_cpu_enable_fast_math=true
  python -m benchmarks.xla_flags_ab --config=cifar10_seed --batch_size=256 --pairs=4 \
      --b=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

Each side's flags are XLA compile options of its own compilation of `tlb_jax.benchmark`'s
pmapped train and eval steps (`pmapped_steps(compiler_options=...)`), so both live in this
process, on the host devices `main.py` would train on, and each pair interleaves them call by
call (`config_ab.time_pairs`), first the train steps, then the eval steps: the drift of a
shared machine's speed falls on both; compare the ratios, not figures of other runs.

Values are read as compile options, not as XLA_FLAGS reads them: a list takes the enum names,
comma-separated, and replaces XLA's default instead of editing it with XLA_FLAGS's +/- (with
jax 0.10.2 the default YNNPACK fusion list gives this project's steps as many fusions as
`LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE`, so XLA_FLAGS's `+dot` is that
list and `LIBRARY_FUSION_TYPE_DOT`; an empty value empties the list). Flags of the backend
itself (such as the host device count) and map-valued ones (`--xla_backend_extra_options`) are
not compile options: set those in XLA_FLAGS, for both sides.
"""

import importlib

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax

from benchmarks import config_ab
from tlb_jax import benchmark, config_validation

STEPS = ('train', 'eval')


def parse_args(argv=None):
  parser = config_ab.step_ab_parser('xla_flags_ab', __doc__)
  parser.add_argument('--a', action='append', default=[], metavar='FLAG',
                      help="A's XLA flags (repeat for several); none: XLA's defaults")
  parser.add_argument('--b', action='append', default=[], metavar='FLAG',
                      help="B's XLA flags (repeat for several)")
  args = parser.parse_args(argv)
  for flag in args.a + args.b:
    if not flag.startswith('--xla_') or '=' not in flag:
      parser.error(f'{flag!r} is not an XLA flag: write it as --xla_NAME=VALUE')
  return args


def compiler_options(flags: list[str]) -> dict[str, bool | int | float | str]:
  """['--xla_NAME=VALUE', ...] -> {'xla_NAME': VALUE}, later flags winning as in XLA_FLAGS;
  XLA takes booleans and numbers as such ('true' -> True, '4' -> 4), the rest as strings."""
  return {name: _option_value(text) for name, text in (flag[2:].split('=', 1) for flag in flags)}


def _option_value(text: str) -> bool | int | float | str:
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def compile_steps(config, flags: list[str]):
  """`benchmark.pmapped_steps` of `config` compiled with `flags`.

  Raises:
    SystemExit: XLA rejects a flag as a compile option (one line, naming the flags).
  """
  try:
    return benchmark.pmapped_steps(config, config_ab.NUM_CLASSES[config.dataset],
                                   compiler_options=compiler_options(flags))
  except Exception as e:  # pylint: disable=broad-except  # XLA's errors have no common type
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise SystemExit(f"error: XLA did not compile with {' '.join(flags)}: {reason}") from e


def main(argv=None):
  args = parse_args(argv)
  config = importlib.import_module(f'configs.{args.config}').get_config()
  config.batch_size = config.eval_batch_size = args.batch_size
  config_ab.use_trainer_devices(config)
  config_validation.validate(config, jax.local_device_count())
  steps = {'A': compile_steps(config, args.a), 'B': compile_steps(config, args.b)}
  print(f'configs/{args.config}.py, batch {args.batch_size}, {jax.local_device_count()} devices, '
        f'{allocator.preloaded_allocator()} malloc; images/s; '
        f"A: {' '.join(args.a) or 'XLA defaults'}; B: {' '.join(args.b) or 'XLA defaults'}",
        flush=True)
  for index, step in enumerate(STEPS):
    print(f'{step} step:', flush=True)
    config_ab.time_pairs({name: runners[index] for name, runners in steps.items()},
                         dict.fromkeys(steps, args.batch_size), args.pairs, args.repeats,
                         args.warmup)


if __name__ == '__main__':
  main()
