"""Checks a config before anything is loaded or compiled; each failure is one line that names
the field and what it may be.

main.py imports this module to check a command line before it loads JAX and TensorFlow, so it
imports neither at the top: the model classes (Flax) are imported where their fields are read.
"""

from collections.abc import Mapping
import dataclasses
import math
import os
import tempfile
from typing import Any

import ml_collections

from tlb_jax.choices import (ADAM_EPS_PLACEMENTS, DATASETS, KERAS_FANS, POWER_OF_TWO_TOKENIZERS,
                             REMATS, TEST_TIME_AUGMENTATIONS, TOKENIZERS)

DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
LR_SCHEDULES = ('constant', 'warmup_cosine')
WEIGHT_DECAY_ON = ('all', 'kernels')
MODEL_CHOICES = {
    'tlb': {'head': ('slow_mean', 'fast_last_mean'), 'slow_stream_init': ('learned', 'zeros'),
            'remat': REMATS, 'tokenizer': TOKENIZERS,
            'variant': ('paper', 'keras_seed'), 'keras_fans': KERAS_FANS},
    'perceiver': {'tokenizer': TOKENIZERS},
    'vit': {'tokenizer': TOKENIZERS},
}
POSITIVE_INTS = ('batch_size', 'eval_batch_size', 'image_size', 'resize_size', 'num_epochs',
                 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints')
MODEL_POSITIVE_INTS = ('patch_size', 'embed_dim', 'chunk_size', 'num_latents', 'num_layers',
                       'cross_attention_every', 'num_heads', 'mlp_ratio', 'scan_unroll',
                       'num_iterations', 'cross_attention_heads')


# Every top-level field of a config (configs/default.py); a model's section has its model's
# fields (`model_fields`).
FIELDS = (
    'model', 'dtype', 'dataset', 'data_dir', 'train_split', 'eval_split', 'test_split',
    'resize_size', 'image_size', 'crop_padding', 'random_flip', 'mixup_alpha', 'cutmix_alpha',
    'eval_resize_size', 'test_time_augmentation', 'seed', 'batch_size', 'eval_batch_size',
    'microbatch_size', 'num_epochs', 'num_train_steps', 'learning_rate', 'lr_schedule',
    'warmup_epochs', 'min_learning_rate', 'weight_decay', 'weight_decay_on', 'adam_b1',
    'adam_b2', 'adam_eps', 'adam_eps_placement', 'grad_clip_norm', 'label_smoothing',
    'skip_nonfinite_steps',
    'log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps', 'keep_checkpoints',
    'num_attention_images')


def _models() -> dict:
  """tlb_jax.models.MODELS, {name: Flax module class}; imported here, not at the top (JAX)."""
  from tlb_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  return MODELS


def model_fields(model: str) -> tuple[str, ...]:
  """The hyper-parameters of `model` that a config's section sets: the module's attributes."""
  return tuple(f.name for f in dataclasses.fields(_models()[model])
               if f.name not in ('num_classes', 'dtype', 'parent', 'name'))


# Model fields that shape only the initial parameters, with the value that runs made before the
# field existed used: a saved run lacking one still loads and resumes (its parameters come from
# its checkpoints), and reads as having that value.
INITIALIZATION_FIELDS = {'tlb': {'keras_fans': 'einsum'}}


def with_initialization_fields(saved: dict) -> dict:
  """`saved` (a config as a dict) with each `INITIALIZATION_FIELDS` field its model's section
  lacks set to the value runs made before that field existed used."""
  section = saved.get(saved.get('model'))
  if not isinstance(section, dict):
    return saved
  legacy = INITIALIZATION_FIELDS.get(saved['model'], {})
  return {**saved, saved['model']: {**legacy, **section}}


def missing_fields(saved: dict) -> list[str]:
  """The fields of the current configs that `saved` (a config as a dict) lacks."""
  missing = [f for f in FIELDS if f not in saved]
  model = saved.get('model')
  if model in _models():
    section = saved.get(model, {})
    missing += [f'{model}.{f}' for f in model_fields(model) if f not in section]
  return missing


class ConfigError(ValueError):
  """An invalid config value; the message names the field and the allowed values."""


def _choice(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f'--config.{field}={value!r} is not allowed; use one of {list(allowed)}')


def _positive(field: str, value) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'--config.{field}={value!r} must be a positive integer')


