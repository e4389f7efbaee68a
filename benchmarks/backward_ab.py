"""A/B of hand-written backward passes: train-step images/s with an op differentiated by JAX
(A) and with a version of it whose backward is written by hand (B); `OPS` says which of the two
the model ships.

  python -m benchmarks.backward_ab --op=layer_norm                 # configs/cifar10.py
  python -m benchmarks.backward_ab --op=layer_norm --config=cifar10_seed --batch_size=256
  python -m benchmarks.backward_ab --op=softmax
  python -m benchmarks.backward_ab --op=gelu_tanh
  python -m benchmarks.backward_ab --op=gelu_erf --config=cifar10_seed --batch_size=256 \\
      --set=microbatch_size=0

Both are `tlb_jax.train.train_step` (augmentation included) of the same config, pmapped and
compiled as `tlb_jax.benchmark` runs it on the host devices `main.py` would train on, on one
fixed random batch, each with the model's op replaced by its version. Each pair interleaves the two
call by call, `--repeats` calls each (`config_ab.time_pairs`), so that the drift of a shared
machine's speed falls on both; compare the ratios, not figures of other runs.
"""

import argparse
import functools

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from benchmarks.config_ab import shared_overrides_ab_parser, time_layer_versions
from tlb_jax.models import layers


class FlaxLayerNorm(layers.LayerNorm):
  """`layers.LayerNorm` (its parameters and `affine`) computed by flax's `nn.LayerNorm`, which
  JAX differentiates step by step."""

  def __call__(self, x):
    """x (..., D) -> (..., D) in `dtype`."""
    scale, bias = self.affine(x.shape[-1])
    # parent=None: a detached module, applied as a function of these parameters.
    return nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, parent=None).apply(
        {'params': {'scale': scale, 'bias': bias}}, x)


def flax_layer_norm(epsilon=layers.LAYER_NORM_EPSILON, dtype=None, name=None):
  """`layers.LayerNorm`'s signature, built as `FlaxLayerNorm` (autodiff backward)."""
  return FlaxLayerNorm(epsilon=epsilon, dtype=dtype, name=name)


# Bound here: main patches `layers.softmax` and `layers.gelu_erf` with `hand_written_softmax`
# and `hand_written_gelu_erf`, which call these.
_autodiff_softmax = layers.softmax
_autodiff_gelu_erf = layers.gelu_erf


def _softmax_forward(logits, axis: int):
  probabilities = _autodiff_softmax(logits, axis)
  return probabilities, probabilities


def _softmax_backward(axis: int, probabilities, d_probabilities):
  """d logits = p * (dp - sum(dp * p)): one reduction from the saved probabilities."""
  weighted = (d_probabilities * probabilities).sum(axis, keepdims=True)
  return (probabilities * (d_probabilities - weighted),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def hand_written_softmax(logits, axis: int = -1):
  """`layers.softmax` with a hand-written backward."""
  return _softmax_forward(logits, axis)[0]


hand_written_softmax.defvjp(_softmax_forward, _softmax_backward)


def _gelu_tanh_forward(x):
  sqrt_2_over_pi = np.sqrt(2 / np.pi).astype(x.dtype)
  tanh = checkpoint_name(jnp.tanh(sqrt_2_over_pi * (x + 0.044715 * (x ** 3))), layers.GELU_TANH)
  return x * (0.5 * (1.0 + tanh)), (x, tanh)


def _gelu_tanh_backward(residuals, dy):
  """d x = dy (0.5 (1 + t) + 0.5 x (1 - t^2) d inner / dx), t the forward's tanh."""
  x, tanh = residuals
  d_inner = np.sqrt(2 / np.pi).astype(x.dtype) * (1.0 + 3 * 0.044715 * (x * x))
  return (dy * (0.5 * (1.0 + tanh) + 0.5 * x * (1.0 - tanh * tanh) * d_inner),)


@jax.custom_vjp
def hand_written_gelu_tanh(x):
  """`layers.gelu_tanh` with a hand-written backward from the saved input and tanh."""
  return _gelu_tanh_forward(x)[0]


hand_written_gelu_tanh.defvjp(_gelu_tanh_forward, _gelu_tanh_backward)


def _gelu_erf_forward(x):
  return _autodiff_gelu_erf(x), x


def _gelu_erf_backward(x, dy):
  """d x = dy (Phi(x) + x phi(x)), Phi and phi the standard normal's CDF and density."""
  cdf = 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
  density = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
  return (dy * (cdf + x * density),)


@jax.custom_vjp
def hand_written_gelu_erf(x):
  """`layers.gelu_erf` with a hand-written backward from the saved input."""
  return _gelu_erf_forward(x)[0]


hand_written_gelu_erf.defvjp(_gelu_erf_forward, _gelu_erf_backward)


# --op -> (attribute of tlb_jax.models.layers, its version differentiated by JAX, its version
# with a hand-written backward). The model ships the faster one it was measured to be:
# LayerNorm's hand-written backward, and softmax and both GELUs as JAX differentiates them.
OPS = {'layer_norm': ('LayerNorm', flax_layer_norm, layers.LayerNorm),
       'softmax': ('softmax', layers.softmax, hand_written_softmax),
       'gelu_tanh': ('gelu_tanh', layers.gelu_tanh, hand_written_gelu_tanh),
       'gelu_erf': ('gelu_erf', layers.gelu_erf, hand_written_gelu_erf)}


def parse_args(argv=None) -> argparse.Namespace:
  parser = shared_overrides_ab_parser('backward_ab', __doc__)
  parser.add_argument('--op', choices=sorted(OPS), required=True)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  attribute, autodiff_version, hand_written_version = OPS[args.op]
  time_layer_versions(args, attribute, {'autodiff': autodiff_version,
                                        'hand_written': hand_written_version}, f'op {args.op}')


if __name__ == '__main__':
  main()
