"""The files of a run's workdir besides its checkpoints and TensorBoard events.

  config.json   the config the run started with
  config_changes.json  the segments that a resume started with changed fields, in order:
                {'segments': [{'step': S, 'changes': {'field': [old, new]}}]}; config.json
                with these applied is the config the run last trained with (`load_config`:
                what eval, predict, plots and export rebuild the model from)
  labels.json   {'class_names': [...]}, and for CIFAR-100 'superclass_names' and
                'superclass_of_class' (the superclass of each class)
  results.json  final figures: training, validation and test (`update_results`)
  test_confusion.npy  the test split's confusion matrix (K, K) int64, true class by row
  plots/        curves.png, attention.png, confusion.png
  params/       exported parameters (`--mode=export`), instead of checkpoints/

Only process 0 writes; every writer here returns without writing on the other processes.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from tlb_jax import config_validation, input_pipeline

CONFIG = 'config.json'
CONFIG_CHANGES = 'config_changes.json'
LABELS = 'labels.json'
RESULTS = 'results.json'
CONFUSION = 'test_confusion.npy'
PLOTS = 'plots'


class WorkdirError(Exception):
  """A workdir's files cannot be used; the message says why and what to do."""


def plots_dir(workdir: str) -> str:
  return os.path.join(workdir, PLOTS)


def _write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes atomically (a reader never sees half a file), on process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(workdir: str, name: str, what: str) -> dict[str, Any]:
  path = os.path.join(workdir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise WorkdirError(f'{path} is missing ({what}); is --workdir={workdir} a tlb-jax '
                       'training workdir?') from None
  except (OSError, ValueError) as e:
    raise WorkdirError(f'cannot read {path}: {e}') from None


def check_workdir(workdir: str) -> None:
  if not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} does not exist; pass the workdir of a training run')


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  _write_json(os.path.join(workdir, CONFIG), config.to_dict())


def _with_changes(config: dict[str, Any], changes: list[dict[str, Any]]) -> dict[str, Any]:
  """`config` (a nested dict) with every [old, new] change of `changes` set to new."""
  config = json.loads(json.dumps(config))  # a deep copy
  for record in changes:
    for field, (_, new) in record['changes'].items():
      *sections, name = field.split('.')
      section = config
      for key in sections:
        section = section.setdefault(key, {})
      section[name] = new
  return config


def _config_changes(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, CONFIG_CHANGES)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    try:
      return json.load(f)['segments']
    except (ValueError, KeyError) as e:
      raise WorkdirError(f'cannot read {path}: {e}') from None


def changed_fields(saved: dict[str, Any], config: ml_collections.ConfigDict
                   ) -> dict[str, list[Any]]:
  """{field: [saved value, value in `config`]} for every field of the saved config whose value
  differs. Fields the saved config lacks are left out: they were added to tlb-jax after the run
  started, in another model's section (a run lacking a field of its own is refused, unless the
  field shapes only the initial parameters: `saved_config` then sets it)."""
  old = config_validation.dotted_fields(saved)
  new = config_validation.dotted_fields(json.loads(json.dumps(config.to_dict())))
  return {field: [old[field], value] for field, value in sorted(new.items())
          if field in old and old[field] != value}


def record_config(workdir: str, config: ml_collections.ConfigDict, step: int,
                  trains: bool = True) -> None:
  """Keeps the record of how the run in `workdir` is trained from `step` on.

  At step 0 (a new run) `config` becomes config.json. On a resume, the fields that differ from
  the config the run last trained with are named in one log line and, if the run `trains`
  further (it has not finished), appended to config_changes.json with `step`; config.json
  itself is never rewritten.
  """
  if jax.process_index() != 0:
    return
  changes_path = os.path.join(workdir, CONFIG_CHANGES)
  saved = saved_config(workdir)
  if step == 0 or saved is None:
    if os.path.exists(changes_path):
      os.remove(changes_path)  # of an earlier start that saved no checkpoint
    write_config(workdir, config)
    return
  changes = changed_fields(saved, config)
  if not changes:
    return
  described = ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changes.items())
  if not trains:
    logging.warning('The run finished at step %d; its changed fields are not used: %s',
                    step, described)
    return
  logging.warning('Resuming at step %d with changed fields: %s (recorded in %s)', step,
                  described, changes_path)
  _write_json(changes_path,
              {'segments': _config_changes(workdir) + [{'step': step, 'changes': changes}]})


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The config the run in `workdir` last trained with (config.json with the changes of
  config_changes.json applied, and the initialization fields a run of an older tlb-jax lacks
  set as it used them) as a dict, or None if it has no config.json."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  started = _read_json(workdir, CONFIG, 'the run\'s config')
  return config_validation.with_initialization_fields(
      _with_changes(started, _config_changes(workdir)))


