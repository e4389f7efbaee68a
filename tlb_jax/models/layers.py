"""Building blocks shared by every model: attention, MLP, pre-LN blocks, patch embedding.

Shape letters: B batch, N tokens, Lq query tokens, Lk key/value tokens, D features,
H heads, Dh features per head.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from tlb_jax.choices import KERAS_FANS, POWER_OF_TWO_TOKENIZERS, TOKENIZERS

Dtype = Any

# Names by which a remat policy can store a value instead of recomputing it in the backward
# pass: `Dropout`'s keep-masks, and what the backward of `softmax`, `gelu_tanh` and `gelu_erf`
# reads.
DROPOUT_MASK = 'dropout_mask'
SOFTMAX_EXP = 'softmax_exp'
GELU_TANH = 'gelu_tanh'
GELU_ERF = 'gelu_erf'

# Seed (Keras) LayerNormalization epsilon; kept so the seed-faithful config matches it.
LAYER_NORM_EPSILON = 1e-5


def kernel_init(keras_init: bool) -> nn.initializers.Initializer:
  """Kernel initializer: Keras's default glorot_uniform, or flax's default lecun_normal.

  glorot_uniform draws from U(-a, a), a = sqrt(6 / (fan_in + fan_out)); for a DenseGeneral
  kernel flax counts the contracted axes as fan_in and the output axes as fan_out, as
  Keras's EinsumDense has since April 2026 (`keras_attention_kernel_init` has both rules).
  """
  return nn.initializers.glorot_uniform() if keras_init else nn.linear.default_kernel_init


def keras_attention_kernel_init(kernel_shape: tuple[int, ...], keras_fans: str
                                ) -> nn.initializers.Initializer:
  """Keras's glorot_uniform for a `MultiHeadAttention` kernel of `kernel_shape`: (D, H, Dh) for
  the query, key and value projections, (H, Dh, D) for the output.

  keras_fans: 'einsum' counts the contracted axes as fan_in and the others as fan_out (Keras
    since April 2026, keras-team/keras#22789; flax's `kernel_init`); 'conv' counts every axis
    before the last two as a convolution's receptive field, fan_in = shape[-2] * field and
    fan_out = shape[-1] * field, as tf.keras and Keras 3 did before: the Keras example's
    query, key and value kernels (64, 1, 64), as its published logs trained them, drew from
    U(-0.038, 0.038), 5.7 times narrower than the U(-0.217, 0.217) of 'einsum'.
  The initializer ignores the shape it is called with (DenseGeneral passes the kernel
  flattened to 2-D), taking its fans from `kernel_shape`.
  """
  if keras_fans == 'einsum':
    return kernel_init(keras_init=True)
  if keras_fans not in KERAS_FANS:
    raise ValueError(f'keras_fans must be one of {KERAS_FANS}, got {keras_fans!r}')
  field = math.prod(kernel_shape[:-2])
  limit = math.sqrt(6 / (field * (kernel_shape[-2] + kernel_shape[-1])))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def keras_embedding_init(key, shape, dtype=jnp.float32):
  """Keras `Embedding`'s default initializer, 'uniform': U(-0.05, 0.05)."""
  return jax.random.uniform(key, shape, dtype, -0.05, 0.05)


def matmul_dot_general(lhs, rhs, dimension_numbers, precision=None,
                       preferred_element_type=None):
  """`jax.lax.dot_general` computed as one 2-D matmul where it is a dense layer's contraction.

  lhs (..., K1, ..., Kn) and rhs (K1, ..., Kn, F...), contracting lhs's trailing axes with rhs's
  leading ones and no batch axes -> (..., F...), as `(M, K) @ (K, F)` between reshapes; any other
  `dimension_numbers` go to `lax.dot_general` unchanged. The values are `lax.dot_general`'s; the
  weight gradient is why it exists: differentiated through (B, N, D) inputs, the product
  contracts two axes, which XLA:CPU runs as a transposing copy and an Eigen matmul; from
  (B * N, D) it is one plain matmul (1.2x faster training, docs/performance.md). On CPU, a
  narrow weight gradient is computed transposed (`matmul_with_transposed_weight_gradient`). Pass
  it as `dot_general=` to flax's `Dense` and `DenseGeneral`.
  """
  (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
  num_contracting = len(lhs_contracting)
  free_ndim = lhs.ndim - num_contracting
  if (lhs_batch or rhs_batch
      or tuple(lhs_contracting) != tuple(range(free_ndim, lhs.ndim))
      or tuple(rhs_contracting) != tuple(range(num_contracting))):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  contracted = math.prod(lhs.shape[free_ndim:])
  out_shape = lhs.shape[:free_ndim] + rhs.shape[num_contracting:]
  lhs, rhs = lhs.reshape(-1, contracted), rhs.reshape(contracted, -1)
  if (jax.default_backend() == 'cpu' and precision is None and preferred_element_type is None
      and rhs.shape[1] < rhs.shape[0]):
    product = matmul_with_transposed_weight_gradient(lhs, rhs)
  else:
    product = jax.lax.dot_general(lhs, rhs, (((1,), (0,)), ((), ())), precision=precision,
                                  preferred_element_type=preferred_element_type)
  return product.reshape(out_shape)


@jax.custom_vjp
def matmul_with_transposed_weight_gradient(x, w):
  """x (M, K) @ w (K, F), F < K, whose weight gradient is computed transposed, as (F, K).

  XLA:CPU gives a weight gradient x^T dy to Eigen (both operands contracted on their long first
  axis), which runs a narrow (K, F) result such as the MLP's (256, 64) at about 0.6 times the
  speed of the wide (F, K) one (docs/performance.md).
  """
  return x @ w


def _matmul_forward(x, w):
  return x @ w, (x, w)


def _matmul_backward(residuals, dy):
  """dx = dy w^T; dw = (dy^T x)^T, the barrier keeping XLA from folding the transpose back into
  the dot."""
  x, w = residuals
  return dy @ w.T, jax.lax.optimization_barrier(dy.T @ x).T


matmul_with_transposed_weight_gradient.defvjp(_matmul_forward, _matmul_backward)


def resolve_dtype(name: str) -> jnp.dtype:
  """Maps a config dtype name to a jnp dtype; 'auto' is bfloat16 on GPU/TPU, float32 on CPU."""
  if name == 'auto':
    return jnp.bfloat16 if jax.default_backend() in ('gpu', 'tpu') else jnp.float32
  return jnp.dtype(name).type


def softmax(logits, axis: int = -1):
  """`jax.nn.softmax`'s ops and values, differentiated as written (not by its custom JVP) so
  that a remat policy can store the exponentials, which its backward reads, by name."""
  shifted = logits - jax.lax.stop_gradient(logits.max(axis, keepdims=True))
  unnormalized = checkpoint_name(jnp.exp(shifted), SOFTMAX_EXP)
  return unnormalized / unnormalized.sum(axis, keepdims=True)


def gelu_tanh(x):
  """`jax.nn.gelu(x, approximate=True)`'s ops and values, with the tanh, which its backward
  reads, named for remat policies."""
  sqrt_2_over_pi = np.sqrt(2 / np.pi).astype(x.dtype)
  tanh = checkpoint_name(jnp.tanh(sqrt_2_over_pi * (x + 0.044715 * (x ** 3))), GELU_TANH)
  return x * (0.5 * (1.0 + tanh))


def gelu_erf(x):
  """The exact GELU, x Phi(x), as 0.5 x (1 + erf(x / sqrt(2))) (Keras's formula): the function
  of `jax.nn.gelu(x, approximate=False)`, which computes it with erfc. XLA:CPU computes erf as
  one polynomial and erfc with an exponential and two branches, so the seed trains 1.15x faster
  with this form (docs/performance.md). The erf, which its backward reads, is named for remat
  policies."""
  erf = checkpoint_name(jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)), GELU_ERF)
  return 0.5 * x * (1.0 + erf)


