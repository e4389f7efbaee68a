"""Tests of CIFAR loading (mocked TFDS and the real data), batching, and augmentation."""

import itertools
import os
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import smoke
from tfds_mock import mock_cifar
from tlb_jax import augment, input_pipeline
from tlb_jax.input_pipeline import DataError, Split

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'tfds')
needs_real_data = pytest.mark.skipif(
    not os.path.isdir(os.path.join(REAL_DATA_DIR, 'cifar10')),
    reason=f'real CIFAR-10 TFDS data not in {REAL_DATA_DIR}')

MOCK_EXAMPLES = 24


def _config(**overrides):
  config = smoke.get_config()
  config.update(overrides)
  return config


def _split(num_examples: int) -> Split:
  """Example i has label i and every pixel equal to i (mod 256), so batches can be traced."""
  labels = np.arange(num_examples, dtype=np.int32)
  images = np.broadcast_to((labels % 256).astype(np.uint8)[:, None, None, None],
                           (num_examples, 2, 2, 3)).copy()
  return Split(images=images, labels=labels)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


# ------------------------------------------------------------------------------------ loading


@pytest.fixture(scope='module', params=[('cifar10', 10), ('cifar100', 100)],
                ids=['cifar10', 'cifar100'])
def mocked(request):
  """(dataset loaded from mocked TFDS, expected number of classes)."""
  name, num_classes = request.param
  with mock_cifar(MOCK_EXAMPLES):
    data = input_pipeline.load(_config(dataset=name))
  return data, num_classes


def test_load_gives_uint8_images_and_int32_labels(mocked):
  """Every split holds (N, 32, 32, 3) uint8 images and (N,) int32 labels within the classes."""
  data, num_classes = mocked
  for split in (data.train, data.eval, data.test):
    assert split.images.shape == (MOCK_EXAMPLES, 32, 32, 3)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (MOCK_EXAMPLES,)
    assert split.labels.dtype == np.int32
    assert 0 <= split.labels.min() and split.labels.max() < num_classes
    assert len(split) == MOCK_EXAMPLES


def test_load_reports_num_classes_and_one_name_per_class(mocked):
  """num_classes is 10 for CIFAR-10 and 100 for CIFAR-100, with a name for each class."""
  data, num_classes = mocked
  assert data.num_classes == num_classes
  assert len(data.class_names) == num_classes
  if num_classes == 10:
    assert data.class_names == input_pipeline.CIFAR10_CLASS_NAMES


@pytest.mark.parametrize('empty', ['eval_split', 'test_split'])
def test_load_skips_an_empty_split_and_pictures_the_other(empty):
  """An empty eval_split or test_split loads as None; the attention pictures use the split
  that is left."""
  with mock_cifar(MOCK_EXAMPLES):
    data = input_pipeline.load(_config(**{empty: ''}))
  assert getattr(data, empty.removesuffix('_split')) is None
  assert data.pictured is (data.eval if empty == 'test_split' else data.test)
  assert data.pictured is not None


@needs_real_data
def test_load_real_cifar10_splits_of_smoke_config():
  """The smoke config's slices of the real CIFAR-10 have the expected sizes and classes."""
  data = input_pipeline.load(_config(data_dir=REAL_DATA_DIR))
  assert (len(data.train), len(data.eval), len(data.test)) == (4096, 1000, 10000)
  assert data.train.images.shape[1:] == (32, 32, 3) and data.train.images.dtype == np.uint8
  assert data.num_classes == 10
  assert data.class_names == input_pipeline.CIFAR10_CLASS_NAMES
  assert set(np.unique(data.test.labels)) == set(range(10))


def test_official_order_sorts_examples_by_their_index_in_the_original_files():
  ids = np.array([b'train_00002', b'train_00000', b'train_10000', b'train_00001'])
  np.testing.assert_array_equal(input_pipeline.official_order(ids), [1, 3, 0, 2])


