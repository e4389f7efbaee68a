"""The parameters shipped in pretrained/: the project's own restore path reads them, and the
model computes from them the logits stored beside them at export, so a change of format or of
the model's function that would break them fails here. No CIFAR data is needed."""

import os

import numpy as np
import pytest

from tlb_jax import export, restore

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ('cifar10', 'cifar100')


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_parameters_give_their_reference_logits(name):
  directory = os.path.join(REPO_ROOT, 'pretrained', name)
  run = restore.restore(directory)
  reference = export.load_reference(directory)
  images = export.reference_images(run.config.image_size, seed=reference['seed'])
  logits = run.model.apply({'params': run.params}, images, train=False)
  np.testing.assert_allclose(logits, reference['logits'], rtol=1e-4, atol=1e-4)
