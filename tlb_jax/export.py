"""`--mode=export`: copies a trained run's parameters, without the optimizer state, into a
directory that eval and predict accept as a workdir."""

import os

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from tlb_jax import config_validation, restore, run_files


def export(workdir: str, output: str, config: ml_collections.ConfigDict | None = None) -> str:
  """Writes the parameters of `workdir`'s latest checkpoint (no optimizer state) with its
  config.json, labels.json and results.json to `output`, a directory that eval and predict
  accept as a workdir; returns `output`."""
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
  return output
