r"""A/B of hoisting: step images/s of a TLB whose first fast-stream blocks run on all chunks
before the chunk scan and of one that runs them inside it.

  python -m benchmarks.hoist_ab                       # configs/cifar10.py, batch 128
  python -m benchmarks.hoist_ab --step=eval
  python -m benchmarks.hoist_ab --config=cifar10_seed --variant=paper --batch_size=256 \
      --set=microbatch_size=0    # the seed's size on one host device per core

--step=train: `tlb_jax.train.train_step` (augmentation included) of `TLBWithoutHoisting`
(in_scan) and `TLB` (hoisted). --step=eval: `evaluation.eval_step` (the central view, with its
metrics) of `TLB`, which evaluates inside the scan (in_scan), and `TLBHoistingInEvaluation`
(hoisted). Both of the same config and parameters, pmapped as `tlb_jax.benchmark` runs them on
the host devices `main.py` would train on, on one fixed random batch. Each pair interleaves the two
call by call, `--repeats` calls each (`config_ab.time_pairs`), so that the drift of a shared
machine's speed falls on both; compare the ratios, not figures of other runs.
"""

import argparse
import dataclasses
import importlib

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax
from flax import jax_utils

from benchmarks.config_ab import (add_step_argument, shared_overrides_ab_parser, time_pairs,
                                  use_trainer_devices, with_overrides)
from tlb_jax import benchmark, evaluation, train, train_state
from tlb_jax.models import create_model
from tlb_jax.models.tlb import TLB, TLBWithoutHoisting

NUM_CLASSES = 10


class TLBHoistingInEvaluation(TLB):
  """`TLB` that hoists its first fast-stream blocks in evaluation too."""

  hoist_in_evaluation = True


def parse_args(argv=None) -> argparse.Namespace:
  parser = shared_overrides_ab_parser('hoist_ab', __doc__, pairs=5)
  parser.add_argument('--variant', default=None, help="overrides config.tlb.variant")
  add_step_argument(parser)
  return parser.parse_args(argv)


def _model_state_and_batch(config, model_class):
  """`model_class` with the hyper-parameters of `config.tlb`, its train state and the learning
  rate, and a fixed batch of `config.batch_size` images sharded over the local devices."""
  model = create_model(config, NUM_CLASSES)
  model = model_class(**{field.name: getattr(model, field.name) for field in dataclasses.fields(TLB)
                         if field.name not in ('parent', 'name')})
  learning_rate_fn = train_state.create_learning_rate_fn(config, 100, 1000)
  state = train_state.create_train_state(jax.random.PRNGKey(0), model, config.image_size,
                                         train_state.create_optimizer(config, learning_rate_fn))
  devices = jax.local_device_count()
  batch = {k: v.reshape((devices, -1) + v.shape[1:])
           for k, v in benchmark.synthetic_batch(config.batch_size, NUM_CLASSES, mask=True).items()}
  return model, state, learning_rate_fn, batch


def train_step_runner(config, model_class):
  """A blocking zero-argument callable running the pmapped train step of `model_class` with
  the hyper-parameters of `config.tlb` on a fixed batch of `config.batch_size` images."""
  _, state, learning_rate_fn, batch = _model_state_and_batch(config, model_class)
  holder = {'state': jax_utils.replicate(state, axis_name='batch')}
  step = jax.pmap(train.make_train_step(config, learning_rate_fn), axis_name='batch',
                  donate_argnums=(0,))

  def run():
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready((holder['state'], metrics))

  return run


def eval_step_runner(config, model_class):
  """As `train_step_runner`, for the pmapped eval step (`evaluation.make_eval_step`)."""
  model, state, _, batch = _model_state_and_batch(config, model_class)
  params = jax_utils.replicate(state.params)
  step = jax.pmap(evaluation.make_eval_step(config, model), axis_name='batch')
  return lambda: jax.block_until_ready(step(params, batch))


def main(argv=None):
  args = parse_args(argv)
  config = importlib.import_module(f'configs.{args.config}').get_config()
  if args.variant:
    config.tlb.variant = args.variant
  config.batch_size = config.eval_batch_size = args.batch_size
  config = with_overrides(config, args.set)
  use_trainer_devices(config)
  if args.step == 'train':
    runners = {'in_scan': train_step_runner(config, TLBWithoutHoisting),
               'hoisted': train_step_runner(config, TLB)}
  else:
    runners = {'in_scan': eval_step_runner(config, TLB),
               'hoisted': eval_step_runner(config, TLBHoistingInEvaluation)}
  for run in runners.values():  # compile both before timing either
    run()
  print(f'{args.config} (variant {config.tlb.variant}), batch {args.batch_size}, '
        f'{jax.local_device_count()} devices, {allocator.preloaded_allocator()} malloc; '
        f'{args.step} images/s')
  time_pairs(runners, dict.fromkeys(runners, args.batch_size), args.pairs, args.repeats,
             args.warmup)


if __name__ == '__main__':
  main()
