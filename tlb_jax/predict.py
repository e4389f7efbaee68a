"""`--mode=predict`: the top-5 classes of image files, and the TLB's attention over them, from a
trained run.

Predictions and attention maps come from one jitted `predict_step`, which preprocesses exactly as
`evaluation.eval_step` does and applies the same model (with `return_intermediates=True` for the
TLB's attention); `run_plots` draws the run's attention picture with it too.

Image files are read with Pillow: EXIF rotation applied, 16-bit and float greyscale scaled to
8 bits, transparency composited onto white, greyscale/palette/CMYK converted to RGB, then the
whole image resized (not cropped; the aspect ratio is not kept) straight to the model's
`config.image_size` with antialiased bilinear filtering, the host-side equivalent of the
`jax.image.resize` that eval applies to the 32x32 uint8 CIFAR images. The result is uint8, as a
test batch is, and goes through the same `augment.eval_views` in the jitted step.
"""

import functools
import os
import sys
from collections.abc import Sequence
from typing import IO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from tlb_jax import augment, evaluation, plots, restore

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm',
                    '.pgm')
PREDICT_BATCH = 32  # images per compiled predict call (the last batch is padded)
TOP_K = 5


class ImageError(Exception):
  """One image file cannot be read; the others are still processed."""


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
    restore.InferenceError: the workdir cannot be used (nothing is predicted).
  """
  out = out if out is not None else sys.stdout
  err = err if err is not None else sys.stderr
  if not paths:
    raise restore.InferenceError('--images is empty; pass image files and/or folders, '
                                 'comma-separated')
  run = restore.restore(workdir, config)
  with_attention = attention_dir is not None
  if with_attention and not restore.has_attention(run.config):
    raise restore.InferenceError(f'--attention_dir needs a TLB; this run is config.model='
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