@needs_real_data
def test_an_official_order_split_slices_cifar10_as_keras_load_data_orders_it():
  """'train[:40000]@official' starts with data_batch_1's first images (frog, truck, truck,
  deer, ...), as Keras' `cifar10.load_data()` does; with 'train[40000:]@official' it partitions
  the training set."""
  builder = input_pipeline.get_builder(_config(data_dir=REAL_DATA_DIR))
  first = input_pipeline.load_split(builder, 'train[:40000]@official')
  rest = input_pipeline.load_split(builder, 'train[40000:]@official')
  assert (len(first), len(rest)) == (40000, 10000)
  np.testing.assert_array_equal(first.labels[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  # CIFAR-10's training set has 5,000 images of each class.
  np.testing.assert_array_equal(
      np.bincount(np.concatenate([first.labels, rest.labels]), minlength=10), [5000] * 10)


def test_an_official_order_split_needs_an_example_slice():
  with mock_cifar(MOCK_EXAMPLES), pytest.raises(DataError) as e:
    input_pipeline.load(_config(train_split='train[:50%]@official'))
  assert 'train[:40000]@official' in str(e.value) and '\n' not in str(e.value)


def test_missing_data_offline_raises_one_line_error_naming_data_dir(tmp_path):
  """Unprepared data with the download site out of reach is a one-line DataError that names
  the data dir and says to pass --config.data_dir, without starting a download."""
  with mock.patch.object(input_pipeline, 'can_reach', return_value=False), mock.patch.object(
      tfds.core.DatasetBuilder, 'download_and_prepare') as download:
    with pytest.raises(DataError) as error:
      input_pipeline.load(_config(data_dir=str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message
  assert '--config.data_dir' in message and 'cannot be reached' in message
  assert str(tmp_path) in message and 'cifar10' in message
  download.assert_not_called()


def test_missing_data_is_downloaded_when_the_site_is_reachable(tmp_path):
  """Unprepared data is downloaded and prepared by TFDS when the download site answers."""
  with mock.patch.object(input_pipeline, 'can_reach', return_value=True), mock.patch.object(
      tfds.core.DatasetBuilder, 'download_and_prepare') as download:
    with pytest.raises(DataError):  # the mocked download prepares nothing to read
      input_pipeline.load(_config(data_dir=str(tmp_path)))
  download.assert_called_once()


def test_can_reach_is_false_within_its_timeout_for_a_closed_port():
  """A port nobody listens on is unreachable, and the answer comes within the timeout."""
  start = time.monotonic()
  assert not input_pipeline.can_reach(('127.0.0.1', 9), timeout_s=1.0)
  assert time.monotonic() - start < 2.0


def test_nonexistent_data_dir_raises_data_error(tmp_path):
  """A data_dir that does not exist is a DataError that names it."""
  missing = str(tmp_path / 'no_such_dir')
  with pytest.raises(DataError, match='is not a directory') as error:
    input_pipeline.load(_config(data_dir=missing))
  assert missing in str(error.value)


def test_unknown_dataset_raises_data_error():
  """A dataset other than CIFAR-10/100 is a DataError."""
  with pytest.raises(DataError, match="got 'mnist'"):
    input_pipeline.get_builder(_config(dataset='mnist'))


@needs_real_data
@pytest.mark.parametrize('split', ['train[10:10]', 'test[:0]'])
def test_empty_split_slice_raises_data_error(split):
  """A split slice that selects no examples is a DataError naming the split."""
  with pytest.raises(DataError) as error:
    input_pipeline.load(_config(data_dir=REAL_DATA_DIR, train_split=split))
  assert repr(split) in str(error.value)


# ------------------------------------------------------------------------------ train batches


def test_train_batches_are_deterministic_for_a_seed():
  """Two iterators with the same seed yield identical batches, across epochs."""
  split = _split(50)
  first = _take(input_pipeline.train_batches(split, 8, seed=3), 14)
  second = _take(input_pipeline.train_batches(split, 8, seed=3), 14)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])


def test_train_batches_differ_across_seeds():
  """Different seeds give a different order."""
  split = _split(50)
  first = _take(input_pipeline.train_batches(split, 8, seed=0), 6)
  second = _take(input_pipeline.train_batches(split, 8, seed=1), 6)
  assert any(set(a['label']) != set(b['label']) for a, b in zip(first, second))


def test_each_epoch_is_a_new_permutation_without_repeats():
  """An epoch is floor(N / B) batches of distinct examples; the next epoch has another order."""
  split = _split(50)  # 6 batches of 8 per epoch, 2 examples dropped
  batches = _take(input_pipeline.train_batches(split, 8, seed=0), 12)
  epochs = [np.concatenate([b['label'] for b in batches[:6]]),
            np.concatenate([b['label'] for b in batches[6:]])]
  for labels in epochs:
    assert len(labels) == 48 and len(set(labels)) == 48
  assert [set(b['label']) for b in batches[:6]] != [set(b['label']) for b in batches[6:]]


def test_train_batch_images_belong_to_their_labels():
  """Images and labels are gathered with the same indices; batches have the requested shape."""
  split = _split(50)
  for batch in _take(input_pipeline.train_batches(split, 8, seed=0), 7):
    assert batch['image'].shape == (8, 2, 2, 3) and batch['label'].shape == (8,)
    np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'])


@pytest.mark.parametrize('start_step', [1, 5, 6, 9, 13])
def test_resuming_at_step_k_yields_the_uninterrupted_batches_from_k(start_step):
  """train_batches(start_step=k) continues exactly as an uninterrupted iterator from step k,
  also across epoch boundaries (6 steps per epoch)."""
  split = _split(50)
  uninterrupted = _take(input_pipeline.train_batches(split, 8, seed=7), start_step + 8)
  resumed = _take(input_pipeline.train_batches(split, 8, seed=7, start_step=start_step), 8)
  for a, b in zip(uninterrupted[start_step:], resumed):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])


