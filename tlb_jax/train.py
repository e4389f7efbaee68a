"""Training and evaluation loop: pmap data parallelism, clu metrics, Orbax checkpoints.

The steps are pure functions of (state, batch); everything random is derived from the state's
`rng` and step, and the data order from (seed, epoch), so a resumed run replays exactly the
batches and dropout masks an uninterrupted one would have used.
"""

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, metrics, parameter_overview, periodic_actions
from flax import jax_utils
from flax.training import train_state

from tlb_jax import augment, checkpointing, config_validation, input_pipeline
from tlb_jax.models import create_model


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base PRNG key (raw uint32 key data, so Orbax can store it)."""

  rng: jax.Array


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy
  top5_accuracy: metrics.Average.from_output('top5_correct')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  nonfinite_steps: metrics.Average.from_output('nonfinite')  # fraction of steps


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy
  top5_accuracy: metrics.Average.from_output('top5_correct')


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


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """AdamW, optionally with global-norm gradient clipping and decay on kernels only."""
  mask = None if config.weight_decay_on == 'all' else weight_decay_mask
  adamw = optax.adamw(learning_rate_fn, b1=config.adam_b1, b2=config.adam_b2,
                      weight_decay=config.weight_decay, mask=mask)
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


def cross_entropy_loss(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy in float32: logits (B, K), labels (B,) -> (B,)."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def top5_correct(logits, labels):
  """(B, K), (B,) -> (B,) float32, 1 where the label is among the 5 largest logits."""
  k = min(5, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch, *, learning_rate_fn, resize_size: int,
               image_size: int, random_flip: bool, label_smoothing: float, crop_padding: int = 0,
               mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
               skip_nonfinite_steps: bool = False):
  """One AdamW step on a per-device batch; gradients and metrics are averaged over 'batch'.

  With `mixup_alpha` or `cutmix_alpha` > 0 the augmented images are blended in pairs
  (`augment.mix_batch`) and the loss weighs both labels; the accuracy metrics still compare
  against each image's own label.

  A step whose loss or gradient is not finite is reported in the metrics ('nonfinite'); with
  `skip_nonfinite_steps` it leaves parameters and optimizer state unchanged (the step count
  still advances, so the next batch is used).

  Args:
    state: replicated TrainState.
    batch: {'image': (b, h, w, 3) uint8, 'label': (b,) int32}, b = per-device batch.

  Returns:
    (new state, TrainMetrics gathered over devices).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                           jax.lax.axis_index('batch'))
  augment_rng, dropout_rng = jax.random.split(rng)
  images = augment.train_preprocess(augment_rng, batch['image'], resize_size=resize_size,
                                    image_size=image_size, flip=random_flip,
                                    padding=crop_padding)
  labels = batch['label']
  mixing = mixup_alpha > 0 or cutmix_alpha > 0
  if mixing:
    # fold_in rather than a wider split keeps the crop, flip and dropout draws of unmixed runs.
    images, own_label_weight = augment.mix_batch(
        jax.random.fold_in(augment_rng, 2), images, mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': dropout_rng})
    losses = cross_entropy_loss(logits, labels, label_smoothing)
    if mixing:
      losses = (own_label_weight * losses + (1.0 - own_label_weight)
                * cross_entropy_loss(logits, augment.partners(labels), label_smoothing))
    return losses.mean(), (losses, logits)

  grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name='batch')
  finite = (jnp.isfinite(optax.global_norm(grads))
            & jnp.isfinite(jax.lax.pmean(losses.mean(), axis_name='batch')))
  new_state = state.apply_gradients(grads=grads)
  if skip_nonfinite_steps:
    skipped = state.replace(step=new_state.step)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, skipped)
  step_metrics = TrainMetrics.gather_from_model_output(
      loss=losses, logits=logits, labels=labels, top5_correct=top5_correct(logits, labels),
      learning_rate=learning_rate_fn(state.step), nonfinite=1.0 - finite.astype(jnp.float32))
  return new_state, step_metrics


def eval_logits(apply_fn, params, views):
  """Float32 logits (B, num_classes): the mean over views (V, B, S, S, 3) from
  `augment.eval_views` of the model's logits (one view: that view's logits)."""
  # lax.map traces the model once and keeps one view's activations alive at a time.
  logits = jax.lax.map(lambda images: apply_fn({'params': params}, images, train=False), views)
  return logits.astype(jnp.float32).mean(axis=0)


def eval_step(params, batch, *, apply_fn, image_size: int, resize_size: int = 0,
              augmentation: str = 'none', padding: int = 0):
  """Metrics of a padded per-device batch; padding (mask False) does not count. `padding` is
  the views' reflect padding (`augment.eval_views`), not the batch's."""
  views = augment.eval_views(batch['image'], image_size=image_size, resize_size=resize_size,
                             augmentation=augmentation, padding=padding)
  logits = eval_logits(apply_fn, params, views)
  return EvalMetrics.gather_from_model_output(
      loss=cross_entropy_loss(logits, batch['label']), logits=logits, labels=batch['label'],
      top5_correct=top5_correct(logits, batch['label']), mask=batch['mask'])


