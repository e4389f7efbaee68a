"""Inference from a trained workdir: restore, predict on image files, evaluate, draw the plots.

A workdir holds everything needed: `config.json` (the run's config), `labels.json` (class
names) and `checkpoints/` (the train state) or, exported by `export`, `params/` (the parameters
alone). Predictions and attention maps come from one
jitted `predict_step`, which preprocesses exactly as `evaluation.eval_step` does and applies the same
model (with `return_intermediates=True` for the TLB's attention).

Image files are read with Pillow: EXIF rotation applied, 16-bit and float greyscale scaled to
8 bits, transparency composited onto white, greyscale/palette/CMYK converted to RGB, then the
whole image resized (not cropped; the aspect ratio is not kept) straight to the model's
`config.image_size` with antialiased bilinear filtering, the host-side equivalent of the
`jax.image.resize` that eval applies to the 32x32 uint8 CIFAR images. The result is uint8, as a
test batch is, and goes through the same `augment.eval_views` in the jitted step.
"""

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from flax import jax_utils
from PIL import Image, ImageOps

from tlb_jax import (augment, checkpointing, config_validation, evaluation, input_pipeline,
                     plots, run_files, train_state)
from tlb_jax.models import create_model

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm',
                    '.pgm')
PREDICT_BATCH = 32  # images per compiled predict call (the last batch is padded)
TOP_K = 5
EXPORTED_PARAMS = 'params'  # the directory `export` writes the parameters to


class InferenceError(Exception):
  """The workdir cannot be used; the message says why and what to do."""


class ImageError(Exception):
  """One image file cannot be read; the others are still processed."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored training run."""

  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  model: Any
  params: Any  # on one device
  step: int


# ----------------------------------------------------------------------------- restoring


def has_attention(config: ml_collections.ConfigDict) -> bool:
  """Attention maps are the TLB's slow-stream attention; other models have none."""
  return config.model == 'tlb'


def restore(workdir: str, config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores the parameters of `workdir`: its latest readable checkpoint, or the parameters an
  `export` wrote.

  Args:
    workdir: a training workdir, or a directory written by `export`.
    config: the run's config; by default the workdir's config.json. A config passed here must
      describe the same model (it may change data or batch fields).

  Raises:
    InferenceError: no readable checkpoint or parameters.
    run_files.WorkdirError: no workdir, or no usable config.json / labels.json.
  """
  run_files.check_workdir(workdir)
  config = config if config is not None else run_files.load_config(workdir)
  class_names = run_files.load_class_names(workdir)
  try:
    model = create_model(config, len(class_names))
  except (ValueError, TypeError) as e:
    raise InferenceError(f'cannot build the model of {workdir}: {e}') from None
  exported = os.path.join(os.path.abspath(workdir), EXPORTED_PARAMS)
  if os.path.isdir(exported):
    params, step = _restore_exported(exported, model, config)
  else:
    params, step = _restore_checkpoint(workdir, model, config)
  return Run(config=config, class_names=class_names, model=model, params=params, step=step)


def _abstract_params(model, config: ml_collections.ConfigDict):
  return jax.eval_shape(
      lambda rng: train_state.create_train_state(
          rng, model, config.image_size, optax.identity()).params, jax.random.PRNGKey(0))


def _restore_exported(directory: str, model, config: ml_collections.ConfigDict):
  """(params, step) from `export`'s directory."""
  abstract = {'params': _abstract_params(model, config),
              'step': jax.ShapeDtypeStruct((), np.int32)}
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(directory, abstract)
  except Exception as e:  # pylint: disable=broad-except
    cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise InferenceError(f'cannot restore the parameters in {directory} into this '
                         f'{config.model} ({cause}); were they exported with this config?'
                         ) from None
  return restored['params'], int(restored['step'])


def _restore_checkpoint(workdir: str, model, config: ml_collections.ConfigDict):
  """(params, step) of the latest readable checkpoint in `workdir`."""
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  train_hint = f'train first: python main.py --config=... --workdir={workdir}'
  if not os.path.isdir(checkpoint_dir) or not os.listdir(checkpoint_dir):
    raise InferenceError(f'{workdir} has no checkpoint; {train_hint}')
  # Only the state's structure, shapes and dtypes matter for a restore; any schedule will do.
  tx = train_state.create_optimizer(config, optax.constant_schedule(config.learning_rate))
  template = jax.eval_shape(
      lambda rng: train_state.create_train_state(rng, model, config.image_size, tx),
      jax.random.PRNGKey(0))
  with checkpointing.Checkpoints(workdir, config) as checkpoints:
    if checkpoints.manager.latest_step() is None:
      raise InferenceError(f'{workdir} has no checkpoint; {train_hint}')
    try:
      state = checkpoints.restore_latest(template)
    except checkpointing.CheckpointError:
      raise InferenceError(f'no checkpoint in {checkpoint_dir} can be restored into this '
                           f'{config.model} (see the warnings above); was it trained with this '
                           'config?') from None
  return state.params, int(state.step)


def export(workdir: str, output: str, config: ml_collections.ConfigDict | None = None) -> str:
  """Writes the parameters of `workdir`'s latest checkpoint (no optimizer state) with its
  config.json, labels.json and results.json to `output`, a directory that eval and predict
  accept as a workdir; returns `output`."""
  run = restore(workdir, config)
  if os.path.exists(os.path.join(output, EXPORTED_PARAMS)):
    raise InferenceError(f'{output} already holds exported parameters; choose another --output')
  config_validation.check_workdir_writable(output)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(os.path.abspath(output), EXPORTED_PARAMS),
                      {'params': run.params, 'step': np.int32(run.step)})
  run_files.write_config(output, run.config)
  run_files.write_labels(output, run.class_names, run_files.load_superclasses(workdir))
  if os.path.exists(run_files.results_path(workdir)):
    results = run_files.load_results(workdir)
    if results.get('step') == run.step:
      run_files.update_results(output, results)
  return output


