"""Tests of the trainer: data-parallel steps, learning, checkpoints, resume, optimizer pieces."""

import functools
import json
import os
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import jax_utils

from configs import cifar10, smoke
from tfds_mock import mock_cifar
from tlb_jax import (augment, checkpointing, evaluation, input_pipeline, plots, run_files,
                     train, train_state)
from tlb_jax.models.tlb import TLB

NUM_CLASSES = 10
IMAGE_SIZE = 8
LEARNING_RATE = 3e-3
# 8x8 images, 4x4 patches -> 4 tokens in 2 chunks of 2.
TINY = dict(num_classes=NUM_CLASSES, patch_size=4, embed_dim=16, chunk_size=2, num_latents=2,
            num_layers=1, cross_attention_every=1, num_heads=2, mlp_ratio=2, dropout_rate=0.0,
            attention_dropout_rate=0.0)


def _assert_trees_equal(actual, expected, rtol=0.0, atol=0.0):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def _first(tree):
  """Device 0's copy of a pmapped tree (on host). `jax_utils.unreplicate` keeps the device
  axis of a 1-device pmap's outputs when more devices exist."""
  return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def _batch(num_examples, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
          'label': rng.integers(0, NUM_CLASSES, (num_examples,)).astype(np.int32)}


@pytest.fixture(scope='module')
def tiny():
  """(model, initial TrainState, train step to pmap) for a dropout-free tiny TLB.

  With random_flip=False and resize_size == image_size the augmentation is the identity, so a
  step does not depend on how the batch is split across devices.
  """
  model = TLB(**TINY)
  config = cifar10.get_config()
  config.update(learning_rate=LEARNING_RATE, lr_schedule='constant', weight_decay=0.0,
                grad_clip_norm=0.0)
  learning_rate_fn = train_state.create_learning_rate_fn(config, steps_per_epoch=1, total_steps=1)
  state = train_state.create_train_state(jax.random.PRNGKey(0), model, IMAGE_SIZE,
                                   train_state.create_optimizer(config, learning_rate_fn))
  step = functools.partial(train.train_step, learning_rate_fn=learning_rate_fn,
                           resize_size=IMAGE_SIZE, image_size=IMAGE_SIZE, random_flip=False,
                           label_smoothing=0.0)
  return model, state, step


@functools.lru_cache(maxsize=None)
def _pmapped(step, num_devices):
  return jax.pmap(step, axis_name='batch', devices=jax.local_devices()[:num_devices])


def _run_steps(step, state, batch, num_devices, num_steps=1):
  """Runs `num_steps` pmapped steps on `batch`; returns (state, metrics of the last step)."""
  devices = jax.local_devices()[:num_devices]
  p_step = _pmapped(step, num_devices)
  # On the pmap's axis name, so that step outputs match inputs and the step compiles once.
  replicated = jax_utils.replicate(state, devices, axis_name='batch')
  sharded = input_pipeline.shard(batch, num_devices)
  for _ in range(num_steps):
    replicated, step_metrics = p_step(replicated, sharded)
  return replicated, _first(step_metrics).compute()


# --------------------------------------------------------------------------- data parallelism


def test_two_device_step_equals_one_device_step_on_the_global_batch(tiny):
  """A pmap step over 2 devices (half the batch each, gradients averaged) gives the parameters
  and metrics of a 1-device step on the whole batch; replicas agree.

  SGD (lr 1) makes the new parameters linear in the averaged gradient. Adam's first step is
  lr * g / (|g| + eps), which turns float noise in gradients that are exactly zero in theory
  (key biases: softmax ignores a shift shared by all keys) into arbitrary steps of up to lr.
  """
  assert jax.local_device_count() >= 2, 'tests/conftest.py should force 2 host devices'
  _, adam_state, step = tiny
  sgd = optax.sgd(1.0)
  state = adam_state.replace(tx=sgd, opt_state=sgd.init(adam_state.params))
  batch = _batch(8)
  one, one_metrics = _run_steps(step, state, batch, num_devices=1)
  two, two_metrics = _run_steps(step, state, batch, num_devices=2)
  _assert_trees_equal(jax.tree.map(lambda x: np.asarray(x)[1], two.params), _first(two.params))
  _assert_trees_equal(_first(two.params), _first(one.params), rtol=1e-5, atol=1e-6)
  assert int(_first(two.step)) == int(_first(one.step)) == 1
  for name in ('loss', 'accuracy', 'top5_accuracy', 'learning_rate'):
    np.testing.assert_allclose(two_metrics[name], one_metrics[name], rtol=1e-5)
  # The step did change the parameters.
  changed = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                         _first(one.params), state.params)
  assert max(jax.tree.leaves(changed)) > 1e-4


