"""Evaluation: losses and metrics shared with training, the pmapped eval step and a whole-split
pass."""

import functools
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics
from flax import jax_utils

from tlb_jax import augment, input_pipeline


@flax.struct.dataclass
class ConfusionMatrix(metrics.Metric):
  """Counts (K, K) int32: row the true class, column the predicted (top-1) class."""

  matrix: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, logits: jnp.ndarray, labels: jnp.ndarray,
                        mask: jnp.ndarray | None = None, **_) -> 'ConfusionMatrix':
    num_classes = logits.shape[-1]
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    if mask is not None:
      true = true * mask[:, None].astype(jnp.int32)
    predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=jnp.int32)
    return cls(matrix=jnp.einsum('bi,bj->ij', true, predicted))

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> jnp.ndarray:
    return self.matrix


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy
  top5_accuracy: metrics.Average.from_output('top5_correct')


@flax.struct.dataclass
class FinalEvalMetrics(metrics.Collection):
  """EvalMetrics and the confusion matrix, for the final evaluations. (clu collects a
  collection's metrics from its own annotations, so this cannot subclass EvalMetrics.)"""

  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy
  top5_accuracy: metrics.Average.from_output('top5_correct')
  confusion: ConfusionMatrix


def cross_entropy_loss(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy in float32: logits (B, K), labels (B,) -> (B,)."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def top5_correct(logits, labels):
  """(B, K), (B,) -> (B,) float32, 1 where the label is among the 5 largest logits."""
  k = min(5, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def eval_logits(apply_fn, params, views):
  """Float32 logits (B, num_classes): the mean over views (V, B, S, S, 3) from
  `augment.eval_views` of the model's logits (one view: that view's logits)."""
  # lax.map traces the model once and keeps one view's activations alive at a time.
  logits = jax.lax.map(lambda images: apply_fn({'params': params}, images, train=False), views)
  return logits.astype(jnp.float32).mean(axis=0)


def eval_step(params, batch, *, apply_fn, image_size: int, resize_size: int = 0,
              augmentation: str = 'none', padding: int = 0, with_confusion: bool = False):
  """Metrics of a padded per-device batch; padding (mask False) does not count. `padding` is
  the views' reflect padding (`augment.eval_views`), not the batch's. With `with_confusion`
  the metrics hold the confusion matrix too (`FinalEvalMetrics`)."""
  views = augment.eval_views(batch['image'], image_size=image_size, resize_size=resize_size,
                             augmentation=augmentation, padding=padding)
  logits = eval_logits(apply_fn, params, views)
  collection = FinalEvalMetrics if with_confusion else EvalMetrics
  return collection.gather_from_model_output(
      loss=cross_entropy_loss(logits, batch['label']), logits=logits, labels=batch['label'],
      top5_correct=top5_correct(logits, batch['label']), mask=batch['mask'])


def make_eval_step(config: ml_collections.ConfigDict, model, test_time: bool = False):
  """`eval_step` with the model and input size bound; pmap it over axis 'batch'. With
  `test_time`, it averages the views of `config.test_time_augmentation` and counts the
  confusion matrix (final evaluations); without, it scores the central view only (the cheap
  per-epoch validation)."""
  return functools.partial(eval_step, apply_fn=model.apply, image_size=config.image_size,
                           with_confusion=test_time, **eval_view_args(config, test_time))


def eval_view_args(config: ml_collections.ConfigDict, test_time: bool) -> dict[str, Any]:
  """`augment.eval_views` keyword arguments of `config`."""
  return {'resize_size': config.eval_resize_size,
          'augmentation': config.test_time_augmentation if test_time else 'none',
          'padding': config.crop_padding}


def evaluate(p_eval_step, params, split: input_pipeline.Split,
             batch_size: int) -> dict[str, Any]:
  """Evaluates replicated `params` on every example of `split` once -> scalar metrics, the
  example count and, from a step that counts it, 'confusion' (K, K) int64."""
  num_devices = jax.local_device_count()
  collected = None
  for batch in input_pipeline.eval_batches(split, batch_size):
    update = jax_utils.unreplicate(p_eval_step(params, input_pipeline.shard(batch, num_devices)))
    collected = update if collected is None else collected.merge(update)
  computed = collected.compute()
  result = {k: float(v) for k, v in computed.items() if k != 'confusion'}
  result['examples'] = int(collected.accuracy.count)
  if 'confusion' in computed:
    result['confusion'] = np.asarray(computed['confusion'], np.int64)
  return result


def test_scalars(test_metrics: dict[str, Any], per_class: dict[str, Any]) -> dict[str, float]:
  """The test split's TensorBoard scalars: `evaluate`'s metrics and the superclass top-1."""
  scalars = {f'test_{k}': v for k, v in test_metrics.items()}
  if 'test_superclass_top1' in per_class:
    scalars['test_superclass_top1'] = per_class['test_superclass_top1']
  return scalars


def class_results(confusion: np.ndarray, class_names: Sequence[str],
                  superclasses: input_pipeline.Superclasses | None) -> dict[str, Any]:
  """results.json's per-class fields from a (K, K) confusion matrix: top-1 of each class and,
  with superclasses, the superclass top-1 (a prediction counts when its class lies in the true
  class's superclass; a class of unknown superclass only matches itself)."""
  counts = confusion.sum(axis=1)
  correct = np.diag(confusion)
  per_class = {name: (float(correct[i] / counts[i]) if counts[i] else None)
               for i, name in enumerate(class_names)}
  fields = {'test_per_class_top1': per_class}
  if superclasses is not None:
    of_class = np.asarray(superclasses.of_class)
    same = ((of_class[:, None] == of_class[None, :]) & (of_class[:, None] >= 0)
            | np.eye(len(of_class), dtype=bool))
    fields['test_superclass_top1'] = float(confusion[same].sum() / confusion.sum())
  return fields


def results_of_test(test_metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
  """results.json's test fields from `evaluate`'s metrics on the test split and its duration."""
  return {
      'test_top1': test_metrics['accuracy'],
      'test_top5': test_metrics['top5_accuracy'],
      'test_loss': test_metrics['loss'],
      'test_examples': test_metrics['examples'],
      'test_wall_time_s': seconds,
      'test_images_per_s': test_metrics['examples'] / seconds,
  }
