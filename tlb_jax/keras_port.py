"""Ports the Keras seed TLB's weights into the flax parameters of `TLB(variant='keras_seed')`.

The source is the seed's Keras 3 model object (`TemporalLatentBottleneckModel`, as built by
`benchmarks/keras_seed.py` or the keras-io example) or a `.weights.h5` file saved from one with
`model.save_weights`. Keras 3 stores each weight under the path of attribute names that leads
to it, list items named by their class (`attention_with_ffn`, `attention_with_ffn_1`, ...) and
variables numbered in creation order (`vars/0` kernel or gamma, `vars/1` bias or beta), e.g.
`layers/rnn/cell/perceptual_module/attention_with_ffn_2/slow_stream_attention/
multi_head_attention/query_dense/vars/0`. Those paths do not depend on layer names, so files
from the original example (named layers, mixed precision) and from `benchmarks/keras_seed.py`
read the same. Every weight is renamed to its flax path; none is reshaped or transposed,
since both sides lay them out alike:

  Conv2D kernel (p, p, 3, D), bias (D,)            -> patch_embed/projection
  Embedding (N, D)                                -> patch_embed/position_embedding
  LayerNormalization gamma, beta (D,)             -> .../scale, .../bias
  MultiHeadAttention query/key/value_dense kernel (D, H, Dh), bias (H, Dh)
                                                  -> .../attention/query, key, value
  MultiHeadAttention output_dense kernel (H, Dh, D), bias (D,)
                                                  -> .../attention/out
  Dense kernel (D_in, D_out), bias (D_out,)        -> mlp/hidden, mlp/output, head

Block k of the perceptual-module list becomes recurrence/perceptual_k, the `tlb_module`
recurrence/slow_update; a block's `fast_stream_attention` is its first attention sub-layer
('attention', 'norm_query', 'norm_key', 'norm_value'), its `slow_stream_attention` the second
('slow_attention', 'slow_norm_query', ...), its feed-forward network 'norm_mlp' and 'mlp'.
Optimizer variables in the file are ignored.

Needs h5py (installed with TensorFlow/Keras); reading a model object needs Keras.
"""

import os
import re
import tempfile
from typing import Any

import jax
import numpy as np

# Keras variable number -> flax leaf name, per kind of Keras layer.
_DENSE = ('kernel', 'bias')
_NORM = ('scale', 'bias')
_EMBEDDING = ('position_embedding',)

# (Keras layer path, flax module path, variable names); the first full match wins. In block
# rules, group 'block' is the Keras path of the block (see `_block_path`).
_BLOCK = r'layers/rnn/cell/(?P<block>perceptual_module/attention_with_ffn(?:_\d+)?|tlb_module)'
_STREAM = r'(?P<stream>fast|slow)_stream_attention'
_RULES = (
    (r'layers/patch_embedding/projection', 'patch_embed/projection', _DENSE),
    (r'layers/patch_embedding/layernorm', 'patch_embed/norm', _NORM),
    (r'layers/patch_embedding/position_embedding', 'patch_embed', _EMBEDDING),
    (r'head', 'head', _DENSE),
    (_BLOCK + '/' + _STREAM + r'/multi_head_attention/(?P<proj>query|key|value|output)_dense',
     '{block}/{prefix}attention/{proj}', _DENSE),
    (_BLOCK + '/' + _STREAM + r'/(?P<input>query|key|value)_layernorm',
     '{block}/{prefix}norm_{input}', _NORM),
    (_BLOCK + r'/ffn/layernorm', '{block}/norm_mlp', _NORM),
    (_BLOCK + r'/ffn/ffn/layers/dense', '{block}/mlp/hidden', _DENSE),
    (_BLOCK + r'/ffn/ffn/layers/dense_1', '{block}/mlp/output', _DENSE),
)


class KerasPortError(ValueError):
  """The Keras weights do not belong to the seed's model, or not to the expected shape."""


def _block_path(keras_block: str) -> str:
  """'perceptual_module/attention_with_ffn_3' -> 'recurrence/perceptual_3';
  'tlb_module' -> 'recurrence/slow_update'."""
  if keras_block == 'tlb_module':
    return 'recurrence/slow_update'
  index = re.fullmatch(r'perceptual_module/attention_with_ffn(?:_(\d+))?', keras_block).group(1)
  return f'recurrence/perceptual_{index or 0}'


