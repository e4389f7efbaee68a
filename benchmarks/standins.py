"""Stand-ins for the packages a machine with only JAX, flax, optax and orbax lacks, so that
tlb_jax imports there and its steps run. `install` must come before anything imports them.

ml_collections and clu.metrics do what the configs and the train and eval steps ask of them;
any other module of a stand-in package (TFDS, PIL, matplotlib, clu's writers) lends mocks for
the names tlb_jax imports or writes in signatures, which the measured steps never call.
"""

import dataclasses
import importlib
import importlib.abc
import importlib.util
import sys
from unittest import mock

import flax
import jax
import jax.numpy as jnp

PACKAGES = ('ml_collections', 'clu', 'tensorflow_datasets', 'PIL', 'matplotlib')


class ConfigDict(dict):
  """ml_collections.ConfigDict as the configs use it: a dict whose items are attributes too."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  __setattr__ = dict.__setitem__

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self.items()}


@flax.struct.dataclass
class Metric:
  """clu.metrics.Metric; `reduce` merges the copies gathered over devices (the leading axis)."""

  def reduce(self):
    return jax.tree.map(lambda x: x.sum(axis=0), self)

  @classmethod
  def from_output(cls, name: str):

    @flax.struct.dataclass
    class FromOutput(cls):

      @classmethod
      def from_model_output(klass, **outputs):  # pylint: disable=bad-classmethod-argument
        return super(FromOutput, klass).from_model_output(outputs[name], mask=outputs.get('mask'))

    return FromOutput


@flax.struct.dataclass
class Average(Metric):
  """The mean of values (B,) or of a scalar, where mask (B,) is true. Also clu's LastValue:
  what the steps cost matters here, not which learning rate a log would show."""
  total: jax.Array
  count: jax.Array

  @classmethod
  def empty(cls):
    return cls(total=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.int32))

  @classmethod
  def from_model_output(cls, values, mask=None, **_):
    values = jnp.atleast_1d(values).astype(jnp.float32)
    mask = jnp.ones(values.shape, bool) if mask is None else mask.astype(bool)
    return cls(total=jnp.where(mask, values, 0).sum(), count=mask.sum(dtype=jnp.int32))

  def merge(self, other):
    return jax.tree.map(jnp.add, self, other)


@flax.struct.dataclass
class Accuracy(Average):
  """Top-1 of logits (B, K) against labels (B,)."""

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):  # pylint: disable=arguments-differ
    return super().from_model_output(logits.argmax(axis=-1) == labels, mask=mask)


@flax.struct.dataclass
class Collection:
  """clu.metrics.Collection: one metric per field."""

  @classmethod
  def _map(cls, fn):  # fn(field name, metric class) -> the field's value
    return cls(**{field.name: fn(field.name, field.type) for field in dataclasses.fields(cls)})

  @classmethod
  def empty(cls):
    return cls._map(lambda _, metric: metric.empty())

  @classmethod
  def gather_from_model_output(cls, axis_name='batch', **outputs):
    single = cls._map(lambda _, metric: metric.from_model_output(**outputs))
    gathered = jax.lax.all_gather(single, axis_name=axis_name)
    return cls._map(lambda name, _: getattr(gathered, name).reduce())

  def merge(self, other):
    return self._map(lambda name, _: getattr(self, name).merge(getattr(other, name)))


_ML_COLLECTIONS = {'ConfigDict': ConfigDict, 'placeholder': lambda field_type, required=False: None,
                   'DEFINE_config_file': lambda *args, **kwargs: None}  # configs load by import
CONTENTS = {  # the modules that are more than mocks
    'ml_collections': _ML_COLLECTIONS, 'ml_collections.config_dict': _ML_COLLECTIONS,
    'ml_collections.config_flags': _ML_COLLECTIONS, 'clu': {},
    'clu.metrics': {'Metric': Metric, 'Average': Average, 'Accuracy': Accuracy,
                    'LastValue': Average, 'Collection': Collection},
}


def _mock_attribute(name: str):
  if name.startswith('__'):  # what the import system asks of a module
    raise AttributeError(name)
  return mock.NonCallableMagicMock(name=name)


class StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """An import hook that serves `packages`, and every module in them, as stand-ins."""

  def __init__(self, packages):
    self.packages = packages

  def find_spec(self, fullname, path=None, target=None):
    if fullname.partition('.')[0] in self.packages:
      return importlib.util.spec_from_loader(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    return None  # the default module

  def exec_module(self, module):
    if module.__name__ not in CONTENTS:
      module.__getattr__ = _mock_attribute
      return
    vars(module).update(CONTENTS[module.__name__])
    if module.__name__ == 'ml_collections':  # configs call ml_collections.config_dict.placeholder
      importlib.import_module('ml_collections.config_dict')


def install(hidden=()) -> list[str]:
  """Makes the `hidden` packages unimportable and serves a stand-in for each of `PACKAGES`
  that is hidden or not installed; returns the stand-ins' names."""
  for package in set(hidden) - set(PACKAGES):
    sys.modules[package] = None  # importing it raises ImportError
  served = [p for p in PACKAGES if p in hidden or importlib.util.find_spec(p) is None]
  sys.meta_path.insert(0, StandIns(served))  # first, so that a hidden package never loads
  return served
