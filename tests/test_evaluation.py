"""Per-class figures of the final test: the confusion matrix, per-class and superclass top-1,
and the class -> superclass map read from the dataset."""

import numpy as np
import jax.numpy as jnp
import pytest

from configs import smoke
from tfds_mock import mock_cifar
from tlb_jax import evaluation, input_pipeline, plots
from tlb_jax.input_pipeline import Split, Superclasses


def _one_hot_logits(predicted, num_classes):
  return jnp.eye(num_classes)[jnp.asarray(predicted)]


def test_confusion_matrix_counts_true_class_by_predicted_class_and_skips_padding():
  """Row = true class, column = top-1 prediction; examples whose mask is False do not count."""
  labels = jnp.array([0, 0, 1, 2, 2, 2])
  predicted = jnp.array([0, 1, 1, 2, 0, 1])
  mask = jnp.array([True, True, True, True, True, False])
  matrix = evaluation.ConfusionMatrix.from_model_output(
      logits=_one_hot_logits(predicted, 3), labels=labels, mask=mask).compute()
  np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_confusion_matrices_merge_by_adding():
  a = evaluation.ConfusionMatrix(matrix=jnp.array([[1, 0], [2, 3]]))
  b = evaluation.ConfusionMatrix(matrix=jnp.array([[0, 4], [1, 1]]))
  np.testing.assert_array_equal(a.merge(b).compute(), [[1, 4], [3, 4]])


def test_class_results_give_per_class_and_superclass_top1_exactly():
  """Per-class top-1 is the diagonal over the row; a prediction counts for the superclass when
  its class is in the true class's superclass."""
  confusion = np.array([[3, 1, 0, 0],    # class a: 3 right, 1 as b (same superclass)
                        [0, 2, 2, 0],    # class b: 2 right, 2 as c (other superclass)
                        [0, 0, 0, 0],    # class c: no examples
                        [1, 0, 1, 2]])   # class d: 2 right, 1 as a (other), 1 as c (same)
  superclasses = Superclasses(names=('ab', 'cd'), of_class=(0, 0, 1, 1))
  fields = evaluation.class_results(confusion, ['a', 'b', 'c', 'd'], superclasses)
  assert fields['test_per_class_top1'] == {'a': 0.75, 'b': 0.5, 'c': None, 'd': 0.5}
  assert fields['test_superclass_top1'] == (4 + 2 + 3) / 12


def test_class_results_without_superclasses_have_no_superclass_figure():
  fields = evaluation.class_results(np.eye(3, dtype=np.int64), ['a', 'b', 'c'], None)
  assert 'test_superclass_top1' not in fields
  assert fields['test_per_class_top1'] == {'a': 1.0, 'b': 1.0, 'c': 1.0}


def test_a_class_of_unknown_superclass_only_matches_itself():
  superclasses = Superclasses(names=('x',), of_class=(-1, -1))
  fields = evaluation.class_results(np.array([[1, 1], [1, 1]]), ['a', 'b'], superclasses)
  assert fields['test_superclass_top1'] == 0.5


def test_superclasses_are_read_off_the_splits_label_pairs():
  """Each class takes the superclass of its examples; a class without examples gets -1."""
  split = Split(images=np.zeros((5, 1, 1, 3), np.uint8), labels=np.array([0, 1, 1, 3, 0]),
                coarse_labels=np.array([1, 0, 0, 1, 1]))
  superclasses = input_pipeline.superclasses_of(split, 4, ('p', 'q'))
  assert superclasses == Superclasses(names=('p', 'q'), of_class=(1, 0, -1, 1))


def test_mock_cifar100_superclass_top1_of_known_predictions():
  """On mocked CIFAR-100: predicting every test image's own class scores 1 everywhere;
  predicting class (label + 1) % 100 scores 0 per class and, for the superclass, exactly the
  fraction of images whose next class shares their superclass."""
  config = smoke.get_config()
  config.dataset = 'cifar100'
  with mock_cifar(64):
    data = input_pipeline.load(config)
  assert data.superclasses is not None and len(data.superclasses.names) == 20
  labels = jnp.asarray(data.test.labels)
  of_class = np.asarray(data.superclasses.of_class)

  def fields_of(predicted):
    confusion = np.asarray(evaluation.ConfusionMatrix.from_model_output(
        logits=_one_hot_logits(predicted, 100), labels=labels).compute())
    return evaluation.class_results(confusion, data.class_names, data.superclasses)

  right = fields_of(labels)
  assert right['test_superclass_top1'] == 1.0
  assert {v for v in right['test_per_class_top1'].values() if v is not None} == {1.0}
  shifted = (np.asarray(labels) + 1) % 100
  wrong = fields_of(jnp.asarray(shifted))
  true_of, next_of = of_class[np.asarray(labels)], of_class[shifted]
  expected = np.mean((true_of == next_of) & (true_of >= 0))
  assert wrong['test_superclass_top1'] == pytest.approx(expected, abs=0)
  assert {v for v in wrong['test_per_class_top1'].values() if v is not None} == {0.0}


def test_confusion_picture_orders_classes_by_superclass():
  """The picture groups classes by superclass: the order is stable within a group."""
  np.testing.assert_array_equal(plots.confusion_order(5, (1, 0, 1, 0, 2)), [1, 3, 0, 2, 4])
  np.testing.assert_array_equal(plots.confusion_order(3, None), [0, 1, 2])


def test_confusion_rows_are_normalised_and_empty_rows_stay_zero():
  np.testing.assert_allclose(plots.row_normalised(np.array([[1, 3], [0, 0]])),
                             [[0.25, 0.75], [0.0, 0.0]])


@pytest.mark.parametrize('num_classes', [10, 100])
def test_confusion_picture_is_an_rgb_image(num_classes):
  confusion = np.eye(num_classes, dtype=np.int64) * 5
  grouping = tuple(i // 5 for i in range(num_classes)) if num_classes == 100 else None
  names = tuple(f'g{i}' for i in range(20)) if grouping else None
  image = plots.plot_confusion(confusion, [f'c{i}' for i in range(num_classes)], grouping, names)
  expected = plots.CONFUSION_SIZE_MANY if num_classes == 100 else plots.CONFUSION_SIZE
  assert image.shape == (expected[1], expected[0], 3) and image.dtype == np.uint8