@pytest.mark.parametrize('num_devices, mixup_alpha', [(1, 0.0), (2, 0.0), (1, 0.4)],
                         ids=['one_device', 'two_devices', 'mixup'])
def test_microbatch_accumulation_gives_the_whole_batch_step(tiny, num_devices, mixup_alpha):
  """Accumulating the gradient over micro-batches of 2 images gives the parameters and metrics
  of the step on the whole batch of 8 (SGD, as above: the update is linear in the gradient)."""
  _, adam_state, step = tiny
  sgd = optax.sgd(1.0)
  state = adam_state.replace(tx=sgd, opt_state=sgd.init(adam_state.params))
  whole_step = functools.partial(step, mixup_alpha=mixup_alpha)
  micro_step = functools.partial(step, mixup_alpha=mixup_alpha, microbatch_size=2)
  batch = _batch(8)
  whole, whole_metrics = _run_steps(whole_step, state, batch, num_devices=1)
  micro, micro_metrics = _run_steps(micro_step, state, batch, num_devices=num_devices)
  _assert_trees_equal(_first(micro.params), _first(whole.params), rtol=1e-5, atol=1e-6)
  for name in ('loss', 'accuracy', 'top5_accuracy'):
    np.testing.assert_allclose(micro_metrics[name], whole_metrics[name], rtol=1e-5)
  changed = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                         _first(micro.params), state.params)
  assert max(jax.tree.leaves(changed)) > 1e-4


def test_tiny_model_overfits_a_fixed_batch(tiny):
  """Repeated steps on one batch of 16 random images with random labels memorize it."""
  _, state, step = tiny
  batch = _batch(16, seed=1)
  _, first = _run_steps(step, state, batch, num_devices=1)
  _, last = _run_steps(step, state, batch, num_devices=1, num_steps=100)
  assert last['loss'] < 0.1 * first['loss']
  assert last['accuracy'] == 1.0


@pytest.mark.parametrize('alphas', [dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0)],
                         ids=['mixup', 'cutmix'])
