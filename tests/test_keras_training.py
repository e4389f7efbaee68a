"""Training the 'keras_seed' TLB with `tlb_jax.train.train_step` is training the Keras seed
model with `train_on_batch`: from the same weights (`tlb_jax.keras_port`), on the same batches,
with dropout and augmentation off, both report the same loss at each of 20 steps, at the same
learning rate, and end with the same weights; with dropout on, both drop out at the same places.
Needs TensorFlow and Keras 3 (`benchmarks/keras_seed.py` builds the seed's model)."""

import collections
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import jax_utils

keras_seed = pytest.importorskip('benchmarks.keras_seed')

from configs import cifar10_seed  # noqa: E402
from test_keras_port import SHAPES, flax_model  # noqa: E402
from tlb_jax import config_validation, train, train_state  # noqa: E402
from tlb_jax.keras_port import port_keras_weights  # noqa: E402
from tlb_jax.models.layers import Dropout  # noqa: E402
from tlb_jax.models.tlb import TLBCell  # noqa: E402

keras = keras_seed.keras

STEPS = 20
BATCH = 16
LOSS_TOLERANCE = 1e-3
# Half of one step's largest move (the learning rate). Adding epsilon where optax adds it
# instead of where Keras does alone moves some parameters about 1e-4 apart in these 20 steps;
# rounding alone, which differs from CPU to CPU with the kernels XLA and TensorFlow pick, up to
# 3.4e-5 (a 2-core AMD EPYC with AVX2).
PARAMETER_TOLERANCE = 0.5 * keras_seed.SEED_CONFIG['learning_rate']
# The shapes trained. 'small' is test_keras_port's 'other' with one layer and r = 2, the fewest
# blocks (the least to compile, in both frameworks) that keep both kinds of block of the seed's
# perceptual list: block 0, which also cross-attends to the slow stream, and the block the seed
# appends after it, which does not.
TRAINING_SHAPES = {'small': dict(SHAPES['other'], num_layers=1, r=2), 'seed': SHAPES['seed']}


def seed_config(image_size: int):
  """configs/cifar10_seed.py (the seed's optimizer: AdamW, lr 1e-4, wd 1e-4 on every weight,
  Keras's epsilon) with augmentation off: images already at `image_size` and no flip, so
  `train_step`'s preprocessing only rescales them to [0, 1]."""
  config = cifar10_seed.get_config()
  config.image_size = config.resize_size = image_size
  config.random_flip = False
  assert config.crop_padding == 0 and config.mixup_alpha == config.cutmix_alpha == 0
  assert config.label_smoothing == 0 and config.grad_clip_norm == 0
  return config


class Run:
  """Both models trained STEPS steps from the Keras model's initial weights on the same random
  batches (B = BATCH), with dropout off in both.

  Attributes: losses and keras_losses (STEPS,), the mean loss of each step's batch before its
  update; learning_rates and keras_learning_rates (STEPS,), each step's learning rate; params and
  keras_params, the flax parameter trees after the last step.
  """

  def __init__(self, shape: dict):
    shape = dict(shape, ffn_drop=0.0, attn_drop=0.0)
    size = shape['image_size']
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (STEPS, BATCH, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (STEPS, BATCH), dtype=np.int32)
    unit_images = images.astype(np.float32) / 255  # what train_step's preprocessing feeds

    keras.utils.set_random_seed(0)
    keras_model = keras_seed.build_seed_model(shape)  # compiled with the seed's AdamW
    keras_model(unit_images[0], training=False)

    config = seed_config(size)
    learning_rate_fn = train_state.create_learning_rate_fn(config, steps_per_epoch=STEPS,
                                                           total_steps=STEPS)
    state = train_state.TrainState.create(
        apply_fn=flax_model(shape).apply, params=port_keras_weights(keras_model),
        tx=train_state.create_optimizer(config, learning_rate_fn), rng=jax.random.PRNGKey(0))
    devices = jax.devices()[:1]
    step = jax.pmap(train.make_train_step(config, learning_rate_fn), axis_name='batch',
                    devices=devices)
    state = jax_utils.replicate(state, devices=devices)

    self.losses, self.learning_rates, self.keras_losses, self.keras_learning_rates = [], [], [], []
    for batch_images, batch_labels, keras_images in zip(images, labels, unit_images):
      state, metrics = step(state, {'image': batch_images[None], 'label': batch_labels[None]})
      metrics = jax_utils.unreplicate(metrics).reduce().compute()
      self.losses.append(float(metrics['loss']))
      self.learning_rates.append(float(metrics['learning_rate']))
      self.keras_learning_rates.append(float(keras_model.optimizer.learning_rate))
      self.keras_losses.append(float(keras_model.train_on_batch(keras_images, batch_labels)[0]))
    self.params = jax.device_get(jax_utils.unreplicate(state.params))
    self.keras_params = port_keras_weights(keras_model)