def _standardize_forward(x, epsilon: float):
  """x (..., D) -> ((x - mean) / std over D in x's dtype, what the backward reads: that in
  float32 and 1/std (..., 1)).

  Statistics in float32 as flax's `nn.LayerNorm` computes them: var = E[x^2] - E[x]^2,
  clipped at 0."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  variance = jnp.maximum(0.0, (x32 * x32).mean(-1, keepdims=True) - mean * mean)
  inverse_std = jax.lax.rsqrt(variance + epsilon)
  normalized = (x32 - mean) * inverse_std
  return normalized.astype(x.dtype), (normalized, inverse_std)


def _standardize_input_gradient(normalized, inverse_std, g):
  """d x from g = d normalized (float32): one pass of two row means, instead of the chain of
  reductions that differentiating the statistics step by step leaves to XLA."""
  return inverse_std * (g - g.mean(-1, keepdims=True)
                        - normalized * (g * normalized).mean(-1, keepdims=True))


def _standardize_backward(epsilon, residuals, g):
  del epsilon
  return (_standardize_input_gradient(*residuals, g.astype(jnp.float32)).astype(g.dtype),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def standardize(x, epsilon: float):
  """x (..., D) -> (..., D) in x's dtype, zero mean and unit variance over D (computed in
  float32): LayerNorm without its scale and bias, with `layer_norm`'s hand-written backward."""
  return _standardize_forward(x, epsilon)[0]


