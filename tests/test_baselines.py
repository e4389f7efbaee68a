"""The Perceiver and ViT baselines next to the TLB: shapes, training, weight sharing, pmap,
configs and an end-to-end run on mock CIFAR-100."""

import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils
from tfds_mock import mock_cifar

from tlb_jax import config_validation, input_pipeline, plots, train, train_state
from tlb_jax.models import MODELS, create_model
from tlb_jax.models.perceiver import Perceiver
from tlb_jax.models.tlb import TLB
from tlb_jax.models.vit import ViT

IMAGE_SIZE = 16  # 4x4 patches -> 16 tokens
NUM_CLASSES = 5
TRAIN_BATCH = 8  # 4 per device
MOCK_EXAMPLES = 32  # per split of the mocked CIFAR-100
TINY = {
    'tlb': dict(patch_size=4, embed_dim=16, chunk_size=4, num_latents=2, num_layers=2,
                cross_attention_every=1, num_heads=2, mlp_ratio=2),
    'perceiver': dict(patch_size=4, embed_dim=16, num_latents=4, num_layers=1,
                      num_iterations=2, num_heads=2, cross_attention_heads=1, mlp_ratio=2,
                      head_dim=8),
    'vit': dict(patch_size=4, embed_dim=16, num_layers=2, num_heads=2, mlp_ratio=2),
}


def tiny_model(name, num_classes=NUM_CLASSES, **overrides):
  return MODELS[name](num_classes=num_classes, **{**TINY[name], **overrides})


def images(batch, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, IMAGE_SIZE, IMAGE_SIZE, 3))


def param_count(model, image_size=IMAGE_SIZE):
  dummy = jnp.zeros((1, image_size, image_size, 3))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          dummy)
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def load_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def fixed_batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
          'label': rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32)}


@functools.cache
def pmapped_train_step(name):
  """The trainer's train_step under pmap for the tiny `name` (no augmentation), compiled once
  per model for every test that uses it, and its initial replicated TrainState."""
  learning_rate_fn = optax.constant_schedule(3e-3)
  state = train_state.create_train_state(jax.random.PRNGKey(0), tiny_model(name), IMAGE_SIZE,
                                   optax.adam(learning_rate_fn))
  step = jax.pmap(functools.partial(
      train.train_step, learning_rate_fn=learning_rate_fn, resize_size=IMAGE_SIZE,
      image_size=IMAGE_SIZE, random_flip=False, label_smoothing=0.0), axis_name='batch')
  return jax_utils.replicate(state), step


def shard(batch):
  return input_pipeline.shard(batch, jax.local_device_count())


@pytest.mark.parametrize('name', sorted(TINY))
def test_model_returns_float32_logits_of_shape_batch_by_classes_in_bfloat16(name):
  model = tiny_model(name, dtype=jnp.bfloat16)
  params = model.init(jax.random.PRNGKey(0), images(1), train=False)
  logits = model.apply(params, images(3), train=False)
  assert logits.shape == (3, NUM_CLASSES)
  assert logits.dtype == jnp.float32


def test_perceiver_intermediates_hold_latents_and_cross_attention_per_iteration():
  model = tiny_model('perceiver', num_iterations=3)
  params = model.init(jax.random.PRNGKey(0), images(1), train=False)
  _, intermediates = model.apply(params, images(2), train=False, return_intermediates=True)
  assert intermediates['latents'].shape == (2, 3, 4, 16)          # (B, I, L, D)
  assert intermediates['attention'].shape == (2, 3, 1, 4, 16)     # (B, I, Hc, L, N)
  np.testing.assert_allclose(intermediates['attention'].sum(-1), 1.0, rtol=1e-5)


def test_vit_intermediates_hold_each_blocks_attention_over_all_tokens():
  model = tiny_model('vit')
  params = model.init(jax.random.PRNGKey(0), images(1), train=False)
  _, intermediates = model.apply(params, images(2), train=False, return_intermediates=True)
  assert intermediates['attention'].shape == (2, 2, 2, 16, 16)    # (B, layers, H, N, N)


