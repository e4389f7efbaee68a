"""Training loop: pmap data parallelism, clu metrics, Orbax checkpoints, TensorBoard.

The steps are pure functions of (state, batch); everything random is derived from the state's
`rng` and step, and the data order from (seed, epoch), so a resumed run replays exactly the
batches and dropout masks an uninterrupted one would have used.
"""

import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, metrics, parameter_overview, periodic_actions
from flax import jax_utils

from tlb_jax import (augment, checkpointing, config_validation, evaluation, input_pipeline,
                     run_files, run_plots, training_clock)
from tlb_jax.models import create_model
from tlb_jax.train_state import (TrainState, create_learning_rate_fn, create_optimizer,
                                 create_train_state, num_params)


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy
  top5_accuracy: metrics.Average.from_output('top5_correct')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  nonfinite_steps: metrics.Average.from_output('nonfinite')  # fraction of steps


def train_step(state: TrainState, batch, *, learning_rate_fn, resize_size: int,
               image_size: int, random_flip: bool, label_smoothing: float, crop_padding: int = 0,
               mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
               skip_nonfinite_steps: bool = False, microbatch_size: int = 0):
  """One AdamW step on a per-device batch; gradients and metrics are averaged over 'batch'.

  With `mixup_alpha` or `cutmix_alpha` > 0 the augmented images are blended in pairs
  (`augment.mix_batch`) and the loss weighs both labels; the accuracy metrics still compare
  against each image's own label.

  With `microbatch_size` > 0 (a divisor of the per-device batch; a batch no larger is one
  micro-batch) the gradient is accumulated over micro-batches of that many images, one after
  the other, so the step's activations take the memory of one micro-batch; the update is the
  whole batch's (dropout masks are drawn per micro-batch).

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
  targets = [(labels, 1.0)]  # (labels, weight of their loss)
  if mixup_alpha > 0 or cutmix_alpha > 0:
    # fold_in rather than a wider split keeps the crop, flip and dropout draws of unmixed runs.
    images, own_label_weight = augment.mix_batch(
        jax.random.fold_in(augment_rng, 2), images, mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha)
    targets = [(labels, own_label_weight), (augment.partners(labels), 1.0 - own_label_weight)]

  def loss_fn(params, images, targets, dropout_rng):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': dropout_rng})
    losses = evaluation.cross_entropy_loss(logits, targets[0][0], label_smoothing)
    if len(targets) > 1:
      losses = targets[0][1] * losses + targets[1][1] * evaluation.cross_entropy_loss(
          logits, targets[1][0], label_smoothing)
    return losses.mean(), (losses, logits)

  if not 0 < microbatch_size < labels.shape[0]:
    grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(
        state.params, images, targets, dropout_rng)
  else:
    grads, losses, logits = _accumulated_gradients(loss_fn, state.params, images, targets,
                                                   dropout_rng, microbatch_size)
  grads = jax.lax.pmean(grads, axis_name='batch')
  finite = (jnp.isfinite(optax.tree.norm(grads))
            & jnp.isfinite(jax.lax.pmean(losses.mean(), axis_name='batch')))
  new_state = state.apply_gradients(grads=grads)
  if skip_nonfinite_steps:
    skipped = state.replace(step=new_state.step)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, skipped)
  step_metrics = TrainMetrics.gather_from_model_output(
      loss=losses, logits=logits, labels=labels,
      top5_correct=evaluation.top5_correct(logits, labels),
      learning_rate=learning_rate_fn(state.step), nonfinite=1.0 - finite.astype(jnp.float32))
  return new_state, step_metrics


def _accumulated_gradients(loss_fn, params, images, targets, dropout_rng, microbatch_size: int):
  """The gradient of the mean loss over the batch, summed over micro-batches of
  `microbatch_size` images in a `lax.scan` (one micro-batch's activations live at a time).

  Args:
    loss_fn: (params, images, targets, dropout_rng) -> (mean loss, (losses, logits)).
    images: (b, h, w, 3); targets: [(labels (b,), weight)], b a multiple of microbatch_size.

  Returns:
    (gradients, losses (b,), logits (b, num_classes)).
  """
  batch = images.shape[0]
  count = batch // microbatch_size
  split = lambda x: x.reshape((count, microbatch_size) + x.shape[1:])
  weights = [weight for _, weight in targets]

  def accumulate(grads, micro_batch):
    index, micro_images, micro_labels = micro_batch
    part_grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(
        params, micro_images, list(zip(micro_labels, weights)),
        jax.random.fold_in(dropout_rng, index))
    # Each micro-batch's mean loss weighs 1/count of the batch's mean.
    grads = jax.tree.map(lambda total, part: total + part / count, grads, part_grads)
    return grads, (losses, logits)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, (losses, logits) = jax.lax.scan(
      accumulate, zeros,
      (jnp.arange(count), split(images), [split(labels) for labels, _ in targets]))
  return grads, losses.reshape(batch), logits.reshape((batch,) + logits.shape[2:])


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
      mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
      skip_nonfinite_steps=config.skip_nonfinite_steps, microbatch_size=config.microbatch_size)


# `LoopCarry.first_nonfinite` while every step so far was finite: a step no run reaches.
NO_STEP = int(np.iinfo(np.int32).max)


@flax.struct.dataclass
class LoopCarry:
  """What the loop accumulates on the devices between two reads on the host: the training
  metrics since the last log point, the first step whose loss or gradient was not finite
  (`NO_STEP` if none was), and the number of a signal that asked any process to stop (0 if
  none did), so that every process of a run stops at the same step."""

  metrics: TrainMetrics
  first_nonfinite: jax.Array
  stop_signal: jax.Array


def empty_carry() -> LoopCarry:
  """A `LoopCarry` of no steps, replicated on the local devices like the train state."""
  carry = LoopCarry(metrics=TrainMetrics.empty(),
                    first_nonfinite=jnp.asarray(NO_STEP, jnp.int32),
                    stop_signal=jnp.asarray(0, jnp.int32))
  return jax_utils.replicate(carry, axis_name='batch')


def with_stop_signal(batches, stop: list, num_devices: int):
  """Sharded `batches`, each with 'stop': (num_devices,) int32, the first signal in `stop` when
  the batch was made (0: none), for the loop step to share with every process."""
  for batch in batches:
    yield {**batch, 'stop': np.full((num_devices,), stop[0] if stop else 0, np.int32)}


def make_loop_step(config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule):
  """The loop's step, pmapped over 'batch': (state, carry, batch) -> (state, carry).

  `train_step`, whose metrics are merged into the replicated `LoopCarry` on the devices, so
  that the host dispatches step after step without reading any of their results. A batch's
  optional 'stop' (`with_stop_signal`) goes into the carry's `stop_signal`, the largest over
  every device of every process. The state is donated; the carry is not (a carry taken at a
  log point stays readable while later steps run).
  """
  step_fn = make_train_step(config, learning_rate_fn)

  def loop_step(state, carry, batch):
    batch = dict(batch)
    stop_signal = batch.pop('stop', jnp.zeros((), jnp.int32))
    new_state, step_metrics = step_fn(state, batch)
    nonfinite = step_metrics.nonfinite_steps.total > 0
    first = jnp.minimum(carry.first_nonfinite,
                        jnp.where(nonfinite, state.step + 1, NO_STEP).astype(jnp.int32))
    merged = LoopCarry(metrics=carry.metrics.merge(step_metrics), first_nonfinite=first,
                       stop_signal=jnp.maximum(carry.stop_signal,
                                               jax.lax.pmax(stop_signal, axis_name='batch')))
    # The input's dtypes, so that the carry's signature never changes and the step compiles once.
    return new_state, jax.tree.map(lambda new, old: new.astype(old.dtype), merged, carry)

  return jax.pmap(loop_step, axis_name='batch', donate_argnums=(0,))


def dispatch_steps(p_loop_step, state, carry: LoopCarry, batches, step: int, until: int,
                   stop: list, report_progress=None):
  """Dispatches the steps after `step` up to `until` (at least one; fewer once `stop` holds a
  signal) and returns (state, carry, the last step dispatched).

  Reads no device value on the host, so it returns without waiting for the steps to run: the
  loop's reads (`fetch`) happen only at the points `next_check` names.
  """
  while True:
    step += 1
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, carry = p_loop_step(state, carry, next(batches))
    if report_progress is not None:
      report_progress(step)
    if step >= until or stop:
      return state, carry, step


def next_check(step: int, total_steps: int, every: tuple[int, ...]) -> int:
  """The first step after `step` that is a multiple of one of `every` (zeros ignored), or
  `total_steps` if that comes first: where the loop next reads the carry."""
  return min([total_steps] + [(step // e + 1) * e for e in every if e > 0])


def fetch(carry: LoopCarry) -> LoopCarry:
  """The carry on the host (the first device's copy; the replicas are equal); waits for the
  step that produced it."""
  return jax.tree.map(lambda x: x[0], jax.device_get(carry))


def check_finite(first_nonfinite: int, checkpoints: checkpointing.Checkpoints,
                 skip_nonfinite_steps: bool) -> None:
  """Raises DivergenceError if a step was not finite (unless those steps are skipped)."""
  if skip_nonfinite_steps or first_nonfinite == NO_STEP:
    return
  latest = checkpoints.latest_saved_step()
  kept = 'none yet' if latest is None else f'step {latest}'
  raise DivergenceError(
      f'the loss or gradient is not finite at step {first_nonfinite}; nothing was saved after '
      f'it (last good checkpoint: {kept}). Lower --config.learning_rate, set '
      '--config.grad_clip_norm, or pass --config.skip_nonfinite_steps=True, then run the same '
      'command to resume')


def _write_train_scalars(writer, step: int, steps_per_epoch: int, metrics: TrainMetrics):
  scalars = {k: float(v) for k, v in metrics.compute().items()}
  scalars['epoch'] = step / steps_per_epoch
  writer.write_scalars(step, {f'train_{k}': v for k, v in scalars.items()})


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What a run is made of, fixed for its whole length: its config and workdir, the data, the
  model and the learning-rate schedule over `total_steps` steps of `steps_per_epoch` each."""

  config: ml_collections.ConfigDict
  workdir: str
  data: input_pipeline.Dataset
  model: Any
  learning_rate_fn: optax.Schedule
  steps_per_epoch: int
  total_steps: int


def set_up_run(config: ml_collections.ConfigDict, workdir: str, fresh: bool) -> RunSetup:
  """Checks the config and workdir (moving an earlier run aside with `fresh`), loads the data
  and builds the model and schedule. Raises the user errors main.py reports in one line."""
  config_validation.validate(config, jax.device_count())  # every process's devices
  config_validation.check_workdir_writable(workdir)
  if fresh:
    checkpointing.start_fresh(workdir)
  checkpointing.check_compatible(workdir, config)
  data = input_pipeline.load(config)
  steps_per_epoch = len(data.train) // config.batch_size
  if steps_per_epoch == 0:
    raise input_pipeline.DataError(
        f'{config.train_split} has {len(data.train)} examples, fewer than one batch of '
        f'{config.batch_size}; lower --config.batch_size or widen --config.train_split')
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  return RunSetup(config=config, workdir=workdir, data=data,
                  model=create_model(config, data.num_classes),
                  learning_rate_fn=create_learning_rate_fn(config, steps_per_epoch, total_steps),
                  steps_per_epoch=steps_per_epoch, total_steps=total_steps)


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
  run = set_up_run(config, workdir, fresh)
  state = create_train_state(jax.random.PRNGKey(config.seed), run.model, config.image_size,
                             create_optimizer(config, run.learning_rate_fn))
  with checkpointing.Checkpoints(workdir, config) as checkpoints:
    state = checkpoints.restore_latest(state)
    clock = training_clock.TrainingClock.resumed_from(checkpoints.restored_metadata,
                                                      step=int(state.step))
    warning = device_count_change(checkpoints.restored_metadata.get(DEVICES),
                                  jax.device_count(), int(state.step))
    if warning:
      logging.warning(warning)
    checkpoints.metadata_fn = lambda: {**clock.reading(), DEVICES: jax.device_count()}
    try:
      return _train_and_test(run, state, checkpoints, clock)
    except (Interrupted, DivergenceError):
      raise  # every process stops at the same step: their saves finish
    except Exception:
      if jax.process_count() > 1:
        # Most likely another process died, and pending saves would wait for it forever.
        checkpoints.abandon()
      raise


# Checkpoint metadata: the devices the run trained on up to the checkpoint's step.
DEVICES = 'devices'


def device_count_change(recorded: int | None, current: int, step: int) -> str | None:
  """The warning for a run resumed on another number of devices than its checkpoint was
  trained on (None if the same, or not recorded). The run goes on; its augmentation and dropout
  draw other samples from then on than an uninterrupted run would, since each device draws its
  own."""
  if recorded is None or int(recorded) == current:
    return None
  devices = lambda n: f'{n} device' + ('' if int(n) == 1 else 's')
  return (f'The checkpoint of step {step} was trained on {devices(recorded)} and this segment '
          f'runs on {devices(current)}: from here on the run draws other augmentation and dropout '
          f'samples than an uninterrupted one (on a CPU, TLB_JAX_CPU_DEVICES={recorded} '
          'repeats them)')


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The run's pmapped steps: training, validation during training, and the final evaluations
  with the test-time views `final_views` (`evaluation.eval_view_args`)."""

  train: Any
  eval: Any
  final_eval: Any
  final_views: dict[str, Any]


def compile_steps(run: RunSetup) -> CompiledSteps:
  config = run.config
  return CompiledSteps(
      train=make_loop_step(config, run.learning_rate_fn),
      eval=jax.pmap(evaluation.make_eval_step(config, run.model), axis_name='batch'),
      final_eval=jax.pmap(evaluation.make_eval_step(config, run.model, test_time=True),
                          axis_name='batch'),
      final_views=evaluation.eval_view_args(config, test_time=True))


def _train_and_test(run: RunSetup, state: TrainState, checkpoints: checkpointing.Checkpoints,
                    clock: training_clock.TrainingClock) -> dict[str, Any]:
  """`train_and_evaluate` from the restored `state` on: the loop, the final evaluations,
  results.json and the plots."""
  start_step, param_count = int(state.step), num_params(state.params)
  writer = metric_writers.create_default_writer(
      run.workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  _start_records(run, state, writer, start_step)
  steps = compile_steps(run)
  # Replicate onto the pmap's own axis name: the steps' outputs then have the sharding of
  # their inputs, so the train step is not compiled a second time at step 2.
  state = jax_utils.replicate(state, axis_name='batch')
  final_eval = None
  if start_step < run.total_steps:
    loop = TrainingLoop(run, steps, checkpoints, clock, writer, state, start_step)
    state, final_eval = loop.run()
  elif os.path.exists(run_files.results_path(run.workdir)):
    logging.info('Run already finished at step %d; results in %s', start_step,
                 run_files.results_path(run.workdir))
    return run_files.load_results(run.workdir)
  results = final_evaluation(run, steps, state, writer, final_eval)
  results.update(run_files.run_fields(run.config, run.total_steps, run.steps_per_epoch,
                                      param_count),
                 resumed_from_step=start_step, **clock.results(run.total_steps,
                                                               run.config.batch_size))
  checkpoints.wait_until_finished()
  return _write_results(run, state, writer, results)


def _start_records(run: RunSetup, state: TrainState, writer, start_step: int) -> None:
  """The workdir's record of the run as it starts or resumes: config (and its changes),
  labels, the parameter overview and hyper-parameters of a new run, and the first log lines."""
  config = run.config
  run_files.record_config(run.workdir, config, start_step,
                          trains=start_step < run.total_steps)
  run_files.write_labels(run.workdir, run.data.class_names, run.data.superclasses)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams(config_validation.hparams(config))
  logging.info('Config:\n%s', config)
  logging.info('%s: %d parameters; %d steps of %d images (%d per epoch); starting at step %d',
               config.model, num_params(state.params), run.total_steps, config.batch_size,
               run.steps_per_epoch, start_step)


class TrainingLoop:
  """The steps from a run's start (or resume) step to its last, and what happens at their check
  points: logging, validation, checkpoint saves and stopping on a signal.

  The host dispatches the steps without reading any of their results (`dispatch_steps`), and
  reads the devices (`fetch`) only at check points: multiples of the logging, epoch,
  checkpoint and validation intervals, and the last step. A check point that only logs is read
  while the next step runs (it stays `pending` until then); every other one saves a
  checkpoint, and is read, and checked for non-finite steps, before its save.
  """

  def __init__(self, run: RunSetup, steps: CompiledSteps,
               checkpoints: checkpointing.Checkpoints, clock: training_clock.TrainingClock,
               writer: metric_writers.MetricWriter, state, start_step: int):
    self.run_setup, self.steps, self.checkpoints, self.clock = run, steps, checkpoints, clock
    self.writer, self.state, self.step = writer, state, start_step
    self.empty = empty_carry()
    self.carry = self.empty
    self.pending = None  # (step, carry) of a log point, copying to the host while steps run
    self.final_eval = None  # the last validation pass, when it is at the last step
    config = run.config
    self.eval_every_steps = config.eval_every_epochs * run.steps_per_epoch
    self.every = (config.log_every_steps, run.steps_per_epoch, config.checkpoint_every_steps,
                  self.eval_every_steps)
    self.report_progress = periodic_actions.ReportProgress(num_train_steps=run.total_steps,
                                                           writer=writer)

  def run(self):
    """Trains to the last step; returns (replicated state, last-step validation or None).

    Raises:
      Interrupted: a signal stopped the run (after saving a checkpoint).
      DivergenceError: a step was not finite (nothing after it was saved).
    """
    run, num_devices = self.run_setup, jax.local_device_count()
    # A single process stops after the step a signal arrived in. The processes of a
    # multi-process run stop together: at the first read of a carry that holds a signal any of
    # them received.
    alone = jax.process_count() == 1
    self.clock.start()
    with stop_requests() as stop:
      self.batches = jax_utils.prefetch_to_device(with_stop_signal(
          (input_pipeline.shard(b, num_devices) for b in input_pipeline.train_batches(
              run.data.train, run.config.batch_size, run.config.seed, self.step)),
          stop, num_devices), 2)
      self.stop_now = stop if alone else []  # ends a dispatch early
      while self.step < run.total_steps:
        signum = self.run_to_check_point()
        self.act_at_check_point(signum)
    self.writer.flush()
    return self.state, self.final_eval

  def _dispatch(self, until: int) -> None:
    self.state, self.carry, self.step = dispatch_steps(
        self.steps.train, self.state, self.carry, self.batches, self.step, until,
        self.stop_now, self.report_progress)

  def run_to_check_point(self) -> int:
    """Dispatches the steps to the next check point, reading a pending log point once the
    step after it is dispatched; returns the number of a signal that asks to stop, or 0."""
    until = next_check(self.step, self.run_setup.total_steps, self.every)
    self._dispatch(self.step + 1 if self.pending else until)
    signum = 0
    if self.pending:
      logged_step, logged = self.pending
      self.pending = None
      logged = fetch(logged)
      self._check_finite(logged)
      _write_train_scalars(self.writer, logged_step, self.run_setup.steps_per_epoch,
                           logged.metrics)
      signum = int(logged.stop_signal)
      if self.step < until and not (self.stop_now or signum):
        self._dispatch(until)
    return self.stop_now[0] if self.stop_now else signum

  def _check_finite(self, fetched: LoopCarry) -> None:
    check_finite(int(fetched.first_nonfinite), self.checkpoints,
                 self.run_setup.config.skip_nonfinite_steps)

  def act_at_check_point(self, signum: int) -> None:
    """At the check point just reached: logs, validates, saves, and stops on a signal (raises
    Interrupted after the save). A log point only is left pending, to be read later."""
    run, step = self.run_setup, self.step
    last = step == run.total_steps
    epoch_end = step % run.steps_per_epoch == 0
    log = step % run.config.log_every_steps == 0 or epoch_end or last
    evaluate = run.data.eval is not None and (
        (self.eval_every_steps > 0 and step % self.eval_every_steps == 0) or last)
    save = (step % run.config.checkpoint_every_steps == 0 or epoch_end or last
            or bool(signum))
    if not (save or evaluate):  # a log point only
      jax.tree.map(lambda x: x.copy_to_host_async(), self.carry)
      self.pending = (step, self.carry)
      self.carry = self.carry.replace(metrics=self.empty.metrics)
      return
    fetched = fetch(self.carry)
    self._check_finite(fetched)
    signum = signum or int(fetched.stop_signal)
    if log:
      _write_train_scalars(self.writer, step, run.steps_per_epoch, fetched.metrics)
      self.carry = self.carry.replace(metrics=self.empty.metrics)
    if evaluate:
      self._validate(last)
    if save:
      self.checkpoints.save(step, checkpointing.one_copy(self.state))
    if signum:
      name = signal.Signals(signum).name
      raise Interrupted(f'{name} received: stopped at step {step} with a checkpoint in '
                        f'{self.checkpoints.directory}; run the same command to resume', signum)

  def _validate(self, last: bool) -> None:
    """A validation pass (its time is not training time), written to TensorBoard with the
    run's training seconds so far (all segments; `compare` draws the curves against them)."""
    with self.clock.paused(), self.report_progress.timed('eval'):
      result = evaluation.evaluate(self.steps.eval, self.state.params, self.run_setup.data.eval,
                                   self.run_setup.config.eval_batch_size)
    self.writer.write_scalars(self.step, {**{f'eval_{k}': v for k, v in result.items()},
                                          training_clock.SECONDS: self.clock.seconds})
    if last:
      self.final_eval = result


def final_evaluation(run: RunSetup, steps: CompiledSteps, state, writer,
                     final_eval: dict[str, Any] | None) -> dict[str, Any]:
  """The trained model's final validation (with the test-time views) and test figures for
  results.json; writes the test confusion matrix and the test scalars."""
  config, data, results = run.config, run.data, {}
  tta = steps.final_views['augmentation'] != 'none'
  if data.eval is not None:
    if final_eval is None or tta:  # no final validation yet, or not with the test-time views
      final_eval = evaluation.evaluate(steps.final_eval, state.params, data.eval,
                                       config.eval_batch_size)
    results.update(eval_top1=final_eval['accuracy'], eval_top5=final_eval['top5_accuracy'],
                   eval_loss=final_eval['loss'], eval_views=steps.final_views)
  if data.test is not None:
    test_start = time.time()
    test = evaluation.evaluate(steps.final_eval, state.params, data.test,
                               config.eval_batch_size)
    confusion = test.pop('confusion')
    per_class = evaluation.class_results(confusion, data.class_names, data.superclasses)
    results.update(evaluation.results_of_test(test, time.time() - test_start),
                   test_views=steps.final_views, **per_class)
    run_files.write_confusion(run.workdir, confusion)
    writer.write_scalars(run.total_steps, evaluation.test_scalars(test, per_class))
  writer.flush()
  return results


def _write_results(run: RunSetup, state, writer, results: dict[str, Any]) -> dict[str, Any]:
  """Writes results.json and the run's plots, logs the final figures; returns the results."""
  config, workdir = run.config, run.workdir
  results = run_files.update_results(workdir, results)
  if jax.process_index() == 0:
    run_plots.write_run_plots(config, workdir, run.model, jax_utils.unreplicate(state.params),
                              run.data.pictured, run.data.class_names, writer, run.total_steps)
  if run.data.test is None:
    logging.info('Validation: top-1 %.4f, top-5 %.4f (no test split); results in %s',
                 results['eval_top1'], results['eval_top5'], run_files.results_path(workdir))
  else:
    logging.info('Test: top-1 %.4f, top-5 %.4f on %d examples; results in %s',
                 results['test_top1'], results['test_top5'], results['test_examples'],
                 run_files.results_path(workdir))
  return results
