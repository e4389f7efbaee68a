"""Fake CIFAR for tests: `tfds.testing.mock_data` with every split of `num_examples` images."""

import contextlib
from unittest import mock

import tensorflow_datasets as tfds

from tlb_jax import input_pipeline


@contextlib.contextmanager
def mock_cifar(num_examples: int):
  """Every split of every TFDS dataset yields `num_examples` random examples.

  `tfds.testing.mock_data` ignores split slices and knows no split sizes, so `as_dataset(...,
  batch_size=-1)` would batch by `sys.maxsize`; the split size is patched to `num_examples`.
  The mocked `download_and_prepare` is a no-op, and the download site counts as reachable.
  """
  with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
      tfds.core.SplitDict, 'total_num_examples', new_callable=mock.PropertyMock,
      return_value=num_examples), mock.patch.object(input_pipeline, 'can_reach',
                                                    return_value=True):
    yield