@pytest.mark.parametrize('name', sorted(TINY))
def test_train_steps_decrease_the_loss_on_a_fixed_batch(name):
  state, step = pmapped_train_step(name)
  batch = shard(fixed_batch(TRAIN_BATCH))
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(jax_utils.unreplicate(metrics).compute()['loss']))
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize('name', sorted(TINY))
def test_pmap_train_step_on_two_devices_keeps_replicas_in_sync(name):
  assert jax.local_device_count() == 2
  state, step = pmapped_train_step(name)
  state, _ = step(state, shard(fixed_batch(TRAIN_BATCH, seed=1)))
  assert list(np.asarray(state.step)) == [1, 1]
  for leaf in jax.tree.leaves(state.params):
    np.testing.assert_array_equal(leaf[0], leaf[1])


@pytest.mark.parametrize('name', ['perceiver', 'vit'])
def test_baselines_take_the_tlbs_convolutional_stem_tokens(name):
  """tokenizer='stem' gives a baseline the TLB's stride-2 convolutional stem: the same patch
  embedding parameters as the TLB's, and logits of the same shape."""
  model = tiny_model(name, tokenizer='stem')
  params = model.init(jax.random.PRNGKey(0), images(1), train=False)['params']
  tlb_params = tiny_model('tlb', tokenizer='stem').init(jax.random.PRNGKey(0), images(1),
                                                        train=False)['params']
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shapes(params['patch_embed']) == shapes(tlb_params['patch_embed'])
  assert model.apply({'params': params}, images(2), train=False).shape == (2, NUM_CLASSES)


def test_perceiver_parameter_count_does_not_grow_with_num_iterations():
  counts = {n: param_count(tiny_model('perceiver', num_iterations=n)) for n in (1, 2, 4)}
  assert counts[1] == counts[2] == counts[4], counts


def test_perceiver_reuses_one_set_of_weights_for_every_iteration():
  one = tiny_model('perceiver', num_iterations=1)
  three = tiny_model('perceiver', num_iterations=3)
  params = one.init(jax.random.PRNGKey(0), images(1), train=False)
  # The 1-iteration parameters drive the 3-iteration model as they are, and the extra
  # iterations change the output, so they ran with those same weights.
  logits_one = one.apply(params, images(2), train=False)
  logits_three = three.apply(params, images(2), train=False)
  assert not np.allclose(logits_one, logits_three)


def test_perceiver_head_dim_sets_the_features_of_every_attention_head():
  model = tiny_model('perceiver', head_dim=24)  # embed_dim 16: wider heads than D / H
  params = model.init(jax.random.PRNGKey(0), images(1), train=False)['params']
  heads = model.num_heads
  assert params['self_attention_0']['attention']['qkv']['kernel'].shape == (16, 3, heads, 24)
  assert params['cross_attention']['attention']['query']['kernel'].shape == (16, 1, 24)
  assert params['self_attention_0']['attention']['out']['kernel'].shape == (heads, 24, 16)


@pytest.mark.parametrize('config_name, model_class', [
    ('cifar10', TLB), ('perceiver_cifar100', Perceiver), ('vit_cifar10', ViT)])
def test_create_model_builds_the_model_that_config_model_names(config_name, model_class):
  config = load_config(config_name)
  config_validation.validate(config, num_devices=2)
  assert isinstance(create_model(config, NUM_CLASSES), model_class)


def test_vit_cifar10_has_the_parameter_count_of_the_tlb_of_its_recipe_within_one_percent():
  sizes = {}
  for name in ('cifar10_48px', 'vit_cifar10'):
    config = load_config(name)
    sizes[name] = param_count(create_model(config, 10), config.image_size)
  assert abs(sizes['vit_cifar10'] - sizes['cifar10_48px']) < 0.01 * sizes['cifar10_48px'], sizes


