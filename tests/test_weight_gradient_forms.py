"""`benchmarks/weight_gradient_forms.py` times two forms of one function, at the shapes of the
dense layers that `configs/cifar10.py`'s TLB runs inside its chunk scan."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import weight_gradient_forms
from configs import cifar10
from tlb_jax.models import create_model
from tlb_jax.models.tlb import num_prefix_layers


def test_batched_weight_gradient_equals_the_sum_over_chunks():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 10, 4)).astype(np.float32)
  dy = rng.standard_normal((3, 10, 5)).astype(np.float32)
  expected = sum(x[c].T.astype(np.float64) @ dy[c] for c in range(3))
  for form in weight_gradient_forms.FORMS.values():
    np.testing.assert_allclose(form(x, dy), expected, rtol=1e-5, atol=1e-5)


def test_benchmarked_layers_are_the_kernels_of_the_in_scan_blocks_of_cifar10():
  config = cifar10.get_config()
  tlb = config.tlb
  params = jax.eval_shape(lambda: create_model(config, 10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']['recurrence']
  hoisted = {f'fast_self_attention_{layer}'
             for layer in range(num_prefix_layers(tlb.variant, tlb.num_layers,
                                                  tlb.cross_attention_every))}
  kernels = sorted(
      int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == 'kernel' and path[0].key not in hoisted)
  num_cross = tlb.num_layers // tlb.cross_attention_every
  layers = weight_gradient_forms.cell_dense_layers(
      tokens=tlb.chunk_size, latents=tlb.num_latents, embed=tlb.embed_dim,
      mlp_ratio=tlb.mlp_ratio, self_blocks=tlb.num_layers - len(hoisted), cross_blocks=num_cross)
  assert sorted(din * dout for _, din, dout in layers) == kernels
