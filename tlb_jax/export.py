"""`--mode=export`: copies a trained run's parameters, without the optimizer state, into a
directory that eval and predict accept as a workdir, with the logits they give on a fixed
generated batch (`reference_logits.json`), by which a later version of the code can check that
it still reads and runs them as they were trained."""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from tlb_jax import config_validation, restore, run_files

REFERENCE_LOGITS = 'reference_logits.json'
REFERENCE_SEED = 0
REFERENCE_IMAGES = 4


def reference_images(image_size: int, seed: int = REFERENCE_SEED,
                     count: int = REFERENCE_IMAGES) -> np.ndarray:
  """The fixed generated batch: (count, image_size, image_size, 3) float32 uniform in [0, 1),
  the model's input range."""
  return np.random.default_rng(seed).random((count, image_size, image_size, 3), np.float32)


def reference_logits(run: restore.Run) -> np.ndarray:
  """The run's logits (REFERENCE_IMAGES, num_classes) float32 on `reference_images`, from the
  model itself (no test-time views)."""
  images = reference_images(run.config.image_size)
  return np.asarray(jax.jit(lambda params, x: run.model.apply({'params': params}, x,
                                                               train=False))(run.params, images))


def load_reference(directory: str) -> dict[str, Any]:
  """An export's reference_logits.json: {'seed', 'logits' (REFERENCE_IMAGES x classes)}."""
  with open(os.path.join(directory, REFERENCE_LOGITS)) as f:
    return json.load(f)


def export(workdir: str, output: str, config: ml_collections.ConfigDict | None = None) -> str:
  """Writes the parameters of `workdir`'s latest checkpoint (no optimizer state) with its
  config.json, labels.json and results.json, and the reference logits, to `output`, a directory
  that eval and predict accept as a workdir; returns `output`."""
  run = restore.restore(workdir, config)
  if os.path.exists(os.path.join(output, restore.EXPORTED_PARAMS)):
    raise restore.InferenceError(f'{output} already holds exported parameters; choose another '
                                 '--output')
  config_validation.check_workdir_writable(output)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(os.path.abspath(output), restore.EXPORTED_PARAMS),
                      {'params': run.params, 'step': np.int32(run.step)})
  run_files.write_config(output, run.config)
  run_files.write_labels(output, run.class_names, run_files.load_superclasses(workdir))
  if os.path.exists(run_files.results_path(workdir)):
    results = run_files.load_results(workdir)
    if results.get('step') == run.step:
      run_files.update_results(output, results)
  with open(os.path.join(output, REFERENCE_LOGITS), 'w') as f:
    json.dump({'seed': REFERENCE_SEED, 'logits': reference_logits(run).tolist()}, f)
  return output