def test_perceiver_cifar100_config_is_the_seed_model_and_recipe():
  config = load_config('perceiver_cifar100')
  assert config.model == 'perceiver' and config.dataset == 'cifar100'
  assert (config.image_size, config.perceiver.patch_size) == (64, 2)
  assert (config.perceiver.num_latents, config.perceiver.embed_dim) == (256, 256)
  assert (config.perceiver.num_heads, config.perceiver.num_layers,
          config.perceiver.num_iterations) == (8, 4, 2)
  assert config.perceiver.head_dim == 256  # Keras key_dim = projection_dim in every head
  assert (config.learning_rate, config.weight_decay, config.batch_size) == (1e-3, 1e-4, 64)


@pytest.mark.parametrize('config_name, field, value', [
    ('perceiver_cifar100', 'num_iterations', 0),
    ('perceiver_cifar100', 'head_dim', 0),
    ('perceiver_cifar100', 'num_latents', -1),
    ('perceiver_cifar100', 'dropout_rate', 1.5),
    ('vit_cifar10', 'num_layers', 0),
    ('vit_cifar10', 'patch_size', 5),
    ('vit_cifar10', 'num_heads', 3),
])
def test_validation_rejects_a_bad_baseline_field_in_one_line_naming_it(config_name, field,
                                                                        value):
  config = load_config(config_name)
  config[config.model][field] = value
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config)
  message = str(error.value)
  assert f'{config.model}.{field}=' in message and '\n' not in message


def tiny_perceiver_config():
  config = load_config('perceiver_cifar100')
  config.perceiver.update(TINY['perceiver'])
  config.update(resize_size=18, image_size=IMAGE_SIZE, batch_size=8, eval_batch_size=16,
                num_epochs=1, log_every_steps=2, checkpoint_every_steps=2)
  return config


@pytest.fixture(scope='module')
def perceiver_run(tmp_path_factory):
  """(workdir, results) of the tiny Perceiver trained for an epoch on mock CIFAR-100; the tests
  only read it."""
  workdir = tmp_path_factory.mktemp('perceiver_run')
  with mock_cifar(MOCK_EXAMPLES):
    results = train.train_and_evaluate(tiny_perceiver_config(), str(workdir))
  return workdir, results


def test_train_and_evaluate_trains_the_perceiver_on_mock_cifar100(perceiver_run):
  workdir, results = perceiver_run
  assert results['model'] == 'perceiver' and results['dataset'] == 'cifar100'
  assert results['step'] == MOCK_EXAMPLES // tiny_perceiver_config().batch_size
  assert results['test_examples'] == MOCK_EXAMPLES
  assert results['num_params'] == param_count(tiny_model('perceiver', num_classes=100))
  with open(workdir / 'results.json') as f:
    assert json.load(f)['test_top1'] == results['test_top1']
  assert os.path.isdir(workdir / 'checkpoints' / str(results['step']))


def test_a_cifar100_run_reports_superclass_and_per_class_test_top1_and_draws_the_confusion(
    perceiver_run):
  """CIFAR-100's final test adds the superclass top-1 (results.json and TensorBoard), the top-1
  of each of the 100 classes, the confusion matrix and its picture; labels.json keeps the
  dataset's class -> superclass map."""
  workdir, results = perceiver_run
  assert 0.0 <= results['test_superclass_top1'] <= 1.0
  assert results['test_superclass_top1'] >= results['test_top1']
  assert len(results['test_per_class_top1']) == 100
  confusion = np.load(workdir / 'test_confusion.npy')
  assert confusion.shape == (100, 100) and confusion.sum() == results['test_examples']
  assert np.trace(confusion) / confusion.sum() == pytest.approx(results['test_top1'])
  assert os.path.exists(workdir / 'plots' / 'confusion.png')
  with open(workdir / 'labels.json') as f:
    labels = json.load(f)
  assert len(labels['superclass_names']) == 20 and len(labels['superclass_of_class']) == 100
  tags = {tag for tag in plots.read_scalars(str(workdir))}
  assert 'test_superclass_top1' in tags