# ----------------------------------------------------------------------------- prediction


def predict_step(params, images, *, apply_fn, image_size: int, with_attention: bool,
                 resize_size: int = 0, augmentation: str = 'none', padding: int = 0):
  """Class probabilities of uint8 images, preprocessed and scored as `evaluation.eval_step` does
  (the mean logits of the `augment.eval_views` of `augmentation`).

  Returns:
    {'probabilities': (B, num_classes) float32, 'images': (B, S, S, 3) float32 in [0, 1] as the
     model saw them, and with `with_attention` 'attention': (B, C, H, L, K), the TLB's
     slow-stream attention over each chunk's tokens, of the central view}.
  """
  views = augment.eval_views(images, image_size=image_size, resize_size=resize_size,
                             augmentation=augmentation, padding=padding)
  outputs = {'images': views[0]}
  if with_attention:
    # The pass that gives the central view's attention also gives its logits: only the other
    # views need scoring, and the mean weighs every view alike.
    central_logits, intermediates = apply_fn({'params': params}, views[0], train=False,
                                             return_intermediates=True)
    outputs['attention'] = intermediates['attention'].astype(jnp.float32)
    num_views = views.shape[0]
    logits = central_logits.astype(jnp.float32)
    if num_views > 1:
      logits = (logits + (num_views - 1) * evaluation.eval_logits(apply_fn, params, views[1:])
                ) / num_views
  else:
    logits = evaluation.eval_logits(apply_fn, params, views)
  outputs['probabilities'] = jax.nn.softmax(logits, axis=-1)
  return outputs


@functools.partial(jax.jit, static_argnames=('model', 'image_size', 'with_attention',
                                             'resize_size', 'augmentation', 'padding'))
def _jitted_predict_step(params, images, *, model, image_size: int, with_attention: bool,
                         resize_size: int, augmentation: str, padding: int):
  # The model is a static argument: equal models (same class and fields) share compilations.
  return predict_step(params, images, apply_fn=model.apply, image_size=image_size,
                      with_attention=with_attention, resize_size=resize_size,
                      augmentation=augmentation, padding=padding)


def make_predict_fn(model, config: ml_collections.ConfigDict, with_attention: bool):
  """jit(predict_step) for `model`: fn(params, uint8 images (B, h, w, 3)) -> dict."""
  return functools.partial(_jitted_predict_step, model=model, image_size=config.image_size,
                           with_attention=with_attention,
                           **evaluation.eval_view_args(config, test_time=True))