def test_train_split_smaller_than_a_batch_raises_data_error():
  """Fewer examples than one batch is a DataError that says to lower the batch size."""
  with pytest.raises(DataError, match='--config.batch_size'):
    next(input_pipeline.train_batches(_split(5), 8, seed=0))


# ------------------------------------------------------------------------------- eval batches


@pytest.mark.parametrize('num_examples', [23, 20, 3])
def test_eval_batches_pad_and_mask_so_each_example_counts_once(num_examples):
  """All batches have the full size; the mask selects every example exactly once, in order."""
  split = _split(num_examples)
  batches = list(input_pipeline.eval_batches(split, 10))
  assert len(batches) == -(-num_examples // 10)
  for batch in batches:
    assert batch['image'].shape == (10, 2, 2, 3)
    assert batch['label'].shape == batch['mask'].shape == (10,)
    assert batch['mask'].dtype == bool
    np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'])
  counted = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(counted, np.arange(num_examples))


def test_shard_splits_the_batch_across_devices():
  """shard reshapes (B, ...) to (devices, B / devices, ...) keeping the order."""
  batch = next(input_pipeline.eval_batches(_split(8), 8))
  sharded = input_pipeline.shard(batch, 2)
  assert sharded['image'].shape == (2, 4, 2, 2, 3)
  assert sharded['mask'].shape == (2, 4)
  np.testing.assert_array_equal(sharded['label'][1], np.arange(4, 8))


# ------------------------------------------------------------------------------- augmentation


def _uint8_images(batch=4, size=32, seed=0):
  images = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  images[:, 0, 0] = 0
  images[:, 0, 1] = 255
  return images


def test_train_preprocess_shape_dtype_and_range():
  """uint8 (B, 32, 32, 3) -> float32 (B, image_size, image_size, 3) in [0, 1]."""
  out = augment.train_preprocess(jax.random.PRNGKey(0), _uint8_images(), resize_size=36,
                                 image_size=30)
  assert out.shape == (4, 30, 30, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_train_preprocess_is_deterministic_for_an_rng():
  """The same rng gives the same crops and flips."""
  images = _uint8_images()
  run = lambda: augment.train_preprocess(jax.random.PRNGKey(5), images, resize_size=36,
                                         image_size=32)
  np.testing.assert_array_equal(run(), run())


def test_train_preprocess_varies_across_rngs():
  """Different rngs give different augmentations of the same images."""
  images = _uint8_images()
  outs = [augment.train_preprocess(jax.random.PRNGKey(seed), images, resize_size=36,
                                   image_size=32) for seed in range(3)]
  assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])


