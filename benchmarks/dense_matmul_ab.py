"""A/B of how the models' linear layers run their matmuls: train-step images/s with flax's layers
(A) and with the model's own, which compute the same function as one 2-D matmul (B, what the
model ships). The difference is in the weight gradients: XLA:CPU runs A's as a transposing copy
and an Eigen matmul (dense layers over (B, N, D)) or as a slow convolution (the patch
projection), and B's as one matmul that its YNNPACK library takes.

  python -m benchmarks.dense_matmul_ab                      # configs/cifar10.py, batch 128
  python -m benchmarks.dense_matmul_ab --config=cifar10_seed --batch_size=256
  python -m benchmarks.dense_matmul_ab --config=cifar10_seed --batch_size=256 \\
      --layer=patch_projection

--layer=dense: `lax.dot_general` (flax's default) against `layers.matmul_dot_general` in every
Dense, DenseGeneral and Conv3x3. --layer=patch_projection: `nn.Conv` against
`layers.PatchProjection` for the 'linear' tokenizer (the seed's, ViT's and the Perceiver's).

Both are `tlb_jax.benchmark`'s pmapped train step (augmentation included) of the same config on
one fixed random batch, compiled in this process, on the devices the trainer would use. Each
pair times the two back to back, in alternating order (`time_pairs`).
"""

import importlib
from unittest import mock

import flax.linen as nn
import jax

from benchmarks.config_ab import NUM_CLASSES, step_ab_parser, time_pairs, use_trainer_devices
from tlb_jax import allocator, benchmark, config_validation
from tlb_jax.models import layers


def conv_patch_projection(features, patch_size, dtype=None, kernel_init=None, name=None):
  """`layers.PatchProjection`'s signature, built as flax's `nn.Conv`."""
  return nn.Conv(features, (patch_size, patch_size), strides=(patch_size, patch_size),
                 padding='VALID', dtype=dtype, kernel_init=kernel_init, name=name)


# --layer -> (attribute of tlb_jax.models.layers, flax's version of it).
LAYERS = {'dense': ('matmul_dot_general', jax.lax.dot_general),
          'patch_projection': ('PatchProjection', conv_patch_projection)}


def parse_args(argv=None):
  parser = step_ab_parser('dense_matmul_ab', __doc__)
  parser.add_argument('--layer', choices=sorted(LAYERS), default='dense')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  config = importlib.import_module(f'configs.{args.config}').get_config()
  config.batch_size = config.eval_batch_size = args.batch_size
  use_trainer_devices(config)
  config_validation.validate(config, jax.local_device_count())
  num_classes = NUM_CLASSES[config.dataset]
  attribute, flax_version = LAYERS[args.layer]
  with mock.patch.object(layers, attribute, flax_version):
    flax_layers, _, _ = benchmark.pmapped_steps(config, num_classes)  # compiles here
  ours, _, _ = benchmark.pmapped_steps(config, num_classes)
  runners = {'flax': flax_layers, 'matmul': ours}
  print(f'configs/{args.config}.py, batch {args.batch_size}, {jax.local_device_count()} '
        f'devices, {allocator.preloaded_allocator()} malloc; --layer={args.layer}; '
        'train images/s:', flush=True)
  time_pairs(runners, dict.fromkeys(runners, args.batch_size), args.pairs, args.repeats,
             args.warmup)


if __name__ == '__main__':
  allocator.use_tcmalloc()
  main()
