"""The check shared by the tests of layers computed another way: a model's loss and gradients
with one attribute of `tlb_jax.models.layers` replaced by each of two versions."""

from unittest import mock

import jax
import numpy as np

from tlb_jax.models import layers


def assert_versions_give_the_same_loss_and_gradients(loss, params, attribute: str, ours,
                                                     reference, loss_rtol: float) -> None:
  """`loss(params)` and its gradient with `layers.<attribute>` replaced by `ours`, which the
  model must call, equal them with it replaced by `reference`: the loss within `loss_rtol`, each
  gradient within rtol 1e-4, atol 1e-6."""
  with mock.patch.object(layers, attribute, wraps=ours) as patched:
    got = jax.value_and_grad(loss)(params)
  patched.assert_called()
  with mock.patch.object(layers, attribute, reference):
    want = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(got[0], want[0], rtol=loss_rtol)
  for got_grad, want_grad in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)
