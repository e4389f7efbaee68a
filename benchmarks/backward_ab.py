"""A/B of hand-written backward passes: train-step images/s with an op differentiated by JAX
(A) and with the project's version of it, whose backward is written by hand (B).

  python -m benchmarks.backward_ab --op=layer_norm                 # configs/cifar10.py
  python -m benchmarks.backward_ab --op=layer_norm --config=cifar10_seed --batch_size=256

Both are `tlb_jax.train.train_step` (augmentation included) of the same config, pmapped and
compiled as `tlb_jax.benchmark` runs it, on one fixed random batch; A is compiled with the
model's op replaced by JAX's own. Each pair times the two back to back (in alternating order),
the median of `--repeats` calls each, so that the drift of a shared machine's speed falls on
both; compare the ratios, not figures of other runs.
"""

import argparse
import importlib
from unittest import mock

import flax.linen as nn
import jax

from benchmarks.config_ab import NUM_CLASSES, time_pairs
from tlb_jax import allocator, benchmark, config_validation
from tlb_jax.models import layers


def flax_layer_norm(epsilon=layers.LAYER_NORM_EPSILON, dtype=None, name=None):
  """`layers.LayerNorm`'s signature, built as flax's `nn.LayerNorm` (autodiff backward)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


# --op -> (attribute of tlb_jax.models.layers, what A replaces it with).
OPS = {'layer_norm': ('LayerNorm', flax_layer_norm)}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.backward_ab', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--op', choices=sorted(OPS), required=True)
  parser.add_argument('--config', default='cifar10', help='a module of configs/')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=10, help='timed calls per measurement')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls before the first')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  config = importlib.import_module(f'configs.{args.config}').get_config()
  config.batch_size = args.batch_size
  config_validation.validate(config, jax.local_device_count())
  attribute, jax_version = OPS[args.op]
  num_classes = NUM_CLASSES[config.dataset]
  with mock.patch.object(layers, attribute, jax_version):
    autodiff, _, _ = benchmark.pmapped_steps(config, num_classes)  # compiles here
  hand_written, _, _ = benchmark.pmapped_steps(config, num_classes)
  runners = {'autodiff': autodiff, 'hand_written': hand_written}  # both compiled: time them
  print(f'configs/{args.config}.py, batch {args.batch_size}, '
        f'{allocator.preloaded_allocator()} malloc; train images/s; op {args.op}')
  time_pairs(runners, dict.fromkeys(runners, args.batch_size), args.pairs, args.repeats,
             args.warmup)


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
