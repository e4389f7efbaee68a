"""Tests of using a trained workdir: predict on image files, eval mode, export, and the CLI's
errors."""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import trained_run
from tfds_mock import mock_cifar
from tlb_jax import evaluate_run, export, plots, predict, restore

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return trained_run.trained_workdir(tmp_path_factory)


@pytest.fixture(scope='module')
def class_names(workdir):
  with open(os.path.join(workdir, 'labels.json')) as f:
    return json.load(f)['class_names']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Generated images of several sizes and modes, a corrupt PNG and a text file."""
  folder = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  pixels = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
  paths = {}
  def save(name, image, **kwargs):
    paths[name] = str(folder / name)
    image.save(paths[name], **kwargs)
  save('rgb.png', Image.fromarray(pixels(40, 60, 3)))
  save('photo.jpg', Image.fromarray(pixels(100, 80, 3)), quality=90)
  save('gray.png', Image.fromarray(pixels(33, 33)))
  save('gray.jpg', Image.fromarray(pixels(50, 50)))
  save('rgba.png', Image.fromarray(pixels(20, 24, 4)))
  paths['corrupt.png'] = str(folder / 'corrupt.png')
  with open(paths['corrupt.png'], 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + b'not an image' * 10)
  with open(folder / 'notes.txt', 'w') as f:
    f.write('not an image')
  paths['folder'] = str(folder)
  return paths


def predict_files(workdir, paths, **kwargs):
  """run_predict -> (failures, stdout lines, stderr lines)."""
  out, err = io.StringIO(), io.StringIO()
  failures = predict.run_predict(workdir, paths, out=out, err=err, **kwargs)
  return failures, out.getvalue().splitlines(), err.getvalue().splitlines()


def parse(line):
  """'path: cat 0.512, dog 0.201, ...' -> (path, [(name, probability), ...])."""
  path, _, classes = line.rpartition(': ')
  pairs = [item.rsplit(' ', 1) for item in classes.split(', ')]
  return path, [(name, float(prob)) for name, prob in pairs]


def main_py(*args):
  """Runs `python main.py ARGS` -> (exit code, stdout, stderr)."""
  process = subprocess.run([sys.executable, 'main.py', *args], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
  return process.returncode, process.stdout, process.stderr


# ------------------------------------------------------------------------------------ predict


def test_predict_prints_top5_classes_for_png_jpeg_grayscale_and_rgba(workdir, class_names,
                                                                     files):
  names = ['rgb.png', 'photo.jpg', 'gray.png', 'gray.jpg', 'rgba.png']
  failures, out, err = predict_files(workdir, [files[n] for n in names])
  assert failures == 0 and err == []
  assert [parse(line)[0] for line in out] == [files[n] for n in names]
  for line in out:
    _, top = parse(line)
    assert len(top) == 5
    assert len({name for name, _ in top}) == 5 and {name for name, _ in top} <= set(class_names)
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 5e-3


def test_predict_reports_a_corrupt_file_and_still_predicts_the_others(workdir, files):
  failures, out, err = predict_files(workdir, [files['rgb.png'], files['corrupt.png'],
                                               files['photo.jpg']])
  assert failures == 1
  assert [parse(line)[0] for line in out] == [files['rgb.png'], files['photo.jpg']]
  assert len(err) == 1 and err[0].startswith(f'error: {files["corrupt.png"]}: cannot read image')


def test_predict_reports_missing_files_and_folders_without_images(workdir, files, tmp_path):
  missing = str(tmp_path / 'missing.png')
  empty = str(tmp_path / 'empty')
  os.mkdir(empty)
  failures, out, err = predict_files(workdir, [missing, empty, files['rgb.png']])
  assert failures == 2
  assert [parse(line)[0] for line in out] == [files['rgb.png']]
  assert err[0] == f'error: {missing}: no such file'
  assert err[1].startswith(f'error: {empty}: folder has no image files')


def test_predict_on_a_folder_reads_its_image_files_in_name_order(workdir, files):
  failures, out, err = predict_files(workdir, [files['folder']])
  assert [parse(line)[0] for line in out] == [
      files[n] for n in ('gray.jpg', 'gray.png', 'photo.jpg', 'rgb.png', 'rgba.png')]
  assert failures == 1 and len(err) == 1 and files['corrupt.png'] in err[0]  # notes.txt skipped


def test_predict_of_a_png_matches_the_eval_pipeline_on_the_same_pixels(workdir, tmp_path):
  run = restore.restore(workdir)
  pixels = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  path = str(tmp_path / 'cifar_sized.png')
  Image.fromarray(pixels[0]).save(path)
  predict_fn = predict.make_predict_fn(run.model, run.config, with_attention=False)
  from_file = predict.predict(predict_fn, run.params,
                              predict.load_image(path, run.config.image_size)[None])
  as_eval = predict.predict(predict_fn, run.params, pixels)  # jax resize in the jitted step
  np.testing.assert_allclose(from_file['probabilities'], as_eval['probabilities'], atol=1e-2)


def test_predict_with_crops_flip_gives_an_image_and_its_mirror_image_the_same_probabilities(
    workdir):
  """The shared run evaluates with test_time_augmentation='crops_flip': its ten views of an
  image and of its mirror image are the same ten views."""
  run = restore.restore(workdir)
  assert run.config.test_time_augmentation == 'crops_flip'
  pixels = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  predict_fn = predict.make_predict_fn(run.model, run.config, with_attention=True)
  original, mirrored = (predict.predict(predict_fn, run.params, x)['probabilities']
                        for x in (pixels, pixels[:, :, ::-1]))
  np.testing.assert_allclose(original, mirrored, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('augmentation', ['none', 'crops_flip'])
def test_predict_with_attention_gives_the_probabilities_of_predict_without(workdir,
                                                                          augmentation):
  """Scoring the central view with its attention leaves the mean over the views unchanged."""
  run = restore.restore(workdir)
  run.config.test_time_augmentation = augmentation
  pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  with_maps, without = (
      predict.predict(predict.make_predict_fn(run.model, run.config, with_attention=flag),
                      run.params, pixels)['probabilities'] for flag in (True, False))
  np.testing.assert_allclose(with_maps, without, rtol=1e-5, atol=1e-6)


def test_predict_writes_an_attention_overlay_per_image(workdir, files, tmp_path):
  overlays = tmp_path / 'overlays'
  failures, out, _ = predict_files(workdir, [files['rgb.png'], files['gray.png']],
                                   attention_dir=str(overlays))
  assert failures == 0 and len(out) == 2
  assert sorted(os.listdir(overlays)) == ['gray_attention.png', 'rgb_attention.png']
  for name in os.listdir(overlays):
    with Image.open(overlays / name) as image:
      assert image.format == 'PNG' and image.size == plots.attention_grid_size(1)


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize('mode, shape', [('L', (33, 33)), ('RGB', (40, 60, 3)),
                                         ('RGBA', (20, 24, 4)), ('LA', (9, 9, 2)),
                                         ('P', (64, 48)), ('I;16', (30, 30)),
                                         ('CMYK', (17, 17, 4)), ('1', (8, 8))])
def test_load_image_converts_any_mode_and_size_to_uint8_rgb_at_image_size(tmp_path, mode,
                                                                          shape):
  pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  if mode == 'I;16':
    image = Image.fromarray(pixels.astype(np.uint16) * 257)
  elif mode in ('P', '1', 'CMYK'):
    image = Image.fromarray(pixels).convert(mode)
  else:
    image = Image.fromarray(pixels, mode=mode)
  path = str(tmp_path / ('image.tiff' if mode == 'CMYK' else 'image.png'))
  image.save(path)
  array = predict.load_image(path, 16)
  assert array.shape == (16, 16, 3) and array.dtype == np.uint8


def test_load_image_composites_transparency_onto_white(tmp_path):
  path = str(tmp_path / 'transparent.png')
  Image.new('RGBA', (10, 10), (0, 0, 0, 0)).save(path)
  np.testing.assert_array_equal(predict.load_image(path, 8), np.full((8, 8, 3), 255))


def test_load_image_scales_16_bit_grayscale_to_8_bits(tmp_path):
  path = str(tmp_path / 'sixteen.png')
  Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(path)
  assert Image.open(path).mode == 'I;16'
  np.testing.assert_array_equal(predict.load_image(path, 4), np.full((4, 4, 3), 127))


# ------------------------------------------------------------------------------------ eval


def test_eval_mode_writes_results_json_for_the_latest_checkpoint(workdir, tmp_path_factory):
  with open(os.path.join(workdir, 'results.json')) as f:
    trained = json.load(f)
  copy = trained_run.copy_of_trained_workdir(tmp_path_factory)
  os.remove(os.path.join(copy, 'results.json'))
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = evaluate_run.evaluate_checkpoint(copy)
  with open(os.path.join(copy, 'results.json')) as f:
    assert json.load(f) == results
  assert results['step'] == trained['step']
  assert results['test_examples'] == trained['test_examples'] == trained_run.MOCK_EXAMPLES
  assert results['test_top1'] == pytest.approx(trained['test_top1'])
  assert results['test_views'] == trained['test_views'] == trained['eval_views'] == {
      'resize_size': 18, 'augmentation': 'crops_flip', 'padding': 0}
  assert results['test_loss'] == pytest.approx(trained['test_loss'], rel=1e-5)
  assert 'train_wall_time_s' not in results  # no results.json of that step to keep them from


def test_eval_summary_gives_the_test_figures_in_percent_as_the_readme_does():
  results = {'step': 24180, 'test_split': 'test', 'test_top1': 0.8549, 'test_top5': 0.99149996,
             'test_loss': 0.61234, 'test_examples': 10000}
  assert evaluate_run.test_summary(results) == (
      'step 24180: test top-1 85.49%, top-5 99.15%, loss 0.6123 on 10000 examples')
  assert evaluate_run.test_summary({**results, 'test_superclass_top1': 0.7231}) == (
      'step 24180: test top-1 85.49%, top-5 99.15%, superclass top-1 72.31%, loss 0.6123 on '
      '10000 examples')


def test_eval_mode_without_a_test_split_says_which_flag_to_pass(workdir):
  """--mode=eval with test_split '' is an InferenceError naming --config.test_split."""
  config = trained_run.config()
  config.test_split = ''
  with mock_cifar(trained_run.MOCK_EXAMPLES), pytest.raises(
      restore.InferenceError, match="pass --config.test_split=test"):
    evaluate_run.evaluate_checkpoint(workdir, config)


def test_eval_mode_keeps_the_training_fields_of_results_for_the_same_step(tmp_path_factory):
  copy = trained_run.copy_of_trained_workdir(tmp_path_factory)
  with open(os.path.join(copy, 'results.json')) as f:
    trained = json.load(f)
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = evaluate_run.evaluate_checkpoint(copy)
  assert results['train_wall_time_s'] == trained['train_wall_time_s']
  assert results['resumed_from_step'] == trained['resumed_from_step']


def test_eval_mode_with_other_views_records_them_for_the_test_and_keeps_the_validations(
    tmp_path_factory):
  copy = trained_run.copy_of_trained_workdir(tmp_path_factory)
  config = trained_run.config()
  config.test_time_augmentation = 'flip'
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = evaluate_run.evaluate_checkpoint(copy, config)
  assert results['test_views'] == {'resize_size': 18, 'augmentation': 'flip', 'padding': 0}
  assert results['eval_views'] == {'resize_size': 18, 'augmentation': 'crops_flip',
                                   'padding': 0}


# ------------------------------------------------------------------------------------ CLI


def test_predict_cli_prints_predictions_and_per_file_errors_and_exits_1(workdir, files):
  code, out, err = main_py('--mode=predict', f'--workdir={workdir}',
                           f'--images={files["gray.png"]},{files["corrupt.png"]},'
                           f'{files["photo.jpg"]}')
  assert code == 1, err[-3000:]
  assert [parse(line)[0] for line in out.splitlines()] == [files['gray.png'], files['photo.jpg']]
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(f'error: {files["corrupt.png"]}: ')


@pytest.mark.parametrize('kind', ['missing', 'no_checkpoints'])
def test_unusable_workdir_gives_a_one_line_error_and_exit_2(workdir, files, tmp_path, kind):
  bad = str(tmp_path / 'run')
  if kind == 'no_checkpoints':
    os.mkdir(bad)
    for name in ('config.json', 'labels.json'):
      shutil.copy(os.path.join(workdir, name), bad)
  code, out, err = main_py('--mode=predict', f'--workdir={bad}', f'--images={files["rgb.png"]}')
  assert code == 2 and out == '', err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and bad in errors[0]
  assert ('does not exist' if kind == 'missing' else 'has no checkpoint') in errors[0]


# ------------------------------------------------------------------------------------- export


@pytest.fixture(scope='module')
def exported(workdir, tmp_path_factory):
  """The shared workdir exported by `export.export` (parameters only)."""
  output = str(tmp_path_factory.mktemp('exported') / 'run')
  assert export.export(workdir, output) == output
  return output


def test_export_writes_parameters_config_labels_and_results_without_checkpoints(workdir,
                                                                                exported):
  """An export holds params/, the run's config.json and labels.json, its results.json, and the
  reference logits."""
  assert sorted(os.listdir(exported)) == ['config.json', 'labels.json', 'params',
                                          'reference_logits.json', 'results.json']
  for name in ('config.json', 'labels.json', 'results.json'):
    with open(os.path.join(workdir, name)) as f, open(os.path.join(exported, name)) as g:
      assert json.load(f) == json.load(g)


def test_exported_parameters_restore_equal_to_the_checkpoints(workdir, exported):
  """restore() of an export gives the checkpoint's step and exactly its parameters."""
  original, restored = restore.restore(workdir), restore.restore(exported)
  assert restored.step == original.step
  flat = lambda params: {jax.tree_util.keystr(k): np.asarray(v)
                         for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  original_params, restored_params = flat(original.params), flat(restored.params)
  assert original_params.keys() == restored_params.keys()
  for name, value in original_params.items():
    np.testing.assert_array_equal(restored_params[name], value, err_msg=name)


def test_eval_mode_on_an_export_reproduces_the_runs_test_figures(exported, tmp_path):
  """--mode=eval works on an exported directory and scores what the run scored."""
  copy = str(tmp_path / 'run')
  shutil.copytree(exported, copy)
  with open(os.path.join(copy, 'results.json')) as f:
    trained = json.load(f)
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    results = evaluate_run.evaluate_checkpoint(copy)
  assert results['test_top1'] == pytest.approx(trained['test_top1'])
  assert results['test_loss'] == pytest.approx(trained['test_loss'], rel=1e-5)
  assert results['train_wall_time_s'] == trained['train_wall_time_s']


def _file_contents(directory) -> dict[str, bytes]:
  return {str(path): path.read_bytes() for path in pathlib.Path(directory).rglob('*')
          if path.is_file()}


def test_eval_mode_leaves_an_exported_directory_unchanged(exported):
  """Scoring shipped parameters writes no file into their directory."""
  before = _file_contents(exported)
  with mock_cifar(trained_run.MOCK_EXAMPLES):
    evaluate_run.evaluate_checkpoint(exported)
  assert _file_contents(exported) == before


def test_export_stores_the_logits_of_the_reference_batch(workdir, exported):
  """reference_logits.json holds the trained model's logits on the fixed generated batch."""
  run = restore.restore(workdir)
  stored = np.asarray(export.load_reference(exported)['logits'])
  images = export.reference_images(run.config.image_size)
  assert stored.shape == (export.REFERENCE_IMAGES, len(run.class_names))
  np.testing.assert_allclose(
      stored, run.model.apply({'params': run.params}, images, train=False), rtol=1e-5, atol=1e-5)
  assert np.ptp(stored, axis=0).max() > 0  # the images differ, and so do their logits


def test_export_refuses_to_overwrite_an_earlier_export(workdir, exported):
  """An --output that already holds exported parameters is an InferenceError."""
  with pytest.raises(restore.InferenceError, match='already holds exported parameters'):
    export.export(workdir, exported)