class Interrupted(Exception):
  """SIGTERM or SIGINT stopped training after a checkpoint was saved."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


@contextlib.contextmanager
def stop_requests():
  """Within the block, SIGTERM and SIGINT only record themselves in the yielded list, so the
  loop can finish its step and save before stopping."""
  received = []
  if threading.current_thread() is not threading.main_thread():
    yield received  # signal handlers can only be installed from the main thread
    return
  previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


class DivergenceError(Exception):
  """Training produced a non-finite loss or gradient; the message names the step."""


def make_train_step(config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule):
  """`train_step` with the config's static arguments bound; pmap it over axis 'batch'."""
  return functools.partial(
      train_step, learning_rate_fn=learning_rate_fn, resize_size=config.resize_size,
      image_size=config.image_size, random_flip=config.random_flip,
      label_smoothing=config.label_smoothing, crop_padding=config.crop_padding,
      mixup_alpha=config.mixup_alpha,
      cutmix_alpha=config.cutmix_alpha, skip_nonfinite_steps=config.skip_nonfinite_steps)


def make_eval_step(config: ml_collections.ConfigDict, model, test_time: bool = False):
  """`eval_step` with the model and input size bound; pmap it over axis 'batch'. With
  `test_time`, it averages the views of `config.test_time_augmentation` (final evaluations);
  without, it scores the central view only (the cheap per-epoch validation)."""
  return functools.partial(eval_step, apply_fn=model.apply, image_size=config.image_size,
                           **eval_view_args(config, test_time))


def eval_view_args(config: ml_collections.ConfigDict, test_time: bool) -> dict[str, Any]:
  """`augment.eval_views` keyword arguments of `config`. Workdirs trained before the eval
  fields existed have none of them in config.json: they evaluate as they did then."""
  return {'resize_size': config.get('eval_resize_size', 0),
          'augmentation': config.get('test_time_augmentation', 'none') if test_time else 'none',
          'padding': config.get('crop_padding', 0)}


def evaluate(p_eval_step, params, split: input_pipeline.Split,
             batch_size: int) -> dict[str, float]:
  """Evaluates replicated `params` on every example of `split` once."""
  num_devices = jax.local_device_count()
  collected = None
  for batch in input_pipeline.eval_batches(split, batch_size):
    update = jax_utils.unreplicate(p_eval_step(params, input_pipeline.shard(batch, num_devices)))
    collected = update if collected is None else collected.merge(update)
  result = {k: float(v) for k, v in collected.compute().items()}
  result['examples'] = int(collected.accuracy.count)
  return result


