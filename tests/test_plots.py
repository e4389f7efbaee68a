"""Tests of the pictures: curves and attention PNGs, attention-map reduction, event reading."""

import os

import jax
import numpy as np
import pytest
from clu import metric_writers
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import trained_run
from tfds_mock import mock_cifar
from tlb_jax import keras_logs, plots, predict, restore, run_plots


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return trained_run.trained_workdir(tmp_path_factory)


def assert_png(path, size):
  """`path` is a readable PNG of `size` (width, height) pixels."""
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size == size
    image.load()


# ------------------------------------------------------------------------------------ PNGs


def test_curves_png_is_valid_and_of_curves_size(tmp_path):
  curves = {'train_epoch': np.array([1.0, 2.0, 2.5]), 'train_loss': np.array([2.0, 1.5, 1.2]),
            'train_accuracy': np.array([0.2, 0.4, 0.5]), 'eval_epoch': np.array([1.0, 2.0]),
            'eval_loss': np.array([1.9, 1.6]), 'eval_accuracy': np.array([0.25, 0.38])}
  path = str(tmp_path / 'curves.png')
  plots.save_png(plots.plot_curves(curves, title='tlb on cifar10', test_accuracy=0.37), path)
  assert_png(path, plots.CURVES_SIZE)


def test_curves_label_the_test_line_in_percent_to_two_decimals():
  """The test line's label does not round a result across a threshold (0.8497 is not 0.850)."""
  assert plots.format_test_accuracy(0.8497) == 'test 84.97%'


def test_runs_of_one_group_share_a_colour_and_differ_in_line_style():
  styles = plots.run_line_styles(['tlb', 'vit', 'tlb_seed1', 'vit_seed1'],
                                 {'tlb': 'tlb', 'tlb_seed1': 'tlb', 'vit': 'vit',
                                  'vit_seed1': 'vit'})
  assert styles == {'tlb': ('C0', '-'), 'vit': ('C1', '-'), 'tlb_seed1': ('C0', '--'),
                    'vit_seed1': ('C1', '--')}


def test_runs_without_groups_each_get_their_own_colour_drawn_solid():
  assert plots.run_line_styles(['a', 'b', 'c']) == {'a': ('C0', '-'), 'b': ('C1', '-'),
                                                    'c': ('C2', '-')}


@pytest.mark.parametrize('num_images, size', [(1, (320, 200)), (4, (1280, 200)),
                                              (5, (1280, 400)), (8, (1280, 400))])
def test_attention_grid_png_size_follows_the_image_count(tmp_path, num_images, size):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_images, 16, 16, 3), dtype=np.uint8)
  maps = rng.random((num_images, 16, 16))
  titles, colors = plots.attention_titles(['cat'] * num_images, ['dog'] * num_images,
                                          [0.5] * num_images)
  path = str(tmp_path / 'attention.png')
  plots.save_png(plots.plot_attention_grid(images, maps, titles, colors), path)
  assert plots.attention_grid_size(num_images) == size
  assert_png(path, size)


def test_attention_titles_name_true_and_predicted_classes_coloured_by_correctness():
  titles, colors = plots.attention_titles(['cat', 'dog'], ['cat', 'frog'], [0.9, 0.4])
  assert titles == ['true: cat\npred: cat 0.90', 'true: dog\npred: frog 0.40']
  assert colors == [plots.CORRECT_COLOR, plots.WRONG_COLOR]


# ------------------------------------------------------------------------------------ maps


def test_attention_maps_take_max_over_latents_then_mean_over_heads():
  # B=1, C=1, H=2, L=2, K=2. Max over latents: head 0 [1, 1], head 1 [0.6, 0.8]; mean over
  # heads [0.8, 0.9]. The other order (mean over heads, then max) would give [0.6, 0.7].
  attention = np.array([[[[[1.0, 0.0], [0.0, 1.0]],
                          [[0.2, 0.8], [0.6, 0.4]]]]])
  assert attention.shape == (1, 1, 2, 2, 2)
  np.testing.assert_allclose(plots.attention_maps(attention, (1, 2)), [[[0.8, 0.9]]], rtol=1e-6)


def test_attention_maps_lay_chunk_tokens_back_on_the_row_major_patch_grid():
  # 2 images, 4 chunks of 4 tokens on a 4x4 grid; token t = c*K + k receives weight t (+ b).
  batch, chunks, heads, latents, chunk_size = 2, 4, 3, 5, 4
  token = np.arange(chunks * chunk_size, dtype=np.float32).reshape(1, chunks, 1, 1, chunk_size)
  attention = np.broadcast_to(token + np.arange(batch).reshape(batch, 1, 1, 1, 1),
                              (batch, chunks, heads, latents, chunk_size))
  maps = plots.attention_maps(attention, (4, 4))
  assert maps.shape == (batch, 4, 4)
  np.testing.assert_array_equal(maps[0], np.arange(16).reshape(4, 4))
  np.testing.assert_array_equal(maps[1], np.arange(16).reshape(4, 4) + 1)


