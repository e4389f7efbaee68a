"""Image preprocessing that runs on the accelerator, inside the jitted train and eval steps.

Matches the seed: rescale to [0, 1], resize, then for training a random crop and a random
horizontal flip; for evaluation a resize to the model's input size.
"""

import jax
import jax.numpy as jnp


def to_unit_float(images):
  """uint8 (B, H, W, C) -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def resize(images, size: int):
  """(B, H, W, C) -> (B, size, size, C), bilinear (the seed's Keras `Resizing`)."""
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, images.shape[:1] + (size, size) + images.shape[3:], 'bilinear')


def random_crop(rng, images, size: int):
  """Independent random (size, size) crop of each image in (B, H, W, C)."""
  batch, height, width, channels = images.shape
  rows = jax.random.randint(jax.random.fold_in(rng, 0), (batch,), 0, height - size + 1)
  cols = jax.random.randint(jax.random.fold_in(rng, 1), (batch,), 0, width - size + 1)
  crop = lambda image, row, col: jax.lax.dynamic_slice(image, (row, col, 0),
                                                       (size, size, channels))
  return jax.vmap(crop)(images, rows, cols)


def random_flip(rng, images):
  """Flips each image of (B, H, W, C) left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def train_preprocess(rng, images, *, resize_size: int, image_size: int, flip: bool = True):
  """uint8 (B, h, w, 3) -> augmented float32 (B, image_size, image_size, 3) in [0, 1]."""
  crop_rng, flip_rng = jax.random.split(rng)
  images = resize(to_unit_float(images), resize_size)
  images = random_crop(crop_rng, images, image_size)
  return random_flip(flip_rng, images) if flip else images


def eval_preprocess(images, *, image_size: int):
  """uint8 (B, h, w, 3) -> float32 (B, image_size, image_size, 3) in [0, 1]."""
  return resize(to_unit_float(images), image_size)