@functools.lru_cache(maxsize=None)
def get_run(name: str) -> Run:
  return Run(TRAINING_SHAPES[name])


# The seed's own shape takes minutes on a CPU (18 chunks of 8 tokens at 48x48).
@pytest.fixture(scope='module', params=['small', pytest.param('seed', marks=pytest.mark.slow)])
def run(request) -> Run:
  return get_run(request.param)


def test_train_step_losses_equal_keras_train_on_batch_losses(run):
  differences = np.abs(np.array(run.losses) - np.array(run.keras_losses))
  print('|loss - keras loss| per step:', ' '.join(f'{d:.2g}' for d in differences))
  assert differences.max() < LOSS_TOLERANCE


def test_learning_rate_of_every_step_equals_keras_learning_rate(run):
  np.testing.assert_allclose(run.learning_rates, run.keras_learning_rates, rtol=1e-6)


def test_parameters_after_training_equal_keras_weights(run):
  differences = jax.tree.map(lambda ours, theirs: np.abs(ours - theirs).max(), run.params,
                             run.keras_params)
  largest = max(jax.tree.leaves(differences))
  print(f'largest |parameter - keras weight| after {STEPS} steps: {largest:.3g}')
  assert largest < PARAMETER_TOLERANCE


def test_seed_optimizers_decay_every_weight():
  """The seed's AdamW (as the seed compiles it) excludes no Keras variable from weight decay,
  and the seed config's optimizer none of our parameters: with zero gradients, so that the Adam
  part of the step is 0 / (0 + eps) = 0, a weight decay raised to 1000 takes every weight of ones
  to 1 - lr * wd = 0.9 on both sides."""
  keras.utils.set_random_seed(0)
  shape = SHAPES['other']
  keras_model = keras_seed.build_seed_model(shape)
  keras_model(np.zeros((1, shape['image_size'], shape['image_size'], 3), np.float32))
  variables = keras_model.trainable_variables
  for variable in variables:
    variable.assign(np.ones(variable.shape, np.float32))
  keras_model.optimizer.weight_decay = 1000.0
  keras_model.optimizer.apply([np.zeros(v.shape, np.float32) for v in variables], variables)

  config = seed_config(shape['image_size'])
  config.weight_decay = 1000.0
  params = jax.tree.map(np.ones_like, port_keras_weights(keras_model))
  tx = train_state.create_optimizer(config, optax.constant_schedule(config.learning_rate))
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
  params = optax.apply_updates(params, updates)

  for leaf in jax.tree.leaves(port_keras_weights(keras_model)) + jax.tree.leaves(params):
    np.testing.assert_allclose(leaf, 0.9, rtol=1e-6)


# --- Epsilon placement (`adam_eps_placement`) ---