def test_uniform_attention_gives_maps_that_sum_to_one_per_chunk():
  batch, chunks, heads, latents, chunk_size = 3, 6, 2, 4, 8
  attention = np.full((batch, chunks, heads, latents, chunk_size), 1.0 / chunk_size)
  maps = plots.attention_maps(attention, (6, 8))
  assert maps.shape == (batch, 6, 8)
  # Chunk c fills row c of the 6x8 grid.
  np.testing.assert_allclose(maps.sum(axis=2), np.ones((batch, chunks)), rtol=1e-6)
  np.testing.assert_allclose(maps.sum(axis=(1, 2)), np.full(batch, chunks), rtol=1e-6)


def test_attention_maps_reject_a_grid_that_does_not_hold_every_token():
  with pytest.raises(ValueError, match='do not fill'):
    plots.attention_maps(np.ones((1, 4, 1, 2, 4)), (3, 3))


def test_upsample_is_the_bilinear_resize_the_seed_uses():
  maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
  expected = jax.image.resize(maps, (2, 16, 16), 'bilinear')  # upsampling: no antialiasing
  np.testing.assert_allclose(plots.upsample(maps, (16, 16)), expected, atol=1e-5)


def test_upsample_keeps_a_constant_map_constant():
  np.testing.assert_allclose(plots.upsample(np.full((1, 3, 3), 0.25), (12, 12)),
                             np.full((1, 12, 12), 0.25), rtol=1e-6)


# ------------------------------------------------------------------------------------ events


def test_read_scalars_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
  first = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  first.write_scalars(4, {'train_loss': 2.0, 'train_epoch': 1.0})
  first.write_scalars(6, {'train_loss': 1.8, 'train_epoch': 1.5})  # lost, then redone
  first.close()
  resumed = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  resumed.write_scalars(6, {'train_loss': 1.7, 'train_epoch': 1.5})
  resumed.write_images(6, {'attention': np.zeros((1, 4, 4, 3), np.uint8)})
  resumed.close()
  assert len([n for n in os.listdir(tmp_path) if n.startswith('events.out')]) == 2
  scalars = plots.read_scalars(str(tmp_path))
  assert scalars == {'train_loss': {4: 2.0, 6: pytest.approx(1.7)},
                     'train_epoch': {4: 1.0, 6: 1.5}}


def test_epoch_curves_average_train_logs_by_steps_within_each_epoch():
  # 4 steps per epoch, train logged at steps 1, 4 (epoch 1), 8 (epoch 2) and 10 (mid-epoch 3).
  scalars = {
      'train_epoch': {1: 0.25, 4: 1.0, 8: 2.0, 10: 2.5},
      'train_loss': {1: 4.0, 4: 2.0, 8: 1.0, 10: 0.5},
      'train_accuracy': {1: 0.0, 4: 0.4, 8: 0.6, 10: 0.7},
      'eval_loss': {4: 2.5, 8: 1.5},
      'eval_accuracy': {4: 0.3, 8: 0.5},
  }
  curves = plots.epoch_curves(scalars)
  np.testing.assert_allclose(curves['train_epoch'], [1.0, 2.0, 2.5])
  np.testing.assert_allclose(curves['train_loss'], [(4.0 + 3 * 2.0) / 4, 1.0, 0.5])
  np.testing.assert_allclose(curves['train_accuracy'], [0.3, 0.6, 0.7])
  np.testing.assert_allclose(curves['eval_epoch'], [1.0, 2.0])
  np.testing.assert_allclose(curves['eval_loss'], [2.5, 1.5])
  np.testing.assert_allclose(curves['eval_accuracy'], [0.3, 0.5])


# ------------------------------------------------------------------------------------ a run


def test_training_writes_curves_and_attention_pngs(workdir):
  assert_png(os.path.join(workdir, 'plots', 'curves.png'), plots.CURVES_SIZE)
  assert_png(os.path.join(workdir, 'plots', 'attention.png'),
             plots.attention_grid_size(trained_run.NUM_ATTENTION_IMAGES))


def test_training_writes_the_attention_grid_to_tensorboard(workdir):
  events = event_accumulator.EventAccumulator(workdir, size_guidance={'tensors': 0})
  events.Reload()
  assert 'attention' in events.Tags()['tensors']
  assert 'train_loss' in events.Tags()['tensors']


