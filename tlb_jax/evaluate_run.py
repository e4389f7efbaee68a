"""`--mode=eval`: tests a trained run's latest checkpoint on the test split and writes
results.json (the eval step itself is `evaluation`'s, shared with the trainer)."""

import time
from typing import Any

import jax
import ml_collections
from flax import jax_utils

from tlb_jax import (config_validation, evaluation, input_pipeline, restore, run_files,
                     run_plots, train_state)


def evaluate_checkpoint(workdir: str,
                        config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Tests the latest checkpoint on `config.test_split` and writes `workdir/results.json`,
  the test confusion matrix and its picture; an exported directory is scored the same way and
  left unchanged.

  Uses the trainer's `eval_step` and `evaluate`. Training fields of an existing results.json
  (wall times, resume step) are kept if it was written for the same step.

  Returns:
    The contents of results.json (for an export, what they would be).
  """
  run = restore.restore(workdir, config)
  config = run.config
  config_validation.validate(config, jax.local_device_count())
  builder = input_pipeline.get_builder(config)
  if builder.info.features['label'].num_classes != len(run.class_names):
    raise restore.InferenceError(
        f'{config.dataset} has {builder.info.features["label"].num_classes} classes but '
        f'{workdir} was trained on {len(run.class_names)}')
  if not config.test_split:
    raise restore.InferenceError('--mode=eval tests on --config.test_split, which is empty; '
                                 'pass --config.test_split=test (or another split)')
  test = input_pipeline.load_split(builder, config.test_split)
  p_eval_step = jax.pmap(evaluation.make_eval_step(config, run.model, test_time=True),
                         axis_name='batch')
  start = time.time()
  metrics = evaluation.evaluate(p_eval_step, jax_utils.replicate(run.params), test,
                                config.eval_batch_size)
  seconds = time.time() - start
  try:
    steps_per_epoch = builder.info.splits[config.train_split].num_examples // config.batch_size
  except (KeyError, ValueError, AssertionError):
    steps_per_epoch = 0
  num_params = train_state.num_params(run.params)
  confusion = metrics.pop('confusion')
  fields = {
      **run_files.run_fields(config, run.step, steps_per_epoch, num_params),
      **evaluation.results_of_test(metrics, seconds),
      **evaluation.class_results(confusion, run.class_names,
                                 run_files.load_superclasses(workdir)),
      'test_views': evaluation.eval_view_args(config, test_time=True),
  }
  if restore.is_export(workdir):
    # Exported parameters are a finished artefact (such as the project's pretrained/
    # directories): scoring them changes none of their files.
    return run_files.merged_results(workdir, fields)
  results = run_files.update_results(workdir, fields)
  run_files.write_confusion(workdir, confusion)
  if jax.process_index() == 0:
    run_plots.write_confusion(workdir, config)
  return results


def test_summary(results: dict[str, Any]) -> str:
  """One line of a results.json's test figures, in percent as the README's tables give them:
  'step S: test top-1 85.49%, top-5 99.15%[, superclass top-1 x%], loss L on N examples'."""
  superclass = results.get('test_superclass_top1')
  return (f'step {results["step"]}: {results["test_split"]} top-1 '
          f'{100 * results["test_top1"]:.2f}%, top-5 {100 * results["test_top5"]:.2f}%'
          + (f', superclass top-1 {100 * superclass:.2f}%' if superclass is not None else '')
          + f', loss {results["test_loss"]:.4f} on {results["test_examples"]} examples')
