"""`benchmarks.threefry_ab`: the two CPU lowerings of threefry it times draw the same bits, and
only JAX's loops over the rounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import threefry_ab
from tlb_jax.models.layers import Dropout


@pytest.fixture(autouse=True)
def jax_lowering():
  """Each test starts and ends with JAX's own CPU lowering."""
  _, rolled, _ = threefry_ab.lowering_rules()
  threefry_ab.use_lowering(rolled)
  yield
  threefry_ab.use_lowering(rolled)


def _draws(key) -> tuple[list[np.ndarray], bool]:
  """Bits, a uniform draw and dropout's output from a program lowered anew with the rule
  registered now, and whether that program loops."""
  x = jnp.ones((4, 16, 33))

  @jax.jit
  def draw(key):
    bits = jax.random.bits(key, (1001,))
    uniform = jax.random.uniform(jax.random.fold_in(key, 1), (7, 9))
    dropped = Dropout(rate=0.1).apply({}, x, deterministic=False, rngs={'dropout': key})
    return bits, uniform, dropped

  return jax.device_get(draw(key)), 'while' in draw.lower(key).as_text()


def test_jax_cpu_lowering_loops_over_the_rounds():
  _, loops = _draws(jax.random.key(0))
  assert loops


def test_the_written_out_lowering_draws_the_same_bits_without_a_loop():
  key = jax.random.key(42)
  rolled, _ = _draws(key)
  threefry_ab.use_lowering(threefry_ab.lowering_rules()[2])
  written_out, loops = _draws(key)
  assert not loops
  for a, b in zip(rolled, written_out):
    np.testing.assert_array_equal(a, b)