def test_curves_of_a_run_have_one_point_per_epoch(workdir):
  curves = plots.epoch_curves(plots.read_scalars(workdir))
  np.testing.assert_allclose(curves['train_epoch'], [1.0, 2.0])
  np.testing.assert_allclose(curves['eval_epoch'], [1.0, 2.0])
  assert np.all(np.isfinite(curves['train_loss'])) and np.all(np.isfinite(curves['eval_loss']))


def test_trained_tlb_attention_rows_sum_to_one_and_maps_cover_the_image(workdir):
  run = restore.restore(workdir)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  outputs = predict.predict(predict.make_predict_fn(run.model, run.config, True), run.params,
                            images)
  tlb = run.config.tlb
  side = run.config.image_size // tlb.patch_size
  attention = outputs['attention']
  assert attention.shape == (3, side * side // tlb.chunk_size, tlb.num_heads, tlb.num_latents,
                             tlb.chunk_size)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
  maps = plots.attention_maps(attention, (side, side))
  assert maps.shape == (3, side, side)
  # Each latent's row sums to 1, so a chunk's max-over-latents sums to [1, min(L, K)].
  chunk_sums = maps.reshape(3, -1, tlb.chunk_size).sum(-1)
  assert np.all(chunk_sums >= 1 - 1e-5)
  assert np.all(chunk_sums <= min(tlb.num_latents, tlb.chunk_size) + 1e-5)
  assert predict.upsampled_attention(run.config, attention).shape == (
      3, run.config.image_size, run.config.image_size)


def test_plots_mode_redraws_the_pictures_of_an_existing_workdir(tmp_path_factory):
  copy = trained_run.copy_of_trained_workdir(tmp_path_factory)
  for name in ('curves.png', 'confusion.png', 'attention.png'):
    os.remove(os.path.join(copy, 'plots', name))
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    paths = run_plots.write_plots(copy)
  assert paths == [os.path.join(copy, 'plots', 'curves.png'),
                   os.path.join(copy, 'plots', 'confusion.png'),
                   os.path.join(copy, 'plots', 'attention.png')]
  assert_png(paths[0], plots.CURVES_SIZE)
  assert_png(paths[1], plots.CONFUSION_SIZE)
  assert_png(paths[2], plots.attention_grid_size(trained_run.NUM_ATTENTION_IMAGES))


def test_keras_logs_hold_thirty_epochs_ending_at_the_published_figures():
  assert {name: (len(log), log[-1]) for name, log in keras_logs.KERAS_LOGS.items()} == {
      'Keras example, Keras 3 log': (30, 0.4890), 'Keras example, TF 2.12 log': (30, 0.4726)}


def test_seed_curves_draw_the_runs_validation_per_epoch_against_both_keras_logs(workdir,
                                                                                tmp_path):
  curves = keras_logs.curves_against_keras({'run': workdir, 'same run': workdir})
  assert list(curves) == ['run', 'same run', *keras_logs.KERAS_LOGS]
  np.testing.assert_array_equal(curves['run'][1], curves['same run'][1])
  epochs, accuracy = curves['run']
  np.testing.assert_allclose(epochs, np.arange(1, trained_run.config().num_epochs + 1))
  assert ((0 <= accuracy) & (accuracy <= 1)).all()
  path = str(tmp_path / 'seed_curves.png')
  plots.save_png(plots.plot_runs(curves, xlabel='epoch'), path)
  assert_png(path, plots.CURVES_SIZE)


def test_seed_curves_of_a_run_without_validation_exit_2_with_one_error_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    keras_logs.main(['--workdirs', str(tmp_path), '--output', str(tmp_path / 'x.png')])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().startswith(f'error: {tmp_path} has no validation')
  assert not (tmp_path / 'x.png').exists()


def test_seed_curves_name_one_run_by_its_config_and_several_by_their_workdirs():
  assert keras_logs.parse_args(['--workdirs=/r/a', '--output=x.png']).names == [
      'tlb-jax, configs/cifar10_seed.py']
  assert keras_logs.parse_args(['--workdirs=/r/a,/r/b/', '--output=x.png']).names == [
      'tlb-jax, a', 'tlb-jax, b']


def test_seed_curves_take_one_name_per_run_commas_included():
  assert keras_logs.parse_args(['--workdirs=/r/a,/r/b', '--names', 'tlb-jax, a', 'b',
                                '--output=x.png']).names == ['tlb-jax, a', 'b']


@pytest.mark.parametrize('names', [['one'], ['same', 'same']])
def test_seed_curves_without_one_distinct_name_per_run_exit_2_with_one_error_line(names, capsys):
  with pytest.raises(SystemExit) as exit_info:
    keras_logs.parse_args(['--workdirs=/r/a,/r/b', '--names', *names, '--output=x.png'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith('error: --names has ') and '\n' not in error