standardize.defvjp(_standardize_forward, _standardize_backward)


def _layer_norm_forward(x, scale, bias, epsilon: float):
  """x (..., D), scale (D,), bias (D,) -> (y (..., D) in x's dtype, what the backward reads)."""
  _, (normalized, inverse_std) = _standardize_forward(x, epsilon)
  y = normalized * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y.astype(x.dtype), (normalized, inverse_std, scale)


def _layer_norm_backward(epsilon, residuals, dy):
  """The gradients of `_layer_norm_forward` from its normalized input and 1/std."""
  del epsilon
  normalized, inverse_std, scale = residuals
  dy32 = dy.astype(jnp.float32)
  rows = tuple(range(dy.ndim - 1))
  d_scale = (dy32 * normalized).sum(rows).astype(scale.dtype)
  d_bias = dy32.sum(rows).astype(scale.dtype)
  dx = _standardize_input_gradient(normalized, inverse_std, dy32 * scale.astype(jnp.float32))
  return dx.astype(dy.dtype), d_scale, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float):
  """x (..., D) -> LayerNorm over D with scale and bias (D,): `nn.LayerNorm`'s function, with
  a hand-written backward."""
  return _layer_norm_forward(x, scale, bias, epsilon)[0]


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
  """`nn.LayerNorm` over the last axis (the same parameters, 'scale' and 'bias' (D,), and the
  same function) computed by `layer_norm`, whose backward is written by hand. `affine` gives
  the parameters alone, for `normalized_projections`."""

  epsilon: float = LAYER_NORM_EPSILON
  dtype: Dtype = jnp.float32

  @nn.compact
  def affine(self, features: int):
    """-> (scale, bias), each (features,) float32."""
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    return scale, bias

  def __call__(self, x):
    """x (..., D) -> (..., D) in `dtype`."""
    scale, bias = self.affine(x.shape[-1])
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


class DenseGeneralParams(nn.Module):
  """The parameters of `nn.DenseGeneral(features)` on inputs of D features, 'kernel'
  (D, *features) and 'bias' (features), drawn as it draws them (the initializer called with the
  kernel flattened to (D, prod(features))), without applying them: the same parameters, for
  `normalized_projections`."""

  features: tuple[int, ...]
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, in_features: int):
    """-> (kernel (D, *features), bias (features)) float32."""
    flat_shape = (in_features, math.prod(self.features))
    kernel = self.param(
        'kernel', lambda key, shape: self.kernel_init(key, flat_shape, jnp.float32).reshape(shape),
        (in_features, *self.features))
    bias = self.param('bias', nn.initializers.zeros, self.features)
    return kernel, bias