def check_current_fields(workdir: str, saved: dict[str, Any]) -> None:
  """Raises WorkdirError if config.json lacks fields the current trainer needs (a workdir of an
  older tlb-jax)."""
  missing = config_validation.missing_fields(saved)
  if missing:
    raise WorkdirError(
        f'{os.path.join(workdir, CONFIG)} lacks the fields {", ".join(missing)} (the run was '
        'made by an older tlb-jax); retrain it, or pass --fresh to move its checkpoints aside '
        'and start over')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with."""
  check_workdir(workdir)
  saved = saved_config(workdir)
  if saved is None:
    _read_json(workdir, CONFIG, 'the run\'s config')  # raises, saying what is missing
  check_current_fields(workdir, saved)
  return ml_collections.ConfigDict(saved)


def write_labels(workdir: str, class_names: tuple[str, ...],
                 superclasses: input_pipeline.Superclasses | None = None) -> None:
  labels = {'class_names': list(class_names)}
  if superclasses is not None:
    labels.update(superclass_names=list(superclasses.names),
                  superclass_of_class=list(superclasses.of_class))
  _write_json(os.path.join(workdir, LABELS), labels)


def load_class_names(workdir: str) -> tuple[str, ...]:
  names = _read_json(workdir, LABELS, 'the class names').get('class_names')
  if not names:
    raise WorkdirError(f'{os.path.join(workdir, LABELS)} has no class_names')
  return tuple(names)


def load_superclasses(workdir: str) -> input_pipeline.Superclasses | None:
  """The superclasses in labels.json, or None for a dataset without them."""
  labels = _read_json(workdir, LABELS, 'the class names')
  if 'superclass_names' not in labels:
    return None
  return input_pipeline.Superclasses(names=tuple(labels['superclass_names']),
                                     of_class=tuple(labels['superclass_of_class']))


def results_path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS)


def load_results(workdir: str) -> dict[str, Any]:
  return _read_json(workdir, RESULTS, 'the run\'s results')


def merged_results(workdir: str, fields: dict[str, Any]) -> dict[str, Any]:
  """`fields` (which hold 'step') with the other fields of the workdir's results.json if it is
  of the same step (a re-evaluation keeps the training figures)."""
  if os.path.exists(results_path(workdir)):
    try:
      previous = load_results(workdir)
    except WorkdirError:
      previous = {}
    if previous.get('step') == fields['step']:
      return {**previous, **fields}
  return dict(fields)


def update_results(workdir: str, fields: dict[str, Any]) -> dict[str, Any]:
  """Writes `merged_results(workdir, fields)` to results.json and returns it."""
  results = merged_results(workdir, fields)
  _write_json(results_path(workdir), results)
  return results


def write_confusion(workdir: str, confusion: np.ndarray) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFUSION)
  with open(path + '.tmp', 'wb') as f:
    np.save(f, confusion)
  os.replace(path + '.tmp', path)


def load_confusion(workdir: str) -> np.ndarray | None:
  """The test split's confusion matrix, or None if the run has not been tested."""
  path = os.path.join(workdir, CONFUSION)
  return np.load(path) if os.path.exists(path) else None


def run_fields(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int,
               num_params: int) -> dict[str, Any]:
  """The fields of results.json that say which run and checkpoint the figures are of."""
  return {
      'model': config.model,
      'dataset': config.dataset,
      'step': step,
      'epochs': step / steps_per_epoch if steps_per_epoch else None,
      'num_params': int(num_params),
      'eval_split': config.eval_split,
      'test_split': config.test_split,
  }