def test_random_crop_takes_independent_windows_of_each_image():
  """Each crop is a contiguous window of its image; offsets vary within the batch and cover
  the valid range only."""
  rows, cols = np.meshgrid(np.arange(10), np.arange(10), indexing='ij')
  coded = (rows * 100 + cols).astype(np.float32)[None, :, :, None]
  images = jnp.asarray(np.repeat(coded, 32, axis=0))
  crops = np.asarray(augment.random_crop(jax.random.PRNGKey(0), images, 4))
  assert crops.shape == (32, 4, 4, 1)
  offsets = []
  for crop in crops:
    row, col = divmod(int(crop[0, 0, 0]), 100)
    assert 0 <= row <= 6 and 0 <= col <= 6
    np.testing.assert_array_equal(crop[..., 0], coded[0, row:row + 4, col:col + 4, 0])
    offsets.append((row, col))
  assert len(set(offsets)) > 1


def test_crop_is_identity_when_resize_equals_image_size():
  """With resize_size == image_size and no flip, preprocessing is only the rescale to [0, 1]."""
  images = _uint8_images()
  out = augment.train_preprocess(jax.random.PRNGKey(1), images, resize_size=32, image_size=32,
                                 flip=False)
  np.testing.assert_allclose(out, images / 255.0, rtol=1e-6)


def test_reflect_pad_mirrors_the_borders_without_repeating_the_edge():
  row = jnp.arange(4, dtype=jnp.float32).reshape(1, 1, 4, 1).repeat(4, axis=1)
  padded = np.asarray(augment.reflect_pad(row, 2))
  assert padded.shape == (1, 8, 8, 1)
  np.testing.assert_array_equal(padded[0, 3, :, 0], [2, 1, 0, 1, 2, 3, 2, 1])


def test_padded_random_crop_is_a_window_of_the_reflect_padded_image():
  """With padding and resize_size == image_size, each training crop is a window of the
  reflect-padded image, shifted by up to the padding."""
  images = _uint8_images(batch=16, size=8)
  padded = np.asarray(augment.reflect_pad(augment.to_unit_float(images), 2))
  crops = np.asarray(augment.train_preprocess(jax.random.PRNGKey(0), images, resize_size=8,
                                              image_size=8, flip=False, padding=2))
  shifts = set()
  for crop, canvas in zip(crops, padded):
    matches = [(r, c) for r in range(5) for c in range(5)
               if np.array_equal(crop, canvas[r:r + 8, c:c + 8])]
    assert matches
    shifts.add(matches[0])
  assert len(shifts) > 1


def test_eval_views_with_padding_keep_the_image_at_the_centre_and_take_corners_of_the_canvas():
  images = _uint8_images()
  padded = np.asarray(augment.reflect_pad(augment.to_unit_float(images), 4))
  views = np.asarray(augment.eval_views(images, image_size=32, augmentation='crops_flip',
                                        padding=4))
  np.testing.assert_allclose(views[0], images / np.float32(255), rtol=1e-6)
  np.testing.assert_array_equal(views[1], padded[:, :32, :32])
  np.testing.assert_array_equal(views[4], padded[:, 8:, 8:])


def test_random_flip_mirrors_some_images_left_right():
  """Each image is either unchanged or mirrored left-right, and both happen in a batch."""
  images = jnp.asarray(_uint8_images(batch=32) / 255.0, jnp.float32)
  out = np.asarray(augment.random_flip(jax.random.PRNGKey(0), images))
  flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, np.asarray(images))]
  kept = [np.array_equal(o, x) for o, x in zip(out, np.asarray(images))]
  assert all(f or k for f, k in zip(flipped, kept))
  assert any(flipped) and any(kept)


