"""The Keras example's published training logs, and runs' validation curves drawn against them.

  python -m tlb_jax.keras_logs --workdirs=/tmp/seed_run --output=docs/seed_curves.png
  python -m tlb_jax.keras_logs --workdirs=/tmp/a,/tmp/b --names 'run a' 'run b' --output=x.png

The Keras example "When Recurrence meets Transformers" (keras-io,
examples/vision/temporal_latent_bottleneck.py, by Aritra Roy Gosthipaty and Suvaditya
Mukherjee) trains its TLB on CIFAR-10 for 30 epochs and prints its validation accuracy after
each; two versions of the page show a log: the current one (Keras 3) and the first one
(TensorFlow 2.12, mixed precision). `configs/cifar10_seed.py` is that model and recipe.
"""

import argparse
import os
import sys

import numpy as np

from tlb_jax import plots

# Validation top-1 after epochs 1-30, as printed in the two logs (`val_accuracy`).
KERAS_LOGS = {
    'Keras example, Keras 3 log': (
        0.1486, 0.2249, 0.2610, 0.2765, 0.2985, 0.3055, 0.3209, 0.3231, 0.3445, 0.3591,
        0.3793, 0.3667, 0.3995, 0.4026, 0.3990, 0.4216, 0.4281, 0.4294, 0.4338, 0.4430,
        0.4504, 0.4563, 0.4647, 0.4640, 0.4663, 0.4769, 0.4808, 0.4810, 0.4844, 0.4890),
    'Keras example, TF 2.12 log': (
        0.1251, 0.1846, 0.2241, 0.2477, 0.2671, 0.2665, 0.2831, 0.2968, 0.2969, 0.3200,
        0.3330, 0.3464, 0.3669, 0.3710, 0.3866, 0.3933, 0.4161, 0.4170, 0.4239, 0.4223,
        0.4390, 0.4455, 0.4424, 0.4532, 0.4584, 0.4592, 0.4619, 0.4704, 0.4751, 0.4726),
}
DEFAULT_NAME = 'tlb-jax, configs/cifar10_seed.py'


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m tlb_jax.keras_logs', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdirs', required=True, type=_comma_list,
                      help='the runs to draw (their TensorBoard events), comma-separated')
  parser.add_argument('--output', required=True, help='the PNG to write')
  parser.add_argument('--names', nargs='+', default=None,
                      help="the runs' lines in the legend, one argument each (default: "
                           f"'{DEFAULT_NAME}' for one run, 'tlb-jax, WORKDIR' for several)")
  args = parser.parse_args(argv)
  if args.names is None:
    args.names = ([DEFAULT_NAME] if len(args.workdirs) == 1
                  else [f'tlb-jax, {os.path.basename(os.path.normpath(w))}' for w in args.workdirs])
  if len(args.names) != len(args.workdirs) or len(set(args.names)) != len(args.names):
    print(f'error: --names has {len(set(args.names))} distinct names for '
          f'{len(args.workdirs)} workdirs; give one name per workdir', file=sys.stderr)
    sys.exit(2)
  return args


def _comma_list(value: str) -> list[str]:
  return [item.strip() for item in value.split(',') if item.strip()]


def curves_against_keras(runs: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """runs {line name: workdir} -> {line name: (epochs (N,), validation top-1 (N,))}: the runs',
  then the two logs'."""
  curves = {}
  for name, workdir in runs.items():
    run = plots.epoch_curves(plots.read_scalars(workdir))
    curves[name] = (run['eval_epoch'], run['eval_accuracy'])
  for log_name, accuracy in KERAS_LOGS.items():
    curves[log_name] = (np.arange(1, len(accuracy) + 1, dtype=np.float64), np.array(accuracy))
  return curves


def main(argv=None):
  args = parse_args(argv)
  curves = curves_against_keras(dict(zip(args.names, args.workdirs)))
  for name, workdir in zip(args.names, args.workdirs):
    if not len(curves[name][0]):
      print(f'error: {workdir} has no validation figures to draw; pass the workdir of a run '
            'with a validation split', file=sys.stderr)
      sys.exit(2)
  plots.save_png(plots.plot_runs(curves, title='CIFAR-10, the seed model and recipe',
                                 xlabel='epoch'), args.output)
  print(f'wrote {args.output}')


if __name__ == '__main__':
  main()