def test_mixed_batch_loss_weighs_own_and_partner_labels(tiny, alphas):
  """With mixup or CutMix the step's loss is w * CE(label) + (1 - w) * CE(partner's label) on
  the mixed images, w and the images drawn from the step's augmentation key."""
  model, state, step = tiny
  batch = _batch(8, seed=2)
  _, step_metrics = _run_steps(functools.partial(step, **alphas), state, batch, num_devices=1)

  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  augment_rng, _ = jax.random.split(rng)
  mixed, weight = augment.mix_batch(jax.random.fold_in(augment_rng, 2),
                                    augment.to_unit_float(batch['image']),
                                    **{'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, **alphas})
  logits = model.apply({'params': state.params}, mixed, train=False)
  labels = batch['label']
  expected = (weight * evaluation.cross_entropy_loss(logits, labels)
              + (1 - weight) * evaluation.cross_entropy_loss(logits, labels[::-1])).mean()
  assert 0.0 < float(weight) < 1.0
  np.testing.assert_allclose(step_metrics['loss'], expected, rtol=1e-5)


def test_evaluate_counts_every_example_once_with_padding(tiny):
  """evaluate() over 2 devices with a padded last batch matches metrics computed directly."""
  model, state, _ = tiny
  data = _batch(23, seed=2)
  split = input_pipeline.Split(images=data['image'], labels=data['label'])
  p_eval_step = jax.pmap(functools.partial(evaluation.eval_step, apply_fn=model.apply,
                                           image_size=IMAGE_SIZE), axis_name='batch')
  result = evaluation.evaluate(p_eval_step, jax_utils.replicate(state.params), split, batch_size=10)
  logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(
      {'params': state.params}, data['image'] / np.float32(255)))
  losses = np.asarray(evaluation.cross_entropy_loss(logits, data['label']))
  assert result['examples'] == 23
  np.testing.assert_allclose(result['accuracy'], (logits.argmax(-1) == data['label']).mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(result['loss'], losses.mean(), rtol=1e-5)


def test_eval_logits_are_the_mean_of_each_views_logits(tiny):
  model, state, _ = tiny
  views = augment.eval_views(_batch(4, seed=3)['image'], image_size=IMAGE_SIZE,
                             resize_size=IMAGE_SIZE + 2, augmentation='crops_flip')
  apply = jax.jit(lambda images: model.apply({'params': state.params}, images, train=False))
  expected = np.mean([np.asarray(apply(view)) for view in views], axis=0)
  averaged = jax.jit(functools.partial(evaluation.eval_logits, model.apply))(state.params, views)
  np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)


def test_per_epoch_validation_scores_one_view_and_final_evaluations_the_configured_views():
  config = cifar10.get_config()
  config.update(eval_resize_size=52, test_time_augmentation='crops_flip', crop_padding=2)
  assert evaluation.eval_view_args(config, test_time=False) == {'resize_size': 52,
                                                            'augmentation': 'none', 'padding': 2}
  assert evaluation.eval_view_args(config, test_time=True) == {
      'resize_size': 52, 'augmentation': 'crops_flip', 'padding': 2}


def test_the_train_step_crops_the_padded_canvas_the_config_names():
  """cifar10.py trains on crops of the native image reflect-padded by 4, at no resize."""
  config = cifar10.get_config()
  step = train.make_train_step(config, optax.constant_schedule(1e-3))
  assert (step.keywords['crop_padding'], step.keywords['resize_size']) == (4, 32)


# -------------------------------------------------------------------------------- checkpoints


def _checkpoint_config(keep=3):
  config = smoke.get_config()
  config.keep_checkpoints = keep
  return config


@pytest.fixture(scope='module')
def stepped(tiny):
  """A TrainState after one step, so the optimizer state is not all zeros."""
  _, state, step = tiny
  replicated, _ = _run_steps(step, state, _batch(16), num_devices=1)
  return _first(replicated)


def test_checkpoint_round_trip_restores_identical_state(tiny, stepped, tmp_path):
  """Saving and restoring gives the same params, optimizer state, step and rng, bitwise."""
  _, initial, _ = tiny
  checkpoints = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config())
  checkpoints.save(1, stepped)
  checkpoints.close()
  restored = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config()).restore_latest(
      initial)
  assert int(restored.step) == 1
  _assert_trees_equal(restored.params, stepped.params)
  _assert_trees_equal(restored.opt_state, stepped.opt_state)
  np.testing.assert_array_equal(restored.rng, stepped.rng)
  assert restored.rng.dtype == stepped.rng.dtype


def test_restore_without_checkpoints_returns_given_state(tiny, tmp_path):
  """With no checkpoint in the workdir, restore_latest returns the state it was given."""
  _, initial, _ = tiny
  checkpoints = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config())
  assert checkpoints.restore_latest(initial) is initial
  checkpoints.close()


def test_unreadable_latest_checkpoint_falls_back_to_previous(tiny, stepped, tmp_path):
  """If the newest checkpoint cannot be read, the one before it is restored."""
  _, initial, _ = tiny
  checkpoints = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config())
  checkpoints.save(1, stepped)
  checkpoints.save(2, stepped.replace(step=2))
  checkpoints.close()
  shutil.rmtree(tmp_path / 'checkpoints' / '2' / 'default')
  (tmp_path / 'checkpoints' / '2' / 'default').mkdir()
  restored = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config()).restore_latest(
      initial)
  assert int(restored.step) == 1
  _assert_trees_equal(restored.params, stepped.params)