def adamw_steps(config, keras_epsilon: float):
  """Three AdamW steps of `create_optimizer(config)` and of Keras AdamW with the config's
  learning rate, weight decay and betas, on the same random gradients of w (3, 4) and b (4,)
  -> (our params, Keras's params), each {'w': (3, 4), 'b': (4,)}."""
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 4)).astype(np.float32),
            'b': rng.normal(size=(4,)).astype(np.float32)}
  variables = {k: keras.Variable(v) for k, v in params.items()}
  optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay,
                                     beta_1=config.adam_b1, beta_2=config.adam_b2,
                                     epsilon=keras_epsilon)
  tx = train_state.create_optimizer(config, optax.constant_schedule(config.learning_rate))
  state = tx.init(params)
  for _ in range(3):
    # Gradients of about eps, where eps's placement changes the step most.
    grads = {k: 1e-3 * rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    optimizer.apply([grads[k] for k in sorted(grads)], [variables[k] for k in sorted(grads)])
  return params, {k: np.asarray(v) for k, v in variables.items()}


def large_step_seed_config(placement: str):
  """The seed config with steps large enough to compare (lr 1e-2, wd 0.5) and eps 1e-3."""
  config = cifar10_seed.get_config()
  config.learning_rate, config.weight_decay, config.adam_eps = 1e-2, 0.5, 1e-3
  config.adam_eps_placement = placement
  return config


def test_keras_eps_placement_steps_as_keras_adamw():
  """Keras adds eps to sqrt(v) before the bias correction: its step is
  lr * m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t)), plus the decay lr * wd * w."""
  ours, theirs = adamw_steps(large_step_seed_config('keras'), keras_epsilon=1e-3)
  for k in ours:
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_optax_eps_placement_steps_as_keras_adamw_only_without_eps():
  """optax adds eps to sqrt(v_hat): with gradients of about eps its steps differ from Keras's,
  and with eps 0 on both sides they are the same."""
  ours, theirs = adamw_steps(large_step_seed_config('optax'), keras_epsilon=1e-3)
  assert max(np.abs(ours[k] - theirs[k]).max() for k in ours) > 1e-3
  config = large_step_seed_config('optax')
  config.adam_eps = 0.0
  ours, theirs = adamw_steps(config, keras_epsilon=0.0)
  for k in ours:
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_eps_placements_keep_the_same_optimizer_state():
  """Either placement's optimizer state has the other's structure and shapes, so a run can
  resume with the other placement."""
  params = {'w': np.zeros((3, 4), np.float32), 'b': np.zeros((4,), np.float32)}
  states = [train_state.create_optimizer(large_step_seed_config(placement),
                                         optax.constant_schedule(1e-2)).init(params)
            for placement in ('optax', 'keras')]
  shapes = [jax.tree.map(np.shape, state) for state in states]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  assert shapes[0] == shapes[1]


def test_unknown_eps_placement_is_a_config_error():
  config = cifar10_seed.get_config()
  config.adam_eps_placement = 'pytorch'
  with pytest.raises(config_validation.ConfigError, match='adam_eps_placement'):
    config_validation.validate(config)


# --- Dropout placement ---

# Dropout draws per chunk of the 'other' shape (3 layers, r = 3: perceptual blocks 0 and 3 also
# cross-attend), as measured in the Keras seed: every dropout layer of the recurrent cell sees
# training=True inside `keras.layers.RNN`: each attention sub-layer the cell calls drops
# attention probabilities, and each block's feed-forward network drops its output once per call
# of the block, twice in the blocks that also cross-attend.
DROPOUT_CALLS_PER_CHUNK = {
    'perceptual_0/attention': 1, 'perceptual_0/slow_attention': 1, 'perceptual_0/mlp': 2,
    'perceptual_1/attention': 1, 'perceptual_1/mlp': 1,
    'perceptual_2/attention': 1, 'perceptual_2/mlp': 1,
    'perceptual_3/attention': 1, 'perceptual_3/slow_attention': 1, 'perceptual_3/mlp': 2,
    'slow_update/attention': 1, 'slow_update/mlp': 1,
}


@pytest.fixture(scope='module')
def dropout_model():
  """The Keras seed model of the 'other' shape with the seed's dropout rates (0.2), built on
  images (2, 16, 16, 3), which it returns too."""
  keras.utils.set_random_seed(0)
  shape = SHAPES['other']
  images = np.random.default_rng(0).random((2, shape['image_size'], shape['image_size'], 3),
                                           dtype=np.float32)
  model = keras_seed.build_seed_model(shape)
  model(images, training=False)
  return model, images


def keras_dropout_layers(model) -> dict[str, object]:
  """{site: Keras Dropout layer} for every dropout layer of the seed's recurrent cell, each site
  named by its flax module, as in `DROPOUT_CALLS_PER_CHUNK`."""
  cell = model.rnn.cell
  blocks = dict({f'perceptual_{i}': b for i, b in enumerate(cell.perceptual_module)},
                slow_update=cell.tlb_module)
  layers = {}
  for name, block in blocks.items():
    for sub_layer, attention in (('attention', block.fast_stream_attention),
                                 ('slow_attention', block.slow_stream_attention)):
      # MultiHeadAttention makes its dropout layer when first called; the cell never calls
      # the second sub-layer of blocks that do not cross-attend.
      if attention.built:
        layers[f'{name}/{sub_layer}'] = attention.multi_head_attention._dropout_layer
    layers[f'{name}/mlp'] = block.ffn.ffn.layers[-1]
  return layers


def test_keras_rnn_passes_training_to_every_dropout_of_its_cell(dropout_model, monkeypatch):
  """Counted in a training-mode call: the calls of each Dropout layer that receive
  training=True, per call of the cell (the RNN calls it once per chunk, plus once to learn the
  output's shape)."""
  model, images = dropout_model
  calls = collections.Counter()

  def counting(layer, site, counts):
    call = layer.call

    def counted_call(*args, **kwargs):
      calls[site] += counts(kwargs)
      return call(*args, **kwargs)
    monkeypatch.setattr(layer, 'call', counted_call)

  for site, layer in keras_dropout_layers(model).items():
    counting(layer, site, lambda kwargs: kwargs.get('training') is True)
  # The cell's `call` takes no `training`: the RNN passes it none.
  counting(model.rnn.cell, 'cell', lambda kwargs: 1)
  model(images, training=True)
  cell_calls = calls.pop('cell')
  assert {site: n / cell_calls for site, n in calls.items()} == DROPOUT_CALLS_PER_CHUNK


def test_every_keras_dropout_layer_changes_the_training_output(dropout_model, monkeypatch):
  """With all other dropout rates at 0, each Dropout layer alone (at the seed's 0.2) makes the
  training-mode probabilities differ from the eval-mode ones."""
  model, images = dropout_model
  layers = keras_dropout_layers(model)
  for layer in layers.values():
    monkeypatch.setattr(layer, 'rate', 0.0)
  eval_probabilities = np.asarray(model(images, training=False))
  acting = []
  for site, layer in layers.items():
    layer.rate = 0.2
    if np.abs(np.asarray(model(images, training=True)) - eval_probabilities).max() > 1e-6:
      acting.append(site)
    layer.rate = 0.0
  assert sorted(acting) == sorted(DROPOUT_CALLS_PER_CHUNK)


def test_keras_seed_variant_drops_out_where_keras_does():
  """Our masks drawn in a training-mode call (Dropout calls that are not deterministic, per
  trace of the scanned cell) are those measured in the Keras cell."""
  shape = SHAPES['other']
  model = flax_model(shape)
  images = np.zeros((2, shape['image_size'], shape['image_size'], 3), np.float32)
  calls = collections.Counter()

  def count(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module, TLBCell):
      calls['cell'] += 1
    elif (context.method_name == '__call__' and isinstance(context.module, Dropout)
          and not kwargs['deterministic'] and context.module.rate > 0):
      # 'recurrence/perceptual_0/mlp/Dropout_0' -> 'perceptual_0/mlp'
      calls['/'.join(context.module.path[1:-1])] += 1
    return next_fun(*args, **kwargs)

  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          images)
  with nn.intercept_methods(count):
    jax.eval_shape(lambda p: model.apply(p, images, train=True,
                                         rngs={'dropout': jax.random.PRNGKey(1)}), params)
  cell_calls = calls.pop('cell')
  assert {site: n / cell_calls for site, n in calls.items()} == DROPOUT_CALLS_PER_CHUNK
