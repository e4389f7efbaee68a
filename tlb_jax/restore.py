"""Restores a trained run from its workdir: the model and its parameters, for eval, predict,
plots and export.

A workdir holds everything needed: `config.json` (the run's config), `labels.json` (class
names) and `checkpoints/` (the train state) or, written by `export.export`, `params/` (the
parameters alone).
"""

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from tlb_jax import checkpointing, run_files, train_state
from tlb_jax.models import create_model

EXPORTED_PARAMS = 'params'  # the directory `export.export` writes the parameters to


class InferenceError(Exception):
  """The workdir cannot be used by eval, predict, plots or export; the message says why and
  what to do."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored training run."""

  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  model: Any
  params: Any  # on one device
  step: int


def is_export(workdir: str) -> bool:
  """True for a directory written by `export.export` (parameters only, no checkpoints)."""
  return os.path.isdir(os.path.join(os.path.abspath(workdir), EXPORTED_PARAMS))


def has_attention(config: ml_collections.ConfigDict) -> bool:
  """Attention maps are the TLB's slow-stream attention; other models have none."""
  return config.model == 'tlb'


def restore(workdir: str, config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores the parameters of `workdir`: its latest readable checkpoint, or the parameters
  `export.export` wrote.

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
  if is_export(workdir):
    params, step = _restore_exported(os.path.join(os.path.abspath(workdir), EXPORTED_PARAMS),
                                     model, config)
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