def test_only_the_last_keep_checkpoints_are_kept(stepped, tmp_path):
  """keep_checkpoints=2 leaves the two newest steps on disk."""
  checkpoints = checkpointing.Checkpoints(str(tmp_path), _checkpoint_config(keep=2))
  for step in (1, 2, 3):
    checkpoints.save(step, stepped.replace(step=step))
  checkpoints.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']


# ------------------------------------------------------------------------------------- resume

RESUME_STEPS = 6
RESUME_AT = 3
MOCK_EXAMPLES = 32


def _resume_config():
  """A tiny smoke config on mocked CIFAR: 4 steps per epoch of 8, 6 steps, dropout on."""
  config = smoke.get_config()
  config.tlb.update(embed_dim=16, num_layers=1, cross_attention_every=2, mlp_ratio=1,
                    dropout_rate=0.1)
  config.update(batch_size=8, eval_batch_size=16, num_train_steps=RESUME_STEPS,
                checkpoint_every_steps=1, keep_checkpoints=RESUME_STEPS, log_every_steps=2)
  if 'num_attention_images' in config:
    config.num_attention_images = 0  # no attention plots: they are not under test here
  return config


def _restore_raw(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  """(workdir, results) of `_resume_config` trained for its 6 steps in one go; the tests below
  only read it, and resume copies of it (`_stopped_after_resume_at`)."""
  workdir = str(tmp_path_factory.mktemp('full') / 'run')
  with mock_cifar(MOCK_EXAMPLES):
    results = train.train_and_evaluate(_resume_config(), workdir)
  return workdir, results


def _stopped_after_resume_at(full: str, workdir: str) -> str:
  """Copies the run `full` to `workdir` as if it had stopped after step 3: without its later
  checkpoints and its results."""
  shutil.copytree(full, workdir)
  os.remove(os.path.join(workdir, 'results.json'))
  for step in range(RESUME_AT + 1, RESUME_STEPS + 1):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
  return workdir


def test_resumed_run_equals_uninterrupted_run(full_run, tmp_path):
  """Training 6 steps in one go gives the same final state as a run stopped after step 3 (its
  later checkpoints and results removed) and continued by a fresh train_and_evaluate call."""
  full, full_results = full_run
  resumed = _stopped_after_resume_at(full, str(tmp_path / 'resumed'))
  with mock_cifar(MOCK_EXAMPLES):
    resumed_results = train.train_and_evaluate(_resume_config(), resumed)

  assert full_results['resumed_from_step'] == 0
  assert resumed_results['resumed_from_step'] == RESUME_AT
  assert resumed_results['step'] == full_results['step'] == RESUME_STEPS
  expected, actual = _restore_raw(full, RESUME_STEPS), _restore_raw(resumed, RESUME_STEPS)
  assert int(actual['step']) == RESUME_STEPS
  _assert_trees_equal(actual, expected, atol=1e-6)
  # Training moved the parameters away from the resumed-from checkpoint.
  start = _restore_raw(resumed, RESUME_AT)
  assert any(np.abs(a - b).max() > 1e-5 for a, b in
             zip(jax.tree.leaves(start['params']), jax.tree.leaves(actual['params'])))
  assert resumed_results['test_top1'] == full_results['test_top1']
  assert resumed_results['test_examples'] == full_results['test_examples'] == MOCK_EXAMPLES
  with open(os.path.join(resumed, 'results.json')) as f:
    assert json.load(f)['resumed_from_step'] == RESUME_AT


CHANGED_LEARNING_RATE = 5e-4


@pytest.fixture(scope='module')
def resumed_with_a_change(full_run, tmp_path_factory):
  """(the run of 6 steps, its copy stopped after step 3 and resumed with a changed learning
  rate, the resumed run's results, the messages it logged)."""
  full, _ = full_run
  resumed = _stopped_after_resume_at(full, str(tmp_path_factory.mktemp('resumed') / 'run'))
  config = _resume_config()
  config.learning_rate = CHANGED_LEARNING_RATE
  with mock_cifar(MOCK_EXAMPLES), \
      mock.patch.object(run_files.logging, 'warning', wraps=run_files.logging.warning) as warn:
    results = train.train_and_evaluate(config, resumed)
  return full, resumed, results, [call.args[0] % call.args[1:] for call in warn.call_args_list]


def _checkpoint_metadata(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.metadata(step).custom_metadata


def test_each_checkpoint_records_the_training_time_and_segments_up_to_it(resumed_with_a_change):
  full, resumed, _, _ = resumed_with_a_change
  readings = [_checkpoint_metadata(full, step) for step in range(1, RESUME_STEPS + 1)]
  assert [r['train_segments'] for r in readings] == [1] * RESUME_STEPS
  seconds = [r['train_seconds'] for r in readings]
  assert all(0 < a < b for a, b in zip(seconds, seconds[1:])), seconds
  assert _checkpoint_metadata(resumed, RESUME_STEPS)['train_segments'] == 2


def test_each_checkpoint_records_the_devices_it_trained_on(resumed_with_a_change):
  full, _, _, _ = resumed_with_a_change
  assert _checkpoint_metadata(full, RESUME_STEPS)[train.DEVICES] == jax.device_count()


def test_resuming_on_another_device_count_warns_and_says_how_to_repeat_the_draws():
  warning = train.device_count_change(recorded=1, current=2, step=500)
  assert 'trained on 1 device and this segment runs on 2 devices' in warning
  assert 'TLB_JAX_CPU_DEVICES=1' in warning


def test_resuming_on_the_same_or_an_unrecorded_device_count_says_nothing():
  assert train.device_count_change(recorded=2, current=2, step=500) is None
  assert train.device_count_change(recorded=None, current=2, step=500) is None


def test_a_resumed_runs_training_time_adds_its_segments(resumed_with_a_change):
  """results.json's training time and speed cover both segments: the first's time, read from
  the checkpoint the run resumed from, plus the second's."""
  _, resumed, results, _ = resumed_with_a_change
  first_segment = _checkpoint_metadata(resumed, RESUME_AT)['train_seconds']
  assert results['train_segments'] == 2
  assert results['train_wall_time_s'] > first_segment
  assert results['train_images_per_s'] == pytest.approx(
      RESUME_STEPS * _resume_config().batch_size / results['train_wall_time_s'])


def test_a_field_changed_on_resume_is_logged_and_recorded_beside_the_first_config(
    resumed_with_a_change):
  """config.json stays the config the run started with; config_changes.json records the
  change at the resume step, and the workdir's config (eval, predict) is the changed one."""
  full, resumed, _, messages = resumed_with_a_change
  old = _resume_config().learning_rate
  assert [m for m in messages if 'changed fields' in m] == [
      f'Resuming at step {RESUME_AT} with changed fields: learning_rate {old!r} -> '
      f'{CHANGED_LEARNING_RATE!r} (recorded in {resumed}/config_changes.json)']
  with open(os.path.join(full, 'config.json')) as f, \
      open(os.path.join(resumed, 'config.json')) as g:
    assert f.read() == g.read()
  with open(os.path.join(resumed, 'config_changes.json')) as f:
    assert json.load(f) == {'segments': [
        {'step': RESUME_AT, 'changes': {'learning_rate': [old, CHANGED_LEARNING_RATE]}}]}
  assert run_files.load_config(resumed).learning_rate == CHANGED_LEARNING_RATE


def test_a_field_added_to_tlb_jax_after_a_run_started_is_not_a_change_of_that_run():
  """A field the saved config lacks (new to tlb-jax, in another model's section) is not
  reported as changed; a changed value is."""
  config = _resume_config()
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['perceiver']['tokenizer']
  assert run_files.changed_fields(saved, config) == {}
  saved['learning_rate'] = 0.5
  assert run_files.changed_fields(saved, config) == {
      'learning_rate': [0.5, config.learning_rate]}


def test_a_finished_run_rerun_with_a_changed_field_keeps_its_record(resumed_with_a_change,
                                                                    tmp_path):
  """Rerunning a finished run with another learning rate trains nothing and changes neither
  config.json nor config_changes.json; the log says the change is not used."""
  _, resumed, results, _ = resumed_with_a_change
  workdir = str(tmp_path / 'run')
  shutil.copytree(resumed, workdir)
  before = {name: open(os.path.join(workdir, name)).read()
            for name in ('config.json', 'config_changes.json')}
  config = _resume_config()
  config.learning_rate = 0.5
  with mock_cifar(MOCK_EXAMPLES), \
      mock.patch.object(run_files.logging, 'warning') as warn:
    assert train.train_and_evaluate(config, workdir) == results
  assert {name: open(os.path.join(workdir, name)).read() for name in before} == before
  assert 'finished at step 6; its changed fields are not used: learning_rate' in (
      warn.call_args.args[0] % warn.call_args.args[1:])


def test_run_without_a_test_split_reports_final_validation_and_no_test(tmp_path):
  """With test_split '' no test images are evaluated: results.json and the events hold no test
  figures, and results.json's validation figures are the last logged validation pass."""
  config = _resume_config()
  config.test_split = ''
  with mock_cifar(MOCK_EXAMPLES):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert [k for k in results if k.startswith('test_')] == ['test_split']
  assert results['test_split'] == ''
  scalars = plots.read_scalars(str(tmp_path))
  assert not any(tag.startswith('test_') for tag in scalars)
  assert results['eval_top1'] == pytest.approx(scalars['eval_accuracy'][RESUME_STEPS])
  assert results['eval_top5'] == pytest.approx(scalars['eval_top5_accuracy'][RESUME_STEPS])


def test_run_without_a_validation_split_trains_on_its_data_and_reports_only_the_test(tmp_path):
  """With eval_split '' (a chosen recipe trained on all its data) no validation pass runs:
  results.json and the events hold no validation figures, and the test is scored."""
  config = _resume_config()
  config.eval_split = ''
  with mock_cifar(MOCK_EXAMPLES):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert [k for k in results if k.startswith('eval_')] == ['eval_split']
  assert results['test_examples'] == MOCK_EXAMPLES
  scalars = plots.read_scalars(str(tmp_path))
  assert not any(tag.startswith('eval_') for tag in scalars)
  assert results['test_top1'] == pytest.approx(scalars['test_accuracy'][RESUME_STEPS])


# -------------------------------------------------------------------------- optimizer pieces


def test_weight_decay_mask_excludes_biases_norms_and_embeddings():
  """Only kernels decay: not biases, LayerNorm scales/biases, position embeddings or the
  initial slow stream."""
  model = TLB(**TINY, slow_stream_init='learned')
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))['params']
  mask = jax.tree_util.tree_flatten_with_path(train_state.weight_decay_mask(params))[0]
  names = {jax.tree_util.keystr(path): decays for path, decays in mask}
  kinds = {'kernel': True, 'bias': False, 'scale': False, 'position_embedding': False,
           'initial_slow_stream': False}
  seen = set()
  for name, decays in names.items():
    kind = next(k for k in kinds if name.endswith(f"['{k}']"))
    assert decays is kinds[kind], name
    seen.add(kind)
  assert seen == set(kinds)
  assert any('norm' in name for name in names)