def test_eval_view_resizes_to_image_size():
  """uint8 (B, 32, 32, 3) -> float32 (B, image_size, image_size, 3); no resize at 32 is x/255."""
  images = _uint8_images()
  out = augment.eval_views(images, image_size=48)[0]
  assert out.shape == (4, 48, 48, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  np.testing.assert_allclose(augment.eval_views(images, image_size=32)[0], images / 255.0,
                             rtol=1e-6)


def test_eval_view_with_a_resize_size_is_the_central_crop():
  images = _uint8_images()
  resized = augment.resize(augment.to_unit_float(images), 36)
  np.testing.assert_array_equal(augment.eval_views(images, image_size=32, resize_size=36)[0],
                                resized[:, 2:34, 2:34])


def test_eval_views_are_the_centre_and_corner_crops_then_their_mirror_images():
  images = _uint8_images()
  resized = np.asarray(augment.resize(augment.to_unit_float(images), 36))
  views = np.asarray(augment.eval_views(images, image_size=32, resize_size=36,
                                        augmentation='crops_flip'))
  crops = [resized[:, r:r + 32, c:c + 32] for r, c in ((2, 2), (0, 0), (0, 4), (4, 0), (4, 4))]
  assert views.shape == (10, 4, 32, 32, 3)
  np.testing.assert_array_equal(views, np.stack(crops + [c[:, :, ::-1] for c in crops]))


@pytest.mark.parametrize('augmentation, num_views', [('none', 1), ('flip', 2)])
def test_eval_views_without_crops_are_the_resized_image_and_its_mirror_image(augmentation,
                                                                            num_views):
  images = _uint8_images()
  views = np.asarray(augment.eval_views(images, image_size=32, augmentation=augmentation))
  expected = [images / np.float32(255), images[:, :, ::-1] / np.float32(255)][:num_views]
  np.testing.assert_allclose(views, np.stack(expected), rtol=1e-6)


def _unit_images(batch=6, size=8, seed=0):
  return np.random.default_rng(seed).uniform(size=(batch, size, size, 3)).astype(np.float32)


def test_mixup_averages_each_image_with_its_partner_in_the_reversed_batch():
  images = _unit_images()
  mixed, weight = augment.mix_batch(jax.random.PRNGKey(0), images, mixup_alpha=0.4,
                                    cutmix_alpha=0.0)
  assert 0.0 < float(weight) < 1.0
  np.testing.assert_allclose(mixed, weight * images + (1 - weight) * images[::-1], rtol=1e-6)


def test_cutmix_pastes_one_box_of_the_partner_whose_area_is_one_minus_the_weight():
  images = _unit_images(size=32)
  for seed in range(5):
    mixed, weight = augment.mix_batch(jax.random.PRNGKey(seed), images, mixup_alpha=0.0,
                                      cutmix_alpha=1.0)
    mixed = np.asarray(mixed)
    from_partner = np.all(mixed == images[::-1], axis=-1)
    assert np.all(from_partner | np.all(mixed == images, axis=-1))
    pasted = from_partner[0]  # the same box in every image
    np.testing.assert_array_equal(from_partner, np.broadcast_to(pasted, from_partner.shape))
    rows, cols = np.nonzero(pasted)
    if rows.size:
      assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a box
    np.testing.assert_allclose(float(weight), 1.0 - pasted.mean(), rtol=1e-6)


def test_with_both_alphas_each_batch_uses_mixup_or_cutmix():
  images = _unit_images(size=16)
  kinds = set()
  for seed in range(20):
    mixed, weight = augment.mix_batch(jax.random.PRNGKey(seed), images, mixup_alpha=1.0,
                                      cutmix_alpha=1.0)
    mixed = np.asarray(mixed)
    if np.allclose(mixed, weight * images + (1 - weight) * images[::-1], rtol=1e-6):
      kinds.add('mixup')
    elif np.all((mixed == images) | (mixed == images[::-1])):
      kinds.add('cutmix')
  assert kinds == {'mixup', 'cutmix'}


def test_mix_batch_without_an_alpha_is_an_error():
  with pytest.raises(ValueError, match='mixup_alpha > 0 or cutmix_alpha > 0'):
    augment.mix_batch(jax.random.PRNGKey(0), _unit_images(), mixup_alpha=0.0, cutmix_alpha=0.0)