def normalized_projections(inputs, norms, projections, epsilon: float = LAYER_NORM_EPSILON,
                           dtype: Dtype = jnp.float32):
  """Dense_i(LayerNorm_i(x_i)) for each i, where inputs that are the same array (the same
  object, as traced) share one normalization and one matmul.

  LayerNorm_i(x) @ W_i + c_i = n @ (s_i W_i) + (b_i @ W_i + c_i), with n the standardized x and
  (s_i, b_i) the i-th LayerNorm's scale and bias: the projections of one input become one
  (..., D) @ (D, sum F_i) matmul after one normalization, whose backward is one input-gradient
  matmul, one weight-gradient matmul and one LayerNorm backward, instead of three of each (the
  seed's queries, keys and values; `benchmarks/dense_matmul_ab.py` times it against the same
  function computed one projection at a time).

  Args:
    inputs: [x_i (..., D)].
    norms: [(scale_i, bias_i) (D,)], `LayerNorm.affine`.
    projections: [(kernel_i (D, *F_i), bias_i (F_i))], `DenseGeneralParams`.
    epsilon: the LayerNorms' epsilon.
    dtype: compute dtype of the matmuls.

  Returns:
    [(..., *F_i)] in `dtype`.
  """
  outputs = [None] * len(inputs)
  groups = {}
  for index, x in enumerate(inputs):
    groups.setdefault(id(x), []).append(index)
  for members in groups.values():
    x = inputs[members[0]]
    kernels, biases, sizes = [], [], []
    for index in members:
      (scale, shift), (kernel, bias) = norms[index], projections[index]
      kernel = kernel.reshape(kernel.shape[0], -1)
      kernels.append(scale[:, None] * kernel)
      biases.append(shift @ kernel + bias.reshape(-1))
      sizes.append(kernel.shape[1])
    kernel = jnp.concatenate(kernels, axis=1).astype(dtype)
    bias = jnp.concatenate(biases).astype(dtype)
    product = matmul_dot_general(standardize(x, epsilon).astype(dtype), kernel,
                                 (((x.ndim - 1,), (0,)), ((), ()))) + bias
    for index, part in zip(members, jnp.split(product, np.cumsum(sizes)[:-1], axis=-1)):
      outputs[index] = part.reshape(x.shape[:-1] + projections[index][1].shape)
  return outputs


