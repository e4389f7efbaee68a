"""CIFAR data from TFDS, held in host memory as uint8, served as seeded, resumable batches.

Augmentation is not done here: it runs on the accelerator inside the jitted step
(`tlb_jax.augment`), so batches are raw uint8 images and int32 labels.
"""

import dataclasses
import os
import re
import socket
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tlb_jax.choices import DATASETS

# Used when a prepared TFDS dir was copied without its label files and TFDS names classes '0'..'9'.
CIFAR10_CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                       'ship', 'truck')


class DataError(Exception):
  """The dataset cannot be loaded; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
  """A split in host memory: images (N, H, W, 3) uint8, labels (N,) int32 and, for datasets
  with superclasses (CIFAR-100), coarse_labels (N,) int32."""

  images: np.ndarray
  labels: np.ndarray
  coarse_labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  eval: Split | None  # None when config.eval_split is '' (a final run on all training data)
  test: Split | None  # None when config.test_split is ''
  num_classes: int
  class_names: tuple[str, ...]
  superclasses: 'Superclasses | None' = None  # CIFAR-100's 20 coarse classes

  @property
  def pictured(self) -> Split:
    """The split whose images the attention pictures show (see `picture_split`)."""
    return self.test if self.test is not None else self.eval


# Where TFDS downloads CIFAR from: checked before a download, so that a machine without a network
# stops in seconds instead of waiting for TFDS's retries.
DOWNLOAD_HOST = ('www.cs.toronto.edu', 443)
REACHABLE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class Superclasses:
  """A grouping of the classes into coarser ones (CIFAR-100's 20 superclasses)."""

  names: tuple[str, ...]
  of_class: tuple[int, ...]  # of_class[c]: the superclass of class c, -1 if unknown


def superclasses_of(split: Split, num_classes: int, names: tuple[str, ...]) -> Superclasses:
  """The dataset's own class -> superclass map, read off the (label, coarse_label) pairs of
  `split`: each class takes the superclass most of its examples carry (in CIFAR-100, all of
  them); a class without examples in `split` gets -1."""
  pairs = np.zeros((num_classes, len(names)), np.int64)
  np.add.at(pairs, (split.labels, split.coarse_labels), 1)
  of_class = np.where(pairs.sum(axis=1) > 0, pairs.argmax(axis=1), -1)
  return Superclasses(names=names, of_class=tuple(int(c) for c in of_class))


def _prepare_hint(config) -> str:
  return (f'prepare it on a machine with a network (`tfds build {config.dataset} '
          '--data_dir=DIR`), copy DIR here and pass --config.data_dir=DIR')


def can_reach(address: tuple[str, int] = DOWNLOAD_HOST,
              timeout_s: float = REACHABLE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to `address` opens within `timeout_s`."""
  try:
    with socket.create_connection(address, timeout=timeout_s):
      return True
  except OSError:
    return False


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns a prepared TFDS builder for `config.dataset`, downloading and preparing it first if
  it is missing and the download site can be reached; else raises DataError."""
  if config.dataset not in DATASETS:
    raise DataError(f'config.dataset must be one of {DATASETS}, got {config.dataset!r}')
  data_dir = config.data_dir
  if data_dir is not None and not os.path.isdir(data_dir):
    raise DataError(f'--config.data_dir={data_dir} is not a directory; {_prepare_hint(config)}')
  builder = tfds.builder(config.dataset, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  where = data_dir or tfds.core.constants.DATA_DIR
  if not can_reach():
    raise DataError(f'{config.dataset} is not prepared in {where} and {DOWNLOAD_HOST[0]} cannot '
                    f'be reached to download it; {_prepare_hint(config)}')
  logging.info('%s is not prepared in %s: downloading and preparing it', config.dataset, where)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise DataError(f'{config.dataset} is not prepared in {where} and downloading it failed '
                    f'({cause}); {_prepare_hint(config)}') from None
  return builder


# A split string ending in this takes its slice in the order of the dataset's original files
# (CIFAR's data_batch_1..5, as Keras' `cifar10.load_data()` returns them) rather than TFDS's.
OFFICIAL_ORDER = '@official'
_OFFICIAL_SLICE = re.compile(r'^(\w+)\[(-?\d*):(-?\d*)\]$')


def official_order(ids: np.ndarray) -> np.ndarray:
  """The permutation that puts examples in their original files' order, from TFDS CIFAR ids
  such as b'train_00042' (the index in the original files)."""
  return np.argsort([int(i.decode().rsplit('_', 1)[1]) for i in ids], kind='stable')


def _read(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """A TFDS split string (e.g. 'train[:40000]', or 'train[:40000]@official') as numpy arrays."""
  if not split.endswith(OFFICIAL_ORDER):
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  match = _OFFICIAL_SLICE.match(split[:-len(OFFICIAL_ORDER)])
  if match is None:
    raise ValueError(f'{OFFICIAL_ORDER} takes a split with an example slice such as '
                     f'train[:40000]{OFFICIAL_ORDER}')
  name, start, stop = match.groups()
  data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1))
  chosen = official_order(data['id'])[slice(int(start) if start else None,
                                            int(stop) if stop else None)]
  return {key: value[chosen] for key, value in data.items()}


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> Split:
  """Reads a whole split into memory: a TFDS split string such as 'train[:40000]', or one with
  an example slice followed by '@official', sliced in the original files' order (the Keras
  example's 'train[:40000]@official' / 'train[40000:]@official')."""
  try:
    data = _read(builder, split)
  except (ValueError, AssertionError, KeyError) as e:
    raise DataError(f'cannot read split {split!r} of {builder.name}: {e}') from None
  if len(data['label']) == 0:
    raise DataError(f'split {split!r} of {builder.name} is empty; check the split slice')
  coarse = data.get('coarse_label')
  return Split(images=np.ascontiguousarray(data['image'], dtype=np.uint8),
               labels=np.asarray(data['label'], dtype=np.int32),
               coarse_labels=None if coarse is None else np.asarray(coarse, dtype=np.int32))


def picture_split(config: ml_collections.ConfigDict) -> str:
  """The split whose images the attention pictures show: test, else validation."""
  return config.test_split or config.eval_split


def load(config: ml_collections.ConfigDict) -> Dataset:
  """Loads train, eval (validation) and test splits named in the config (no validation or test
  split when `config.eval_split` or `config.test_split` is empty)."""
  builder = get_builder(config)
  label = builder.info.features['label']
  class_names = tuple(label.names)
  if config.dataset == 'cifar10' and class_names == tuple(map(str, range(10))):
    class_names = CIFAR10_CLASS_NAMES
  train = load_split(builder, config.train_split)
  superclasses = None
  if 'coarse_label' in builder.info.features:
    superclasses = superclasses_of(train, label.num_classes,
                                   tuple(builder.info.features['coarse_label'].names))
  return Dataset(
      train=train,
      eval=load_split(builder, config.eval_split) if config.eval_split else None,
      test=load_split(builder, config.test_split) if config.test_split else None,
      num_classes=label.num_classes,
      class_names=class_names,
      superclasses=superclasses,
  )


def _host_slice(indices: np.ndarray) -> np.ndarray:
  """The part of a global batch that this process feeds to its local devices."""
  per_host = len(indices) // jax.process_count()
  start = jax.process_index() * per_host
  return indices[start:start + per_host]


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of training examples in `epoch`; a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(split: Split, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled training batches, resumable at any step.

  Each epoch is a fresh permutation drawn from (seed, epoch) and drops its last partial batch,
  so the batch at global step s is the same whether or not the run was interrupted.

  Yields:
    {'image': (batch_size / process_count, H, W, 3) uint8, 'label': (...,) int32}.
  """
  steps_per_epoch = len(split) // batch_size
  if steps_per_epoch == 0:
    raise DataError(f'the training split has {len(split)} examples, fewer than one batch of '
                    f'{batch_size}; lower --config.batch_size')
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    order = epoch_permutation(len(split), seed, epoch)
    for step in range(offset, steps_per_epoch):
      # Sorted gathers read memory in order; the batch's order does not matter to the step.
      # Sorting the global batch before taking this process's slice gives every device the
      # same examples whatever the number of processes (and so the same augmentation draws).
      indices = _host_slice(np.sort(order[step * batch_size:(step + 1) * batch_size]))
      yield {'image': split.images[indices], 'label': split.labels[indices]}
    epoch, offset = epoch + 1, 0


def eval_batches(split: Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch is padded and `mask` marks real examples.

  Yields:
    {'image': (batch_size / process_count, H, W, 3) uint8, 'label': (...,) int32,
     'mask': (...,) bool}.
  """
  for start in range(0, len(split), batch_size):
    indices = np.arange(start, start + batch_size)
    mask = indices < len(split)
    indices = _host_slice(np.where(mask, indices, 0))
    yield {'image': split.images[indices], 'label': split.labels[indices],
           'mask': _host_slice(mask)}


def shard(batch: dict[str, np.ndarray], num_devices: int) -> dict[str, np.ndarray]:
  """(B, ...) -> (num_devices, B / num_devices, ...) for pmap."""
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}
