"""The equal-time comparison's configs (`configs/compare/`): one per model and dataset, each a
valid recipe of the TLB's size, sharing everything but the model and its epochs."""

import importlib

import pytest

from test_baselines import param_count
from tlb_jax import config_validation
from tlb_jax.models import create_model

COMPARED_MODELS = ('tlb', 'vit', 'perceiver')
COMPARED_DATASETS = ('cifar10', 'cifar100')
CONFIGS = [(model, dataset) for dataset in COMPARED_DATASETS for model in COMPARED_MODELS]
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


def compare_module(model, dataset):
  return importlib.import_module(f'configs.compare.{model}_{dataset}')


def compare_config(model, dataset):
  return compare_module(model, dataset).get_config()


def _recipe(config):
  """The config without its model's section, the model's name and the number of epochs."""
  fields = config_validation.dotted_fields(config)
  return {field: value for field, value in fields.items()
          if field.split('.')[0] not in (*COMPARED_MODELS, 'model', 'num_epochs')}


@pytest.mark.parametrize('model, dataset', CONFIGS)
def test_compare_config_trains_its_model_on_its_dataset(model, dataset):
  """The file named for a model and a dataset trains that model on that dataset (whether it
  validates: test_main.test_shipped_configs_are_valid)."""
  config = compare_config(model, dataset)
  assert (config.model, config.dataset) == (model, dataset)


@pytest.mark.parametrize('model, dataset', CONFIGS)
def test_compare_config_validates_on_the_last_10000_training_images_and_tests_once(model,
                                                                                  dataset):
  config = compare_config(model, dataset)
  assert (config.train_split, config.eval_split, config.test_split) == (
      'train[:40000]', 'train[40000:]', 'test')
  assert config.eval_every_epochs == 1


@pytest.mark.parametrize('model, dataset', [c for c in CONFIGS if c[0] != 'tlb'])
def test_baseline_has_the_tlbs_parameter_count_within_ten_percent(model, dataset):
  counts = {}
  for name in ('tlb', model):
    config = compare_config(name, dataset)
    counts[name] = param_count(create_model(config, NUM_CLASSES[dataset]), config.image_size)
  assert abs(counts[model] - counts['tlb']) <= 0.1 * counts['tlb'], counts


@pytest.mark.parametrize('dataset', COMPARED_DATASETS)
def test_a_datasets_compare_configs_share_the_recipe_but_the_model_and_epochs(dataset):
  recipes = [_recipe(compare_config(model, dataset)) for model in COMPARED_MODELS]
  assert recipes[1] == recipes[0] and recipes[2] == recipes[0]


@pytest.mark.parametrize('model, dataset', CONFIGS)
def test_compare_config_trains_its_model_for_an_hour_of_its_measured_loop_speed(model,
                                                                               dataset):
  module = compare_module(model, dataset)
  epoch_hours = 40_000 / module.LOOP_IMAGES_PER_S / 3600
  assert abs(module.get_config().num_epochs * epoch_hours - 1) <= epoch_hours / 2
