"""A/B of how an activation is computed: train-step images/s with JAX's own function (A,
'baseline') and with the model's version of the same function (B, 'shipped'); `ACTIVATIONS`
lists them.

  python -m benchmarks.activation_ab --config=cifar10_seed --batch_size=256 \\
      --set=microbatch_size=0

--activation=gelu_erf: `jax.nn.gelu(x, approximate=False)`, which computes the exact GELU with
erfc, against `layers.gelu_erf`, 0.5 x (1 + erf(x / sqrt(2))), in the seed's MLPs (only
`tlb.variant='keras_seed'` uses the exact GELU).

Both are `tlb_jax.benchmark`'s pmapped train step (augmentation included) of the same config on
one fixed random batch, compiled in this process, on the host devices `main.py` would train on.
Each pair interleaves the two call by call (`time_pairs`).
"""

import functools

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax

from benchmarks.config_ab import layer_versions_main

# --activation -> (attribute of tlb_jax.models.layers, JAX's function put in its place).
ACTIVATIONS = {'gelu_erf': ('gelu_erf', functools.partial(jax.nn.gelu, approximate=False))}


def main(argv=None):
  layer_versions_main('activation_ab', __doc__, 'activation', ACTIVATIONS, argv)


if __name__ == '__main__':
  main()
