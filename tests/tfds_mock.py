"""Fake CIFAR for tests: `tfds.testing.mock_data` with every split of `num_examples` images."""

import contextlib
from unittest import mock

import tensorflow_datasets as tfds


@contextlib.contextmanager
def mock_cifar(num_examples: int):
  """Every split of every TFDS dataset yields `num_examples` random examples.

  `tfds.testing.mock_data` ignores split slices and knows no split sizes, so `as_dataset(...,
  batch_size=-1)` would batch by `sys.maxsize`; the split size is patched to `num_examples`.
  Use with `config.download=True`: the mocked `download_and_prepare` is a no-op.
  """
  with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
      tfds.core.SplitDict, 'total_num_examples', new_callable=mock.PropertyMock,
      return_value=num_examples):
    yield