def predict(predict_fn, params, images: np.ndarray) -> dict[str, np.ndarray]:
  """Runs `predict_fn` over `images` in fixed-size batches (one compilation) -> host arrays."""
  results = []
  for start in range(0, len(images), PREDICT_BATCH):
    batch = images[start:start + PREDICT_BATCH]
    padding = PREDICT_BATCH - len(batch)
    if padding:
      batch = np.concatenate([batch, np.zeros((padding,) + batch.shape[1:], batch.dtype)])
    outputs = jax.device_get(predict_fn(params, batch))
    results.append({k: v[:PREDICT_BATCH - padding] for k, v in outputs.items()})
  return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def upsampled_attention(config: ml_collections.ConfigDict, attention: np.ndarray) -> np.ndarray:
  """(B, C, H, L, K) TLB attention -> (B, image_size, image_size) per-pixel maps."""
  side = config.image_size // config.tlb.patch_size
  maps = plots.attention_maps(attention, (side, side))
  return plots.upsample(maps, (config.image_size, config.image_size))


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
  if image.mode.startswith('I;16') or image.mode in ('I', 'F'):
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith('I;16') or (image.mode == 'I' and array.max() > 255):
      array = array / 257.0
    elif image.mode == 'F' and array.max() <= 1.0:
      array = array * 255.0
    image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
  if image.mode == 'P':
    image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    rgba = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
  return image.convert('RGB')


def load_image(path: str, image_size: int) -> np.ndarray:
  """Reads any image file -> uint8 (image_size, image_size, 3) (see the module docstring).

  Raises:
    ImageError: the file is missing or is not a readable image.
  """
  if not os.path.exists(path):
    raise ImageError('no such file')
  if os.path.isdir(path):
    raise ImageError('is a directory')
  try:
    with Image.open(path) as image:
      image.load()
      image = _to_rgb(ImageOps.exif_transpose(image))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise ImageError(f'cannot read image ({reason})') from None
  image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def expand_paths(paths: Sequence[str]) -> list[tuple[str, str | None]]:
  """Files and folders -> [(path, error or None)]; a folder gives its image files (by
  extension, sorted, not recursive) or an error if it has none."""
  items = []
  for path in paths:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if not n.startswith('.') and
                     n.lower().endswith(IMAGE_EXTENSIONS) and
                     os.path.isfile(os.path.join(path, n)))
      if not names:
        items.append((path, f'folder has no image files ({", ".join(IMAGE_EXTENSIONS)})'))
      items.extend((os.path.join(path, n), None) for n in names)
    else:
      items.append((path, None))
  return items


def format_prediction(path: str, probabilities: np.ndarray, class_names: Sequence[str]) -> str:
  """'path: cat 0.612, dog 0.201, ...', the top-5 classes by probability."""
  top = np.argsort(-probabilities, kind='stable')[:TOP_K]
  return f'{path}: ' + ', '.join(f'{class_names[i]} {probabilities[i]:.3f}' for i in top)


def _overlay_path(attention_dir: str, path: str, used: set[str]) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or 'image'
  name, n = f'{stem}_attention.png', 1
  while name in used:
    n += 1
    name = f'{stem}_{n}_attention.png'
  used.add(name)
  return os.path.join(attention_dir, name)