class Dropout(nn.Module):
  """`nn.Dropout` (same masks for the same rng) whose keep-mask is named 'dropout_mask'.

  The name lets a remat policy store the mask (one byte per element) instead of drawing its
  random bits (threefry) again when the backward pass recomputes the layer.
  """

  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    """x (any shape) -> x with elements zeroed with probability `rate`, the rest scaled up."""
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, x.shape)
    keep = checkpoint_name(keep, DROPOUT_MASK)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with fused projections.

  Self-attention (`context=None`) projects q, k and v with one matmul; cross-attention projects
  q from the queries and k, v together from the context. Softmax runs in float32.

  With `fused=False` (the seed's `BaseAttention`, Keras `MultiHeadAttention`'s layout) q, k and
  v have their own projections, 'query', 'key' and 'value', each with kernel (D, H, Dh) and
  bias (H, Dh), and their own LayerNorms, whose (scale, bias) the caller passes as `norms`;
  projections of the same input run as one matmul (`normalized_projections`).

  Attributes:
    num_heads: H.
    head_dim: Dh; defaults to D // H.
    attention_dropout_rate: dropout on the attention probabilities.
    dtype: compute dtype (parameters stay float32).
    fused: one projection for q, k, v (self-attention) or for k, v (cross-attention).
    keras_init: glorot_uniform kernels (Keras's default) instead of lecun_normal.
    keras_fans: with `keras_init`, how their fans are counted ('conv' or 'einsum', see
      `keras_attention_kernel_init`).
  """

  num_heads: int
  head_dim: int | None = None
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  fused: bool = True
  keras_init: bool = False
  keras_fans: str = 'conv'

  @nn.compact
  def __call__(self, queries, context=None, *, norms=None, deterministic: bool):
    """queries (B, Lq, D), context (B, Lk, D) or None (self-attention) -> ((B, Lq, D),
    weights (B, H, Lq, Lk) f32).

    norms: with `fused=False` (only then), the LayerNorms of the queries, keys and values as
      three (scale, bias) pairs of (D,) (`LayerNorm.affine`), applied to `queries` and `context`
      here.
    """
    if (norms is None) != self.fused:
      raise ValueError('norms are given with fused=False, and only then')
    features = queries.shape[-1]
    head_dim = self.head_dim or features // self.num_heads
    init = lambda shape: (keras_attention_kernel_init(shape, self.keras_fans) if self.keras_init
                          else kernel_init(False))
    dense = lambda shape, name: nn.DenseGeneral(
        shape, dtype=self.dtype, kernel_init=init((features, *shape)),
        dot_general=matmul_dot_general, name=name)
    if not self.fused:
      keys = queries if context is None else context
      shape = (self.num_heads, head_dim)
      projections = [DenseGeneralParams(shape, init((features, *shape)), name=name)(features)
                     for name in ('query', 'key', 'value')]
      query, key, value = normalized_projections([queries, keys, keys], norms, projections,
                                                 LAYER_NORM_EPSILON, self.dtype)
    elif context is None:
      qkv = dense((3, self.num_heads, head_dim), 'qkv')(queries)
      query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      query = dense((self.num_heads, head_dim), 'query')(queries)
      kv = dense((2, self.num_heads, head_dim), 'key_value')(context)
      key, value = kv[:, :, 0], kv[:, :, 1]
    query = query * jnp.asarray(head_dim**-0.5, self.dtype)
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
    weights = softmax(logits.astype(jnp.float32), axis=-1)
    dropped = Dropout(self.attention_dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', dropped.astype(self.dtype), value)
    out = nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype,
                          kernel_init=init((self.num_heads, head_dim, features)),
                          dot_general=matmul_dot_general, name='out')(out)
    return out, weights


class MlpBlock(nn.Module):
  """Dense(mlp_ratio * D) -> GELU -> Dense(D) -> dropout, as in the seed's feed-forward network.

  Attributes:
    approximate_gelu: tanh-approximated GELU (flax's default); False: the exact, erf GELU
      (Keras's 'gelu').
    keras_init: glorot_uniform kernels (Keras's default) instead of lecun_normal.
  """

  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  approximate_gelu: bool = True
  keras_init: bool = False

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    """x (B, N, D) -> (B, N, D)."""
    features = x.shape[-1]
    dense = lambda size, name: nn.Dense(size, dtype=self.dtype,
                                        kernel_init=kernel_init(self.keras_init),
                                        dot_general=matmul_dot_general, name=name)
    y = dense(self.mlp_ratio * features, 'hidden')(x)
    y = gelu_tanh(y) if self.approximate_gelu else gelu_erf(y)
    y = dense(features, 'output')(y)
    return Dropout(self.dropout_rate)(y, deterministic=deterministic)


class AttentionBlock(nn.Module):
  """Pre-LayerNorm residual block: x += MHA(LN(x), LN(context)); x += MLP(LN(x)).

  With `context=None` it is a self-attention block, otherwise a cross-attention block whose
  queries come from `x` and keys/values from `context`.

  With `qkv_norms` (the seed's `BaseAttention`) queries, keys and values each have their own
  LayerNorm, 'norm_query', 'norm_key' and 'norm_value' (also in self-attention, where all three
  read `x`), and unfused projections; otherwise 'norm_query' normalises the queries and
  'norm_context' the keys and values of a cross-attention (in self-attention, 'norm_query'
  normalises all three).

  `stream='slow'` runs the block's second attention sub-layer, 'slow_attention' with its own
  norms ('slow_norm_query', ...), followed by the same MLP: the seed's `AttentionWithFFN`
  called with stream='slow'. Calling one block with both streams shares its MLP between them;
  a sub-layer has parameters only if some call uses it.

  Attributes:
    qkv_norms: separate LayerNorms of queries, keys and values (and unfused projections).
    approximate_gelu: see `MlpBlock`.
    keras_init: Keras's default initializers for every kernel (see `kernel_init`).
    keras_fans: see `MultiHeadAttention`.
  """

  num_heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  head_dim: int | None = None  # Dh; None: D // H
  dtype: Dtype = jnp.float32
  qkv_norms: bool = False
  approximate_gelu: bool = True
  keras_init: bool = False
  keras_fans: str = 'conv'

  @nn.compact
  def __call__(self, x, context=None, *, deterministic: bool, stream: str = 'fast'):
    """x (B, Lq, D), context (B, Lk, D) or None -> ((B, Lq, D), weights (B, H, Lq, Lk)).

    stream: 'fast' (the first attention sub-layer) or 'slow' (the second).
    """
    if stream not in ('fast', 'slow'):
      raise ValueError(f"stream must be 'fast' or 'slow', got {stream!r}")
    prefix = '' if stream == 'fast' else 'slow_'
    norm = lambda name: LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name=name)
    attention = MultiHeadAttention(
        num_heads=self.num_heads,
        head_dim=self.head_dim,
        attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype,
        fused=not self.qkv_norms,
        keras_init=self.keras_init,
        keras_fans=self.keras_fans,
        name=f'{prefix}attention',
    )
    if self.qkv_norms:
      norms = [norm(f'{prefix}norm_{role}').affine(x.shape[-1])
               for role in ('query', 'key', 'value')]
      y, weights = attention(x, context, norms=norms, deterministic=deterministic)
    else:
      if context is not None:
        context = norm(f'{prefix}norm_context')(context)
      y, weights = attention(norm(f'{prefix}norm_query')(x), context,
                             deterministic=deterministic)
    x = x + y
    y = MlpBlock(self.mlp_ratio, self.dropout_rate, self.dtype, self.approximate_gelu,
                 self.keras_init, name='mlp')(norm('norm_mlp')(x), deterministic=deterministic)
    return x + y, weights


def neighbourhoods_3x3(x, stride: int, centre_offset: int = 0):
  """x (B, H, W, C) -> (B, H/s, W/s, 9C): the zero-padded 3x3 neighbourhood of pixels
  (s*i + centre_offset, s*j + centre_offset), rows then columns then channels, for stride s."""
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  window = lambda offset, size: slice(offset + centre_offset, offset + centre_offset + size,
                                      stride)
  return jnp.concatenate([padded[:, window(row, height), window(col, width)]
                          for row in range(3) for col in range(3)], axis=-1)


class Conv3x3(nn.Module):
  """3x3 convolution with zero padding, computed as one matmul over gathered neighbourhoods.

  XLA:CPU runs the weight gradient of these small convolutions several times slower than the
  equivalent matmul (docs/performance.md). Parameters are laid out as `nn.Conv`'s ('kernel'
  (3, 3, C, F), 'bias' (F,)), so runs saved with `nn.Conv` restore into it.

  Attributes:
    features: F.
    stride: 1 or 2.
    centre_offset: 0 or 1 (1 only with stride 2): output (i, j) is centred on input pixel
      (s*i + offset, s*j + offset); with stride 1, offset 0 is 'SAME'; with stride 2, offset 1
      is XLA's 'SAME'.
    use_bias: add a learned bias.
  """

  features: int
  stride: int = 1
  centre_offset: int = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x (B, H, W, C) -> (B, H/stride, W/stride, F)."""
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, channels, self.features))
    neighbourhoods = neighbourhoods_3x3(x.astype(self.dtype), self.stride, self.centre_offset)
    y = matmul_dot_general(neighbourhoods, kernel.reshape(9 * channels, self.features).astype(
        self.dtype), (((3,), (0,)), ((), ())))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class PatchProjection(nn.Module):
  """A linear projection of each non-overlapping p x p patch, computed as one matmul.

  The function and parameters of `nn.Conv(features, (p, p), strides=(p, p), padding='VALID')`
  ('kernel' (p, p, C, F), 'bias' (F,)), so runs saved with it restore into this; XLA:CPU runs
  that convolution's weight gradient several times slower than the matmul's
  (docs/performance.md).

  Attributes:
    features: F.
    patch_size: p.
    kernel_init: initializer of the (p, p, C, F) kernel, fans counted as for `nn.Conv`.
  """

  features: int
  patch_size: int
  dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x):
    """x (B, H, W, C) with p dividing H and W -> (B, H/p, W/p, F)."""
    p = self.patch_size
    batch, height, width, channels = x.shape
    kernel = self.param('kernel', self.kernel_init, (p, p, channels, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # (B, H/p, p, W/p, p, C) -> (B, H/p, W/p, p, p, C): each patch's pixels in the kernel's order.
    patches = x.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, height // p, width // p, p * p * channels).astype(self.dtype)
    y = matmul_dot_general(patches, kernel.reshape(p * p * channels, self.features).astype(
        self.dtype), (((3,), (0,)), ((), ())))
    return y + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """Image -> one token per p x p patch + learned position embedding -> LayerNorm.

  tokenizer 'linear': a linear projection of each non-overlapping patch (ViT, the seed).
  tokenizer 'conv': log2(p) stages of [3x3 conv, ReLU, 3x3 max-pool with stride 2], as in the
  Compact Convolutional Transformer (Hassani et al. 2021); each token still stands for one
  p x p patch, but sees its neighbours, a locality prior that small attention models trained
  from scratch on small images lack. p must be a power of two.
  tokenizer 'stem': log2(p) 3x3 convs with stride 2 and ReLU, widths doubling up to D, then a
  linear projection (the convolutional stem of Xiao et al. 2021, "Early convolutions help
  transformers see better", without its batch norm); the same locality prior as 'conv' at a
  fraction of its cost, since no conv runs at full resolution with D channels. p must be a
  power of two.

  Patches are numbered row-major, so token n is patch (n // (W/p), n % (W/p)).

  With `keras_init` (the seed's Keras initializers) the linear projection's kernel is
  glorot_uniform and the position embedding U(-0.05, 0.05) (Keras `Embedding`), instead of
  lecun_normal and N(0, 0.02).
  """

  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  tokenizer: str = 'linear'
  keras_init: bool = False

  @nn.compact
  def __call__(self, images):
    """images (B, H, W, C) -> tokens (B, N, D) with N = (H / p) * (W / p)."""
    p = self.patch_size
    height, width = images.shape[1:3]
    if height % p or width % p:
      raise ValueError(f'image size {height}x{width} is not divisible by patch_size {p}')
    x = images.astype(self.dtype)
    if self.tokenizer in POWER_OF_TWO_TOKENIZERS and p & (p - 1):
      raise ValueError(f'tokenizer {self.tokenizer!r} needs a power-of-two patch_size, got {p}')
    num_stages = p.bit_length() - 1  # resolution halvings of the power-of-two tokenizers
    if self.tokenizer == 'linear':
      x = PatchProjection(self.embed_dim, p, dtype=self.dtype,
                          kernel_init=kernel_init(self.keras_init), name='projection')(x)
    elif self.tokenizer == 'conv':
      for stage in range(num_stages):
        # No bias: the position embedding and LayerNorm that follow supply the offsets.
        x = Conv3x3(self.embed_dim, use_bias=False, dtype=self.dtype, name=f'conv_{stage}')(x)
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding='SAME')
    elif self.tokenizer == 'stem':
      for stage in range(num_stages):
        width = max(self.embed_dim >> (num_stages - 1 - stage), 8)
        # Centring the last stage one pixel later centres token n on its own patch (rows
        # p*i - 1 ... p*i + p + 1 for p = 4), so attention maps still place it there.
        x = nn.relu(Conv3x3(width, stride=2, centre_offset=int(stage == num_stages - 1),
                            dtype=self.dtype, name=f'stem_{stage}')(x))
      x = nn.Dense(self.embed_dim, dtype=self.dtype, dot_general=matmul_dot_general,
                   name='projection')(x)
    else:
      raise ValueError(f'tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}')
    batch, rows, cols, features = x.shape
    x = x.reshape(batch, rows * cols, features)
    position_init = keras_embedding_init if self.keras_init else nn.initializers.normal(0.02)
    position = self.param('position_embedding', position_init, (rows * cols, features))
    x = x + position.astype(self.dtype)
    return LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name='norm')(x)


def classification_head(tokens, num_classes: int, *, dtype: Dtype, norm: bool = True,
                        keras_init: bool = False):
  """tokens (B, N, D) -> logits (B, num_classes) float32: [LayerNorm] -> mean over N -> Dense.

  Call it inside a model's compact `__call__`: its layers become that model's submodules,
  named 'head_norm' (only with `norm`) and 'head'. `keras_init`: a glorot_uniform kernel.
  """
  if norm:
    tokens = LayerNorm(LAYER_NORM_EPSILON, dtype=dtype, name='head_norm')(tokens)
  pooled = tokens.mean(axis=1)
  return nn.Dense(num_classes, dtype=jnp.float32, kernel_init=kernel_init(keras_init),
                  name='head')(pooled.astype(jnp.float32))
