"""A/B of threefry's CPU lowering: JAX's, whose 20 rounds run as a loop of 5 iterations, against
the one JAX uses on GPUs and TPUs, with the rounds written out (the same bits).

  python -m benchmarks.threefry_ab                   # configs/cifar10.py, batch 128
  python -m benchmarks.threefry_ab --config=cifar10_seed --batch_size=256

XLA:CPU fuses nothing across a loop's iterations, so with JAX's lowering every dropout mask costs
five passes over two uint32 arrays of its size; written out, the rounds fuse with the comparison
into one pass. Two measurements, each in interleaved pairs (`config_ab.time_pairs`): one dropout
layer alone (`layers.Dropout` on a (batch, 16, 256) array, elements/s), then the config's whole
pmapped train step (`tlb_jax.benchmark`'s, augmentation included, images/s). Each side is
compiled once in this process, A before the written-out rule is registered and B after it; the
devices are the trainer's (one host device per core by default, `TLB_JAX_CPU_DEVICES` to set).
"""

import argparse
import importlib

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp

from benchmarks.config_ab import NUM_CLASSES, step_ab_parser, time_pairs
from tlb_jax import benchmark, config_validation, host_devices
from tlb_jax.models.layers import Dropout

MASK_SHAPE = (16, 256)  # a dropout mask's shape after the batch axis


def parse_args(argv=None) -> argparse.Namespace:
  return step_ab_parser('threefry_ab', __doc__).parse_args(argv)


def lowering_rules():
  """(the threefry2x32 primitive, JAX's CPU lowering rule, its written-out rule), where JAX 0.10
  keeps them."""
  # pylint: disable=g-import-not-at-top,protected-access
  from jax._src.random import threefry2x32
  return (threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_cpu_lowering_rule,
          threefry2x32._threefry2x32_lowering_rule)


def use_lowering(rule) -> None:
  """Lowers threefry2x32 for the CPU with `rule` in the programs compiled from now on."""
  from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
  mlir.register_lowering(lowering_rules()[0], rule, platform='cpu')


def dropout_runner(batch_size: int):
  """A blocking callable: `layers.Dropout(0.1)` on a (batch_size, *MASK_SHAPE) array, compiled
  now."""
  x = jnp.ones((batch_size, *MASK_SHAPE), jnp.float32)
  dropout = Dropout(rate=0.1)
  apply = jax.jit(lambda key: dropout.apply({}, x, deterministic=False, rngs={'dropout': key}))
  compiled = apply.lower(jax.random.key(0)).compile()
  return lambda: compiled(jax.random.key(0)).block_until_ready()


def main(argv=None):
  args = parse_args(argv)
  host_devices.use_one_device_per_core(args.batch_size, args.batch_size)  # as main.py trains
  config = importlib.import_module(f'configs.{args.config}').get_config()
  config.batch_size = config.eval_batch_size = args.batch_size
  config_validation.validate(config, jax.local_device_count())
  _, rolled, written_out = lowering_rules()
  masks, steps = {}, {}
  for name, rule in (('rolled', rolled), ('written_out', written_out)):
    use_lowering(rule)
    masks[name] = dropout_runner(args.batch_size)
    steps[name], _, _ = benchmark.pmapped_steps(config, NUM_CLASSES[config.dataset])
  use_lowering(rolled)
  elements = args.batch_size * MASK_SHAPE[0] * MASK_SHAPE[1]
  print(f'one dropout mask of {elements:,} elements; elements/s:', flush=True)
  time_pairs(masks, dict.fromkeys(masks, elements), args.pairs, args.repeats, args.warmup)
  print(f'configs/{args.config}.py, batch {args.batch_size}, {jax.local_device_count()} '
        f'devices, {allocator.preloaded_allocator()} malloc; train images/s:', flush=True)
  time_pairs(steps, dict.fromkeys(steps, args.batch_size), args.pairs, args.repeats,
             args.warmup)


if __name__ == '__main__':
  main()