@pytest.mark.parametrize('weight_decay_on', ['kernels', 'all'])
def test_weight_decay_shrinks_only_masked_parameters(weight_decay_on):
  """With zero gradients AdamW only decays: kernels always, other parameters only with 'all'."""
  config = cifar10.get_config()
  config.update(learning_rate=0.1, lr_schedule='constant', weight_decay=0.5, grad_clip_norm=1.0,
                weight_decay_on=weight_decay_on)
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 1, 10))
  params = {'dense': {'kernel': jnp.ones((3, 3)), 'bias': jnp.ones(3)},
            'norm': {'scale': jnp.ones(3)},
            'patch_embed': {'position_embedding': jnp.ones((4, 3))}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  decayed = 1.0 - 0.1 * 0.5
  np.testing.assert_allclose(new['dense']['kernel'], decayed, rtol=1e-6)
  others = decayed if weight_decay_on == 'all' else 1.0
  for leaf in (new['dense']['bias'], new['norm']['scale'],
               new['patch_embed']['position_embedding']):
    np.testing.assert_allclose(leaf, others, rtol=1e-6)


def test_warmup_cosine_schedule_shape():
  """Linear warmup from 0 to the peak over warmup_epochs, then cosine decay to the minimum."""
  config = cifar10.get_config()
  config.update(learning_rate=1e-3, warmup_epochs=2.0, min_learning_rate=1e-5)
  schedule = train_state.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=100)
  values = np.array([float(schedule(step)) for step in range(101)])
  assert values[0] == 0.0
  np.testing.assert_allclose(values[10], 5e-4, rtol=1e-5)
  np.testing.assert_allclose(values[20], 1e-3, rtol=1e-5)
  np.testing.assert_allclose(values[60], 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-5)
  np.testing.assert_allclose(values[100], 1e-5, rtol=1e-5)
  assert (np.diff(values[:21]) > 0).all()
  assert (np.diff(values[20:]) < 0).all()
  assert values.max() == values[20]