def flax_path(keras_path: str) -> tuple[str, ...]:
  """A Keras weight path ('.../query_dense/vars/0') -> its flax path ('recurrence', ...,
  'attention', 'query', 'kernel'); raises KerasPortError for a weight the seed's model lacks."""
  match = re.fullmatch(r'(.+)/vars/(\d+)', keras_path)
  if match:
    layer, number = match.group(1), int(match.group(2))
    for pattern, template, names in _RULES:
      rule = re.fullmatch(pattern, layer)
      if rule and number < len(names):
        groups = rule.groupdict()
        path = template.format(
            block=_block_path(groups['block']) if groups.get('block') else '',
            prefix='slow_' if groups.get('stream') == 'slow' else '',
            proj={'output': 'out'}.get(groups.get('proj'), groups.get('proj')),
            input=groups.get('input'))
        return tuple(path.split('/')) + (names[number],)
  raise KerasPortError(f'{keras_path} is not a weight of the Keras seed model')


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  """A Keras 3 `.weights.h5` file -> {weight path: float32 array}, optimizer variables left out."""
  import h5py  # pylint: disable=import-outside-toplevel
  weights = {}

  def visit(name, item):
    if isinstance(item, h5py.Dataset) and not name.startswith('optimizer/'):
      weights[name] = np.asarray(item, dtype=np.float32)

  with h5py.File(path, 'r') as f:
    f.visititems(visit)
  return weights


def keras_weights(source: Any) -> dict[str, np.ndarray]:
  """A built Keras seed model, or the path of a `.weights.h5` file saved from one
  -> {weight path: float32 array}."""
  if isinstance(source, (str, os.PathLike)):
    return read_weights_file(os.fspath(source))
  if not getattr(source, 'built', False) or not source.weights:
    raise KerasPortError('the Keras model has no weights yet; call it on a batch first')
  with tempfile.TemporaryDirectory() as tmp:
    # The model's own writer: its paths are those of a saved file, with no separate walk here.
    path = os.path.join(tmp, 'seed.weights.h5')
    source.save_weights(path)
    return read_weights_file(path)


def port_keras_weights(source: Any, like: Any = None) -> dict:
  """Flax params of `TLB(variant='keras_seed')` holding the Keras seed model's weights.

  Args:
    source: the seed's Keras model object (built), or the path of a `.weights.h5` file saved by
      its `save_weights`.
    like: optional params (or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of
      `model.init`) of the flax model to fill; the ported tree must have exactly its paths
      and shapes.

  Returns:
    Nested dict of float32 numpy arrays, shaped as listed in the module docstring: e.g. for
    D features, H heads and D features per head, recurrence/perceptual_0/attention/query/kernel
    is (D, H, D) and head/kernel (D, num_classes).

  Raises:
    KerasPortError: a weight that the seed's model does not have, or (with `like`) missing,
      extra or differently shaped parameters.
  """
  params: dict = {}
  for keras_path, value in sorted(keras_weights(source).items()):
    *modules, leaf = flax_path(keras_path)
    node = params
    for name in modules:
      node = node.setdefault(name, {})
    if leaf in node:
      raise KerasPortError(f'{keras_path} ports to {"/".join(modules + [leaf])} twice')
    node[leaf] = value
  if like is not None:
    _check_like(params, like)
  return params


def _check_like(params, like) -> None:
  shapes = lambda tree: {jax.tree_util.keystr(path): tuple(np.shape(leaf))
                         for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  ported, expected = shapes(params), shapes(like)
  problems = [f'missing {p}' for p in sorted(set(expected) - set(ported))]
  problems += [f'not in the flax model: {p}' for p in sorted(set(ported) - set(expected))]
  problems += [f'{p}: Keras {ported[p]}, flax {expected[p]}'
               for p in sorted(set(ported) & set(expected)) if ported[p] != expected[p]]
  if problems:
    raise KerasPortError('the Keras weights do not fit the flax model: ' + '; '.join(problems))
