"""Image preprocessing that runs on the accelerator, inside the jitted train and eval steps.

Matches the seed: rescale to [0, 1], resize, then for training a random crop and a random
horizontal flip; for evaluation a resize to the model's input size (or to the training resize,
then the central crop, with `eval_resize_size`), optionally as several views that test-time
augmentation averages (`eval_views`). With `padding`, the resized image is first padded by
reflection and the crops come from that larger canvas (the usual CIFAR "random crop with
padding": translations without the rescale). Optionally, training batches are then blended by
mixup or CutMix (`mix_batch`).
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


def reflect_pad(images, padding: int):
  """(B, H, W, C) -> (B, H + 2 padding, W + 2 padding, C), borders mirrored (no edge repeat)."""
  if not padding:
    return images
  return jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), 'reflect')


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


def train_preprocess(rng, images, *, resize_size: int, image_size: int, flip: bool = True,
                     padding: int = 0):
  """uint8 (B, h, w, 3) -> augmented float32 (B, image_size, image_size, 3) in [0, 1]: a random
  image_size crop of the image resized to resize_size and reflect-padded by `padding`."""
  crop_rng, flip_rng = jax.random.split(rng)
  images = reflect_pad(resize(to_unit_float(images), resize_size), padding)
  images = random_crop(crop_rng, images, image_size)
  return random_flip(flip_rng, images) if flip else images


def eval_views(images, *, image_size: int, resize_size: int = 0, augmentation: str = 'none',
               padding: int = 0):
  """uint8 (B, h, w, 3) -> float32 (V, B, image_size, image_size, 3) in [0, 1].

  Each image is resized to `resize_size` (0: `image_size`), reflect-padded by `padding` (the
  canvas training crops from) and cropped to `image_size`: 'none' gives the central crop
  (V = 1); 'flip' adds its mirror image (V = 2); 'crops_flip' takes the central and the four
  corner crops and their mirror images (V = 10). View 0 is always the central crop, which
  padding does not change.
  """
  resize_size = resize_size or image_size
  canvas = reflect_pad(resize(to_unit_float(images), resize_size), padding)
  canvas_size = resize_size + 2 * padding
  centre, far = (canvas_size - image_size) // 2, canvas_size - image_size
  corners = ((0, 0), (0, far), (far, 0), (far, far)) if augmentation == 'crops_flip' else ()
  views = [canvas[:, row:row + image_size, col:col + image_size]
           for row, col in ((centre, centre),) + corners]
  if augmentation != 'none':
    views += [view[:, :, ::-1] for view in views]
  return jnp.stack(views)


def cutmix_box(rng, height: int, width: int, weight):
  """(height, width) bool mask of a box of area about (1 - weight) * height * width at a uniform
  random center, clipped to the image (CutMix, Yun et al. 2019)."""
  cut = jnp.sqrt(1.0 - weight)
  center_row, center_col = jax.random.uniform(rng, (2,))
  top = jnp.clip(jnp.round((center_row - cut / 2) * height), 0, height)
  bottom = jnp.clip(jnp.round((center_row + cut / 2) * height), 0, height)
  left = jnp.clip(jnp.round((center_col - cut / 2) * width), 0, width)
  right = jnp.clip(jnp.round((center_col + cut / 2) * width), 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def partners(batch):
  """The partner of each example of a (B, ...) array in `mix_batch`: the reversed batch."""
  return batch[::-1]


def mix_batch(rng, images, *, mixup_alpha: float, cutmix_alpha: float,
              cutmix_probability: float = 0.5):
  """Blends each image of (B, H, W, C) with its partner in the reversed batch (timm's pairing).

  One weight per batch: mixup (Zhang et al. 2018) averages the pair with weight
  w ~ Beta(mixup_alpha, mixup_alpha); CutMix pastes a box of the partner over the image and w is
  the fraction of the image left. With both alphas > 0, CutMix is used with
  `cutmix_probability`. The loss of a mixed image is w * loss(label) + (1 - w) *
  loss(partner's label), the partners' labels being `partners(labels)`.

  Returns:
    (mixed images (B, H, W, C), w: float32 scalar).
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError('mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0')
  choice_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
  partner_images = partners(images)

  def mixup():
    weight = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
    return weight * images + (1.0 - weight) * partner_images, weight

  def cutmix():
    box = cutmix_box(box_rng, images.shape[1], images.shape[2],
                     jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha))
    # The box was clipped to the image: the weight is the area actually kept.
    return jnp.where(box[None, :, :, None], partner_images, images), 1.0 - box.mean()

  if cutmix_alpha <= 0:
    return mixup()
  if mixup_alpha <= 0:
    return cutmix()
  use_cutmix = jax.random.bernoulli(choice_rng, cutmix_probability)
  return jax.tree.map(lambda cut, mixed: jnp.where(use_cutmix, cut, mixed), cutmix(), mixup())