def run_predict(workdir: str, paths: Sequence[str], attention_dir: str | None = None,
                config: ml_collections.ConfigDict | None = None, out: IO[str] | None = None,
                err: IO[str] | None = None) -> int:
  """Prints the top-5 classes of every image to `out`, one line each, in order; an image that
  cannot be read prints `error: PATH: reason` to `err` instead.

  Args:
    workdir: a training workdir; its latest checkpoint is used.
    paths: image files and/or folders of images.
    attention_dir: if set, writes each image's attention overlay there (TLB only).
    config: overrides the workdir's config.json (see `restore`).

  Returns:
    The number of images (or folders) that failed.

  Raises:
    InferenceError: the workdir cannot be used (nothing is predicted).
  """
  out = out if out is not None else sys.stdout
  err = err if err is not None else sys.stderr
  if not paths:
    raise InferenceError('--images is empty; pass image files and/or folders, comma-separated')
  run = restore(workdir, config)
  with_attention = attention_dir is not None
  if with_attention and not has_attention(run.config):
    raise InferenceError(f'--attention_dir needs a TLB; this run is config.model='
                         f'{run.config.model!r}')
  logging.info('Predicting with %s at step %d from %s', run.config.model, run.step, workdir)

  items = []  # (path, error, index into the batch)
  images = []
  for path, error in expand_paths(paths):
    if error is None:
      try:
        images.append(load_image(path, run.config.image_size))
      except ImageError as e:
        error = str(e)
    items.append((path, error, len(images) - 1 if error is None else None))

  outputs = {}
  if images:
    predict_fn = make_predict_fn(run.model, run.config, with_attention)
    outputs = predict(predict_fn, run.params, np.stack(images))
  maps = None
  if with_attention and images:
    maps = upsampled_attention(run.config, outputs['attention'])

  failures, used = 0, set()
  for path, error, index in items:
    if error is not None:
      failures += 1
      print(f'error: {path}: {error}', file=err, flush=True)
      continue
    probabilities = outputs['probabilities'][index]
    print(format_prediction(path, probabilities, run.class_names), file=out, flush=True)
    if maps is not None:
      best = int(np.argmax(probabilities))
      titles, _ = plots.attention_titles(None, [run.class_names[best]], [probabilities[best]])
      picture = plots.plot_attention_grid(outputs['images'][index:index + 1],
                                          maps[index:index + 1], titles)
      plots.save_png(picture, _overlay_path(attention_dir, path, used))
  if maps is not None and used:
    logging.info('Wrote %d attention overlays to %s', len(used), attention_dir)
  return failures


# ----------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(workdir: str,
                        config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Tests the latest checkpoint on `config.test_split` and writes `workdir/results.json`.

  Uses the trainer's `eval_step` and `evaluate`. Training fields of an existing results.json
  (wall times, resume step) are kept if it was written for the same step.

  Returns:
    The contents of results.json.
  """
  run = restore(workdir, config)
  config = run.config
  config_validation.validate(config, jax.local_device_count())
  builder = input_pipeline.get_builder(config)
  if builder.info.features['label'].num_classes != len(run.class_names):
    raise InferenceError(f'{config.dataset} has {builder.info.features["label"].num_classes} '
                         f'classes but {workdir} was trained on {len(run.class_names)}')
  if not config.test_split:
    raise InferenceError('--mode=eval tests on --config.test_split, which is empty; pass '
                         '--config.test_split=test (or another split)')
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
  num_params = sum(x.size for x in jax.tree.leaves(run.params))
  confusion = metrics.pop('confusion')
  results = run_files.update_results(workdir, {
      **run_files.run_fields(config, run.step, steps_per_epoch, num_params),
      **evaluation.results_of_test(metrics, seconds),
      **evaluation.class_results(confusion, run.class_names,
                                 run_files.load_superclasses(workdir)),
      'test_views': evaluation.eval_view_args(config, test_time=True),
  })
  run_files.write_confusion(workdir, confusion)
  if jax.process_index() == 0:
    write_confusion(workdir, config)
  return results


# ----------------------------------------------------------------------------- plots


def write_curves(workdir: str, config: ml_collections.ConfigDict | None = None) -> str:
  """workdir/plots/curves.png from the run's TensorBoard scalars; returns its path."""
  scalars = plots.read_scalars(workdir)
  curves = plots.epoch_curves(scalars)
  if not len(curves['train_epoch']) and not len(curves['eval_epoch']):
    raise InferenceError(f'{workdir} has no logged train or eval scalars to plot')
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
  outputs = predict(make_predict_fn(model, config, with_attention=True), params,
                    split.images[:count])
  maps = upsampled_attention(config, outputs['attention'])
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
    raise InferenceError(f'{workdir} has no test confusion matrix; test it first: '
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
    if has_attention(config) and config.num_attention_images > 0:
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
  if has_attention(config) and config.num_attention_images > 0:
    run = restore(workdir, config)
    builder = input_pipeline.get_builder(config)
    images = input_pipeline.load_split(builder, input_pipeline.picture_split(config))
    writer = metric_writers.create_default_writer(workdir, asynchronous=False)
    paths.append(write_attention(config, workdir, run.model, run.params, images,
                                 run.class_names, writer, run.step))
    writer.close()
  return paths