def test_warmup_longer_than_run_is_clamped():
  """A warmup longer than the run ends one step before the last step."""
  config = cifar10.get_config()
  config.update(learning_rate=1e-3, warmup_epochs=50.0, min_learning_rate=0.0)
  schedule = train_state.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=20)
  np.testing.assert_allclose(float(schedule(19)), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(10)), 1e-3 * 10 / 19, rtol=1e-5)


def test_constant_schedule_is_constant():
  """lr_schedule='constant' (the seed) ignores warmup and the run length."""
  config = cifar10.get_config()
  config.update(learning_rate=2e-4, lr_schedule='constant', warmup_epochs=2.0)
  schedule = train_state.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=100)
  for step in (0, 10, 50, 100):
    np.testing.assert_allclose(float(schedule(step)), 2e-4, rtol=1e-6)


def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_cross_entropy_without_smoothing_is_negative_log_likelihood():
  """label_smoothing=0 gives -log softmax(logits)[label] per example."""
  logits = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32)
  labels = np.array([0, 3, 9, 3, 7])
  expected = -_log_softmax(logits)[np.arange(5), labels]
  np.testing.assert_allclose(evaluation.cross_entropy_loss(logits, labels), expected, rtol=1e-5)


def test_cross_entropy_with_label_smoothing():
  """Smoothing a puts 1 - a + a/K on the label and a/K on every other class."""
  logits = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
  labels = np.array([1, 2, 3, 4, 5])
  log_probs = _log_softmax(logits)
  targets = np.full((5, 10), 0.1 / 10)
  targets[np.arange(5), labels] += 0.9
  expected = -(targets * log_probs).sum(-1)
  np.testing.assert_allclose(evaluation.cross_entropy_loss(logits, labels, 0.1), expected,
                             rtol=1e-5)
  assert not np.allclose(expected, -log_probs[np.arange(5), labels])


def test_cross_entropy_is_float32_for_bfloat16_logits():
  """The loss is computed in float32 whatever the logits' dtype."""
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 10)), jnp.bfloat16)
  assert evaluation.cross_entropy_loss(logits, jnp.array([0, 1, 2]), 0.1).dtype == jnp.float32


def test_top5_correct_marks_labels_among_the_five_largest_logits():
  """1 where the label's logit is among the 5 largest, else 0."""
  logits = jnp.tile(jnp.arange(10.0), (3, 1))  # class 9 largest, 5..9 are the top 5
  np.testing.assert_array_equal(evaluation.top5_correct(logits, jnp.array([9, 5, 4])), [1, 1, 0])
