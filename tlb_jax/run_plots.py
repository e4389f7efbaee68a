"""The run's pictures: workdir/plots/ curves.png, confusion.png and, for a TLB, attention.png
(the latter two also to TensorBoard), drawn at the end of training and by `--mode=plots`.

`plots` draws pictures from arrays; this module gathers a run's arrays (its TensorBoard scalars,
its test confusion matrix, the restored model's attention over the first test images) and writes
the pictures.
"""

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from tlb_jax import input_pipeline, plots, predict, restore, run_files


def write_curves(workdir: str, config: ml_collections.ConfigDict | None = None) -> str:
  """workdir/plots/curves.png from the run's TensorBoard scalars; returns its path."""
  scalars = plots.read_scalars(workdir)
  curves = plots.epoch_curves(scalars)
  if not len(curves['train_epoch']) and not len(curves['eval_epoch']):
    raise restore.InferenceError(f'{workdir} has no logged train or eval scalars to plot')
  test = scalars.get('test_accuracy')
  title = f'{config.model} on {config.dataset}' if config is not None else ''
  picture = plots.plot_curves(curves, title=title,
                              test_accuracy=test[max(test)] if test else None)
  path = os.path.join(run_files.plots_dir(workdir), 'curves.png')
  plots.save_png(picture, path)
  return path


def write_attention(config: ml_collections.ConfigDict, workdir: str, model, params,
                    split: input_pipeline.Split, class_names: Sequence[str],
                    writer: metric_writers.MetricWriter | None = None, step: int = 0) -> str:
  """workdir/plots/attention.png: the first `config.num_attention_images` images of `split`
  with their attention overlaid, true and predicted classes; also to TensorBoard (`writer`).

  Returns:
    The PNG's path.
  """
  count = min(config.num_attention_images, len(split))
  outputs = predict.predict(predict.make_predict_fn(model, config, with_attention=True),
                            params, split.images[:count])
  maps = predict.upsampled_attention(config, outputs['attention'])
  predicted = outputs['probabilities'].argmax(-1)
  titles, colors = plots.attention_titles(
      [class_names[i] for i in split.labels[:count]], [class_names[i] for i in predicted],
      outputs['probabilities'].max(-1))
  picture = plots.plot_attention_grid(outputs['images'], maps, titles, colors)
  return _save_picture(picture, workdir, 'attention', writer, step)


def _save_picture(picture: np.ndarray, workdir: str, name: str,
                  writer: metric_writers.MetricWriter | None, step: int) -> str:
  """Writes workdir/plots/<name>.png and, with a `writer`, the TensorBoard image `name`;
  returns the PNG's path."""
  path = os.path.join(run_files.plots_dir(workdir), f'{name}.png')
  plots.save_png(picture, path)
  if writer is not None:
    writer.write_images(step, {name: picture[None]})
    writer.flush()
  return path


def write_confusion(workdir: str, config: ml_collections.ConfigDict,
                    writer: metric_writers.MetricWriter | None = None, step: int = 0) -> str:
  """workdir/plots/confusion.png from the run's test confusion matrix, grouped by superclass
  where the dataset has them; also to TensorBoard (`writer`). Returns the PNG's path."""
  confusion = run_files.load_confusion(workdir)
  if confusion is None:
    raise restore.InferenceError(f'{workdir} has no test confusion matrix; test it first: '
                                 f'python main.py --mode=eval --workdir={workdir}')
  superclasses = run_files.load_superclasses(workdir)
  picture = plots.plot_confusion(
      confusion, run_files.load_class_names(workdir),
      None if superclasses is None else superclasses.of_class,
      None if superclasses is None else superclasses.names,
      title=f'{config.model} on {config.dataset}: test confusion (row-normalised)')
  return _save_picture(picture, workdir, 'confusion', writer, step)


def write_run_plots(config: ml_collections.ConfigDict, workdir: str, model, params,
                    images: input_pipeline.Split, class_names: Sequence[str],
                    writer: metric_writers.MetricWriter, step: int) -> None:
  """The end-of-training pictures: curves, the test confusion matrix, and for a TLB the
  attention grid of the first `images` (the test split, or validation without one). A failure
  is logged, not raised: the run's results are already saved."""
  try:
    paths = [write_curves(workdir, config)]
    if run_files.load_confusion(workdir) is not None:
      paths.append(write_confusion(workdir, config, writer, step))
    if restore.has_attention(config) and config.num_attention_images > 0:
      paths.append(write_attention(config, workdir, model, params, images, class_names,
                                   writer, step))
    logging.info('Plots: %s', ', '.join(paths))
  except Exception:  # pylint: disable=broad-except
    logging.exception('Could not write the plots; regenerate them with '
                      'python main.py --mode=plots --workdir=%s', workdir)


def write_plots(workdir: str, config: ml_collections.ConfigDict | None = None) -> list[str]:
  """`--mode=plots`: (re)draws curves.png, confusion.png (of a tested run) and, for a TLB,
  attention.png (latest checkpoint, test split, or validation without one) for an existing
  workdir; the attention grid also goes to TensorBoard.

  Returns:
    The paths written.
  """
  run_files.check_workdir(workdir)
  config = config if config is not None else run_files.load_config(workdir)
  paths = [write_curves(workdir, config)]
  if run_files.load_confusion(workdir) is not None:
    paths.append(write_confusion(workdir, config))
  if restore.has_attention(config) and config.num_attention_images > 0:
    run = restore.restore(workdir, config)
    builder = input_pipeline.get_builder(config)
    images = input_pipeline.load_split(builder, input_pipeline.picture_split(config))
    writer = metric_writers.create_default_writer(workdir, asynchronous=False)
    paths.append(write_attention(config, workdir, run.model, run.params, images,
                                 run.class_names, writer, run.step))
    writer.close()
  return paths
