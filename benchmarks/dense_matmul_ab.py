"""A/B of how the models' linear layers run their matmuls: train-step images/s with a baseline
(A) and with what the model ships (B), the same function either way; `LAYERS` lists them.

  python -m benchmarks.dense_matmul_ab                      # configs/cifar10.py, batch 128
  python -m benchmarks.dense_matmul_ab --config=cifar10_seed --batch_size=256
  python -m benchmarks.dense_matmul_ab --config=cifar10_seed --batch_size=256 \\
      --layer=patch_projection

--layer=dense: flax's `lax.dot_general` over (B, N, D) against `layers.matmul_dot_general`, one
2-D matmul over (B * N, D), in every Dense, DenseGeneral and Conv3x3. XLA:CPU runs A's weight
gradients as a transposing copy and an Eigen matmul, B's as one matmul.
--layer=patch_projection: `nn.Conv` against `layers.PatchProjection` for the 'linear' tokenizer
(the seed's, ViT's and the Perceiver's); A's weight gradient is a slow convolution.
--layer=transposed_weight_gradient: the 2-D matmul differentiated by JAX against
`layers.matmul_with_transposed_weight_gradient`, whose narrow weight gradients (the MLP's
(256, 64)) are computed as their wide transpose.
--layer=normalized_projections: the seed's queries, keys and values each through its own
LayerNorm and projection against `layers.normalized_projections`, one normalization and one
matmul for the projections of the same input (`--config=cifar10_seed` only).

Both are `tlb_jax.benchmark`'s pmapped train step (augmentation included) of the same config on
one fixed random batch, compiled in this process, on the host devices `main.py` would train on.
Each pair interleaves the two call by call (`time_pairs`).
"""

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.config_ab import layer_versions_main
from tlb_jax.models import layers


def conv_patch_projection(features, patch_size, dtype=None, kernel_init=None, name=None):
  """`layers.PatchProjection`'s signature, built as flax's `nn.Conv`."""
  return nn.Conv(features, (patch_size, patch_size), strides=(patch_size, patch_size),
                 padding='VALID', dtype=dtype, kernel_init=kernel_init, name=name)


def separately_normalized_projections(inputs, norms, projections,
                                      epsilon: float = layers.LAYER_NORM_EPSILON,
                                      dtype=jnp.float32):
  """`layers.normalized_projections`'s function, one LayerNorm and one matmul per projection (as
  flax's `LayerNorm` and `DenseGeneral` layers compute it): its baseline."""
  outputs = []
  for x, (scale, shift), (kernel, bias) in zip(inputs, norms, projections):
    normalized = layers.layer_norm(x, scale, shift, epsilon).astype(dtype)
    projected = layers.matmul_dot_general(normalized, kernel.astype(dtype),
                                          (((x.ndim - 1,), (0,)), ((), ())))
    outputs.append(projected + bias.astype(dtype))
  return outputs


# --layer -> (attribute of tlb_jax.models.layers, the baseline A put in its place).
LAYERS = {'dense': ('matmul_dot_general', jax.lax.dot_general),
          'patch_projection': ('PatchProjection', conv_patch_projection),
          'transposed_weight_gradient': ('matmul_with_transposed_weight_gradient',
                                         lambda x, w: x @ w),
          'normalized_projections': ('normalized_projections',
                                     separately_normalized_projections)}


def main(argv=None):
  layer_versions_main('dense_matmul_ab', __doc__, 'layer', LAYERS, argv)


if __name__ == '__main__':
  main()
