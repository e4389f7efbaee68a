r"""A/B of XLA flags: the train and eval steps' images/s with and without them, in interleaved pairs.

  python -m benchmarks.xla_flags_ab --b=--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise
  python -m benchmarks.xla_flags_ab --config=cifar10_seed --batch_size=256 --pairs=4 \
      --b=--xla_cpu_experimental_ynn_fusion_type=-individual_dot

XLA reads its flags once, when the backend starts, so each measurement is its own process:
`python -m tlb_jax.benchmark --config=configs/<config>.py --noflops`, with A's or B's flags
appended to XLA_FLAGS. Each pair runs A and B back to back, the order alternating, so that the
drift of a shared machine's speed falls on both; compare the ratios, not figures of other runs.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import config_ab

STEPS = ('train', 'eval')


def parse_args(argv=None):
  parser = config_ab.step_ab_parser('xla_flags_ab', __doc__)
  parser.add_argument('--a', action='append', default=[], metavar='FLAG',
                      help="A's XLA flags (repeat for several); none: XLA's defaults")
  parser.add_argument('--b', action='append', default=[], metavar='FLAG',
                      help="B's XLA flags (repeat for several)")
  args = parser.parse_args(argv)
  for flag in args.a + args.b:
    if not flag.startswith('--xla_'):
      parser.error(f'{flag!r} is not an XLA flag: write it as --xla_NAME=VALUE')
  return args


def with_xla_flags(environ: dict, xla_flags: list[str]) -> dict:
  """A copy of `environ` with `xla_flags` appended to its XLA_FLAGS (later flags win in XLA)."""
  merged = ' '.join([environ.get('XLA_FLAGS', '')] + xla_flags).strip()
  return {**environ, 'XLA_FLAGS': merged}


def benchmark_command(config: str, batch_size: int, repeats: int, warmup: int,
                      output: str) -> list[str]:
  return [sys.executable, '-m', 'tlb_jax.benchmark', f'--config=configs/{config}.py',
          f'--config.batch_size={batch_size}', '--noflops', f'--repeats={repeats}',
          f'--warmup={warmup}', f'--output={output}']


def measure(command: list[str], environ: dict, output: str) -> dict:
  """Runs one benchmark process, which writes its JSON to `output`; returns {step: images/s}.

  Raises:
    SystemExit: the benchmark failed (its output is printed), for instance on a flag XLA rejects.
  """
  completed = subprocess.run(command, env=environ, capture_output=True, text=True)
  if completed.returncode != 0:
    sys.stderr.write(completed.stdout + completed.stderr)
    raise SystemExit(f'error: the benchmark failed under XLA_FLAGS={environ["XLA_FLAGS"]!r}')
  with open(output) as f:
    result = json.load(f)
  return {step: result[step]['images_per_s'] for step in STEPS}


def main(argv=None):
  args = parse_args(argv)
  flags = {'A': args.a, 'B': args.b}
  print(f'configs/{args.config}.py, batch {args.batch_size}; images/s; '
        f"A: {' '.join(args.a) or 'XLA defaults'}; B: {' '.join(args.b) or 'XLA defaults'}",
        flush=True)
  ratios = {step: [] for step in STEPS}
  with tempfile.TemporaryDirectory() as tmp:
    output = os.path.join(tmp, 'result.json')
    command = benchmark_command(args.config, args.batch_size, args.repeats, args.warmup, output)
    for pair in range(args.pairs):
      order = ('A', 'B') if pair % 2 == 0 else ('B', 'A')
      rate = {name: measure(command, with_xla_flags(dict(os.environ), flags[name]), output)
              for name in order}
      for step in STEPS:
        ratios[step].append(rate['B'][step] / rate['A'][step])
      print(f"pair {pair}: train A {rate['A']['train']:.1f}, B {rate['B']['train']:.1f}, "
            f"ratio {ratios['train'][-1]:.3f}; eval A {rate['A']['eval']:.1f}, "
            f"B {rate['B']['eval']:.1f}, ratio {ratios['eval'][-1]:.3f}", flush=True)
  for step in STEPS:
    print(f'median ratio B/A, {step}: {statistics.median(ratios[step]):.3f}')


if __name__ == '__main__':
  main()