def _unit_interval(field: str, value) -> None:
  if not 0.0 <= value < 1.0:
    raise ConfigError(f'--config.{field}={value!r} must be in [0, 1)')


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError for the first invalid field."""
  missing = missing_fields(config.to_dict())
  if missing:
    raise ConfigError(f'the config lacks the fields {", ".join(missing)}; start it from '
                      'configs/default.py')
  _choice('model', config.model, sorted(MODEL_CHOICES))
  _choice('dataset', config.dataset, DATASETS)
  _choice('dtype', config.dtype, DTYPES)
  _choice('lr_schedule', config.lr_schedule, LR_SCHEDULES)
  _choice('weight_decay_on', config.weight_decay_on, WEIGHT_DECAY_ON)
  _choice('adam_eps_placement', config.adam_eps_placement, ADAM_EPS_PLACEMENTS)
  for field in POSITIVE_INTS:
    _positive(field, config[field])
  if not config.eval_split and not config.test_split:
    raise ConfigError('--config.eval_split and --config.test_split are both empty, so nothing '
                      'would score the model; set --config.test_split=test')
  if not 0 < config.learning_rate < math.inf:
    raise ConfigError(f'--config.learning_rate={config.learning_rate} must be positive and finite')
  if config.weight_decay < 0 or config.grad_clip_norm < 0:
    raise ConfigError('--config.weight_decay and --config.grad_clip_norm must be >= 0')
  _unit_interval('label_smoothing', config.label_smoothing)
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if not 0 <= config[field] < math.inf:
      raise ConfigError(f'--config.{field}={config[field]} must be >= 0 and finite (0: off)')
  augmentation = config.test_time_augmentation
  _choice('test_time_augmentation', augmentation, TEST_TIME_AUGMENTATIONS)
  eval_resize_size = config.eval_resize_size
  if eval_resize_size and eval_resize_size < config.image_size:
    raise ConfigError(f'--config.eval_resize_size={eval_resize_size} must be 0 or >= '
                      f'--config.image_size={config.image_size} (the central crop)')
  crop_padding = config.crop_padding
  if not (isinstance(crop_padding, int) and 0 <= crop_padding < config.resize_size):
    raise ConfigError(f'--config.crop_padding={crop_padding!r} must be an integer in [0, '
                      f'--config.resize_size={config.resize_size}) (reflect padding; 0: none)')
  if (augmentation == 'crops_flip'
      and (eval_resize_size or config.image_size) + 2 * crop_padding <= config.image_size):
    raise ConfigError('--config.test_time_augmentation=crops_flip crops the image resized to '
                      '--config.eval_resize_size and padded by --config.crop_padding, which '
                      f'must exceed --config.image_size ({config.image_size}); set either, e.g. '
                      'eval_resize_size to --config.resize_size')
  if config.resize_size + 2 * crop_padding < config.image_size:
    raise ConfigError(f'--config.resize_size={config.resize_size} (+ 2 x '
                      f'--config.crop_padding={crop_padding}) must be >= '
                      f'--config.image_size={config.image_size} (the random crop)')
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % num_devices:
      raise ConfigError(f'--config.{field}={config[field]} must be divisible by the '
                        f'{num_devices} devices')
  per_device = config.batch_size // num_devices
  if not (isinstance(config.microbatch_size, int) and config.microbatch_size >= 0
          and (config.microbatch_size == 0 or per_device % config.microbatch_size == 0)):
    raise ConfigError(f'--config.microbatch_size={config.microbatch_size!r} must be 0 (off) or '
                      f'divide the {per_device} images of a device\'s batch '
                      f'(--config.batch_size={config.batch_size} on {num_devices} devices)')

  model = config[config.model]
  for field, allowed in MODEL_CHOICES[config.model].items():
    if field in model:  # an absent field takes the model's default
      _choice(f'{config.model}.{field}', model[field], allowed)
  for field in MODEL_POSITIVE_INTS:
    if field in model:
      _positive(f'{config.model}.{field}', model[field])
  for field in ('dropout_rate', 'attention_dropout_rate'):
    if field in model:
      _unit_interval(f'{config.model}.{field}', model[field])
  if 'patch_size' in model:
    patch = model.patch_size
    if config.image_size % patch:
      raise ConfigError(f'--config.image_size={config.image_size} is not divisible by '
                        f'--config.{config.model}.patch_size={patch}')
    tokenizer = model.get('tokenizer')
    if tokenizer in POWER_OF_TWO_TOKENIZERS and patch & (patch - 1):
      raise ConfigError(f'--config.{config.model}.tokenizer={tokenizer!r} needs a power-of-two '
                        f'--config.{config.model}.patch_size, got {patch}')
    num_patches = (config.image_size // patch) ** 2
    if 'chunk_size' in model and num_patches % model.chunk_size:
      raise ConfigError(f'{num_patches} patches ({config.image_size}/{patch} squared) are not '
                        f'divisible by --config.{config.model}.chunk_size={model.chunk_size}')
  if model.get('head_dim') is not None:
    _positive(f'{config.model}.head_dim', model.head_dim)
  else:  # D / heads features per head: the heads must split embed_dim evenly.
    for heads in ('num_heads', 'cross_attention_heads'):
      if heads in model and 'embed_dim' in model and model.embed_dim % model[heads]:
        raise ConfigError(f'--config.{config.model}.embed_dim={model.embed_dim} is not '
                          f'divisible by --config.{config.model}.{heads}={model[heads]}')


def check_workdir_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves a file can be written there."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not writable ({e.strerror}); choose another '
                      'directory') from None


def dotted_fields(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'tlb': {'embed_dim': 64}} -> {'tlb.embed_dim': 64}, from a ConfigDict or a nested dict."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
      flat.update(dotted_fields(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`dotted_fields(config)` as TensorBoard hyper-parameters: scalars, anything else as its
  string."""
  return {field: value if isinstance(value, (int, float, str, bool)) else str(value)
          for field, value in dotted_fields(config).items()}
