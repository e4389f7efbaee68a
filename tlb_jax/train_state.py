"""The train state and its optimizer: AdamW with a learning-rate schedule, optional clipping and
weight decay on kernels only, and epsilon where optax or where Keras puts it."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from tlb_jax.choices import ADAM_EPS_PLACEMENTS


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base PRNG key (raw uint32 key data, so Orbax can store it)."""

  rng: jax.Array


def num_params(params) -> int:
  """How many numbers a parameter tree (one copy, not replicated) holds."""
  return sum(x.size for x in jax.tree.leaves(params))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """'constant' (the seed) or linear warmup then cosine decay to `min_learning_rate`."""
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=config.min_learning_rate)


def weight_decay_mask(params) -> Any:
  """True for the matrices and kernels that weight decay should shrink: not biases, norms,
  position embeddings or the initial slow stream."""
  def decays(path, param):
    name = jax.tree_util.keystr(path)
    # DenseGeneral biases are (H, Dh) or (3, H, Dh): the name, not ndim, tells them apart.
    return (param.ndim > 1 and not name.endswith("['bias']")
            and 'position_embedding' not in name and 'initial_' not in name)
  return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_keras_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """`optax.scale_by_adam` with epsilon placed as Keras's Adam and AdamW place it.

  Keras takes the step lr * m * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps), that is
  lr * m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t)): optax's step with an epsilon that starts
  1 / sqrt(1 - b2) times larger (about 32x for b2 = 0.999) and shrinks to eps as t grows. The
  state is `optax.ScaleByAdamState`, as `optax.scale_by_adam`'s, so either placement restores
  the other's checkpoints.
  """
  adam = optax.scale_by_adam(b1, b2, eps)

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    step_eps = eps / jnp.sqrt(1 - b2**count.astype(jnp.float32))
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + step_eps), mu_hat, nu_hat)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(adam.init, update_fn)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """AdamW, optionally with global-norm gradient clipping, decay on kernels only and Keras's
  epsilon placement (`config.adam_eps_placement`)."""
  mask = None if config.weight_decay_on == 'all' else weight_decay_mask
  if config.adam_eps_placement not in ADAM_EPS_PLACEMENTS:
    raise ValueError(f'adam_eps_placement must be one of {ADAM_EPS_PLACEMENTS}, '
                     f'got {config.adam_eps_placement!r}')
  if config.adam_eps_placement == 'keras':
    # optax.adamw's chain, with Keras's Adam scaling in place of optax's.
    adamw = optax.chain(scale_by_keras_adam(config.adam_b1, config.adam_b2, config.adam_eps),
                        optax.add_decayed_weights(config.weight_decay, mask),
                        optax.scale_by_learning_rate(learning_rate_fn))
  else:
    adamw = optax.adamw(learning_rate_fn, b1=config.adam_b1, b2=config.adam_b2,
                        eps=config.adam_eps, weight_decay=config.weight_decay,
                        mask=mask)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
  return adamw


def create_train_state(rng, model, image_size: int,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initializes parameters (float32) and optimizer state at step 0."""
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = jax.jit(functools.partial(model.init, train=False))(init_rng, dummy)['params']
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=state_rng)