def _write_json(path: str, payload: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def results_of_test(metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
  """results.json's test fields from `evaluate`'s metrics on the test split and its duration."""
  return {
      'test_top1': metrics['accuracy'],
      'test_top5': metrics['top5_accuracy'],
      'test_loss': metrics['loss'],
      'test_examples': metrics['examples'],
      'test_wall_time_s': seconds,
      'test_images_per_s': metrics['examples'] / seconds,
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       fresh: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and tests it.

  With `fresh`, an earlier run's checkpoints and results are moved aside first. The final
  validation figures go to results.json when `config.eval_split` is not empty (an empty one
  trains a chosen recipe on all its data, with no validation); the test split's when
  `config.test_split` is not empty.

  Returns:
    The contents of `workdir/results.json`.
  """
  config_validation.validate(config, jax.local_device_count())
  config_validation.check_workdir_writable(workdir)
  if fresh:
    checkpointing.start_fresh(workdir)
  checkpointing.check_compatible(workdir, config)
  data = input_pipeline.load(config)
  model = create_model(config, data.num_classes)

  steps_per_epoch = len(data.train) // config.batch_size
  if steps_per_epoch == 0:
    raise input_pipeline.DataError(
        f'{config.train_split} has {len(data.train)} examples, fewer than one batch of '
        f'{config.batch_size}; lower --config.batch_size or widen --config.train_split')
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch, total_steps)
  state = create_train_state(jax.random.PRNGKey(config.seed), model, config.image_size,
                             create_optimizer(config, learning_rate_fn))

  checkpoints = checkpointing.Checkpoints(workdir, config)
  try:
    state = checkpoints.restore_latest(state)
  except checkpointing.CheckpointError:
    checkpoints.close()
    raise
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    _write_json(os.path.join(workdir, 'labels.json'), {'class_names': list(data.class_names)})
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams(config_validation.flatten(config))
  logging.info('Config:\n%s', config)
  logging.info('%s: %d parameters; %d steps of %d images (%d per epoch); starting at step %d',
               config.model, num_params, total_steps, config.batch_size, steps_per_epoch,
               start_step)

  num_devices = jax.local_device_count()
  p_train_step = jax.pmap(make_train_step(config, learning_rate_fn), axis_name='batch',
                          donate_argnums=(0,))
  p_eval_step = jax.pmap(make_eval_step(config, model), axis_name='batch')
  final_views = eval_view_args(config, test_time=True)  # the final validation's and the test's
  tta = final_views['augmentation'] != 'none'
  p_final_eval_step = (jax.pmap(make_eval_step(config, model, test_time=True), axis_name='batch')
                       if tta else p_eval_step)

  eval_every_steps = config.eval_every_epochs * steps_per_epoch
  # Replicate onto the pmap's own axis name: the steps' outputs then have the sharding of
  # their inputs, so the train step is not compiled a second time at step 2.
  state = jax_utils.replicate(state, axis_name='batch')
  train_start = time.time()
  eval_seconds = 0.0
  final_eval = None
  if start_step < total_steps:
    batches = jax_utils.prefetch_to_device(
        (input_pipeline.shard(b, num_devices) for b in input_pipeline.train_batches(
            data.train, config.batch_size, config.seed, start_step)), 2)
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                                      writer=writer)
    train_metrics = None
    with stop_requests() as stop:
      for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, update = p_train_step(state, next(batches))
        update = jax_utils.unreplicate(update)
        if not config.skip_nonfinite_steps and update.nonfinite_steps.compute() > 0:
          checkpoints.close()
          latest = checkpoints.manager.latest_step()
          kept = 'none yet' if latest is None else f'step {latest}'
          raise DivergenceError(
              f'the loss or gradient is not finite at step {step}; nothing was saved after it '
              f'(last good checkpoint: {kept}). Lower --config.learning_rate, set '
              '--config.grad_clip_norm, or pass --config.skip_nonfinite_steps=True, then run '
              'the same command to resume')
        train_metrics = update if train_metrics is None else train_metrics.merge(update)
        report_progress(step)
        last = step == total_steps
        epoch_end = step % steps_per_epoch == 0
        if step % config.log_every_steps == 0 or epoch_end or last:
          scalars = train_metrics.compute()
          scalars['epoch'] = step / steps_per_epoch
          writer.write_scalars(step, {f'train_{k}': v for k, v in scalars.items()})
          train_metrics = None
        if data.eval is not None and (
            (eval_every_steps > 0 and step % eval_every_steps == 0) or last):
          eval_start = time.time()
          with report_progress.timed('eval'):
            result = evaluate(p_eval_step, state.params, data.eval, config.eval_batch_size)
          eval_seconds += time.time() - eval_start
          writer.write_scalars(step, {f'eval_{k}': v for k, v in result.items()})
          if last:
            final_eval = result
        if step % config.checkpoint_every_steps == 0 or epoch_end or last or stop:
          checkpoints.save(step, jax_utils.unreplicate(state))
        if stop:
          checkpoints.close()
          name = signal.Signals(stop[0]).name
          raise Interrupted(f'{name} received: stopped at step {step} with a checkpoint in '
                            f'{checkpoints.directory}; run the same command to resume', stop[0])
    writer.flush()
  # Validation passes are excluded; compilation and checkpoint saves are included.
  train_seconds = time.time() - train_start - eval_seconds

  results_path = os.path.join(workdir, 'results.json')
  if start_step >= total_steps and os.path.exists(results_path):
    logging.info('Run already finished at step %d; results in %s', start_step, results_path)
    checkpoints.close()
    with open(results_path) as f:
      return json.load(f)

  results = {
      'model': config.model,
      'dataset': config.dataset,
      'step': total_steps,
      'epochs': total_steps / steps_per_epoch,
      'num_params': int(num_params),
      'eval_split': config.eval_split,
      'test_split': config.test_split,
      'resumed_from_step': start_step,
      'train_wall_time_s': train_seconds,
      'train_images_per_s': ((total_steps - start_step) * config.batch_size / train_seconds
                             if start_step < total_steps else None),
  }
  if data.eval is not None:
    if final_eval is None or tta:  # no final validation yet, or not with the test-time views
      final_eval = evaluate(p_final_eval_step, state.params, data.eval, config.eval_batch_size)
    results.update(eval_top1=final_eval['accuracy'], eval_top5=final_eval['top5_accuracy'],
                   eval_loss=final_eval['loss'], eval_views=final_views)
  if data.test is not None:
    test_start = time.time()
    test = evaluate(p_final_eval_step, state.params, data.test, config.eval_batch_size)
    results.update(results_of_test(test, time.time() - test_start),
                   test_views=final_views)
    writer.write_scalars(total_steps, {f'test_{k}': v for k, v in test.items()})
  writer.flush()
  checkpoints.close()
  if jax.process_index() == 0:
    _write_json(results_path, results)
    from tlb_jax import inference  # pylint: disable=g-import-not-at-top  (it imports this module)
    inference.write_run_plots(config, workdir, model, jax_utils.unreplicate(state.params),
                              data.pictured, data.class_names, writer, total_steps)
  if data.test is None:
    logging.info('Validation: top-1 %.4f, top-5 %.4f (no test split); results in %s',
                 results['eval_top1'], results['eval_top5'], results_path)
  else:
    logging.info('Test: top-1 %.4f, top-5 %.4f on %d examples; results in %s',
                 results['test_top1'], results['test_top5'], results['test_examples'],
                 results_path)
  return results
