"""Times the Keras seed example's TLB on this machine, for a like-for-like comparison.

  python -m benchmarks.keras_seed --batch_size=256 --output=docs/benchmarks/cpu_keras_seed_b256.json

The model below is the Keras example "When Recurrence meets Transformers" (keras-io,
examples/vision/temporal_latent_bottleneck.py, Apache 2.0, by Aritra Roy Gosthipaty and
Suvaditya Mukherjee), kept as it is (including its reuse of one attention layer for a block's
self- and cross-attention) so that its speed is the seed's speed; only the mixed precision policy
is left at float32 to match `tlb_jax.benchmark` on CPU. It times, on a fixed batch of already
augmented 48x48 images (model only, no input pipeline): `train_on_batch` and `predict_on_batch`,
warm-up excluded, median of `--repeats`. Like `tlb_jax.benchmark`, it restarts itself under
tcmalloc where that is installed (`TLB_JAX_MALLOC=system`: glibc malloc) and records the
allocator, so that the two compare like for like. Needs `keras` (installed with tensorflow)
and is not part of the test suite.
"""

import argparse
import json
import os

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

import keras  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from tlb_jax.benchmark import median_seconds  # noqa: E402

SEED_CONFIG = dict(image_size=48, patch_size=4, embed_dim=64, chunk_size=8, r=2, num_layers=4,
                   ffn_drop=0.2, attn_drop=0.2, num_heads=1, learning_rate=1e-4,
                   weight_decay=1e-4)


class PatchEmbedding(layers.Layer):

  def __init__(self, image_size, patch_size, embed_dim, chunk_size, **kwargs):
    super().__init__(**kwargs)
    num_patches = (image_size // patch_size) ** 2
    self.positions = ops.arange(start=0, stop=num_patches, step=1)
    self.projection = layers.Conv2D(embed_dim, patch_size, strides=patch_size)
    self.flatten = layers.Reshape((-1, embed_dim))
    self.position_embedding = layers.Embedding(num_patches, embed_dim)
    self.layernorm = layers.LayerNormalization(epsilon=1e-5)
    self.chunking_layer = layers.Reshape((num_patches // chunk_size, chunk_size, embed_dim))

  def call(self, inputs):
    x = self.flatten(self.projection(inputs))
    x = self.layernorm(x + self.position_embedding(self.positions))
    return self.chunking_layer(x)


class FeedForwardNetwork(layers.Layer):

  def __init__(self, dims, dropout, **kwargs):
    super().__init__(**kwargs)
    self.ffn = keras.Sequential([layers.Dense(4 * dims, activation='gelu'),
                                 layers.Dense(dims), layers.Dropout(dropout)])
    self.layernorm = layers.LayerNormalization(epsilon=1e-5)

  def call(self, inputs):
    return inputs + self.ffn(self.layernorm(inputs))


class BaseAttention(layers.Layer):

  def __init__(self, num_heads, key_dim, dropout, **kwargs):
    super().__init__(**kwargs)
    self.multi_head_attention = layers.MultiHeadAttention(num_heads, key_dim, dropout=dropout)
    self.query_layernorm = layers.LayerNormalization(epsilon=1e-5)
    self.key_layernorm = layers.LayerNormalization(epsilon=1e-5)
    self.value_layernorm = layers.LayerNormalization(epsilon=1e-5)

  def call(self, query, key, value):
    attention_outputs = self.multi_head_attention(
        query=self.query_layernorm(query), key=self.key_layernorm(key),
        value=self.value_layernorm(value))
    return query + attention_outputs


class AttentionWithFFN(layers.Layer):

  def __init__(self, ffn_dims, ffn_dropout, num_heads, key_dim, attn_dropout, **kwargs):
    super().__init__(**kwargs)
    self.fast_stream_attention = BaseAttention(num_heads, key_dim, attn_dropout)
    self.slow_stream_attention = BaseAttention(num_heads, key_dim, attn_dropout)
    self.ffn = FeedForwardNetwork(ffn_dims, ffn_dropout)

  def build(self, input_shape):
    self.built = True

  def call(self, query, key, value, stream='fast'):
    attention_layer = {'fast': self.fast_stream_attention,
                       'slow': self.slow_stream_attention}[stream]
    return self.ffn(attention_layer(query, key, value))


class CustomRecurrentCell(layers.Layer):

  def __init__(self, chunk_size, r, num_layers, ffn_dims, ffn_dropout, num_heads, key_dim,
               attn_dropout, **kwargs):
    super().__init__(**kwargs)
    self.chunk_size, self.r, self.ffn_dims = chunk_size, r, ffn_dims
    self.state_size = chunk_size * ffn_dims
    block = lambda: AttentionWithFFN(ffn_dims, ffn_dropout, num_heads, key_dim, attn_dropout)
    self.perceptual_module = []
    for layer_idx in range(num_layers):
      self.perceptual_module.append(block())
      if layer_idx % r == 0:
        self.perceptual_module.append(block())
    self.tlb_module = block()

  def build(self, input_shape):
    self.built = True

  def call(self, inputs, states):
    slow_stream = ops.reshape(states[0], (-1, self.chunk_size, self.ffn_dims))
    fast_stream = inputs
    # As in the seed: the cross-attention reuses the layer of the same index (its 'slow' half).
    for layer_idx, layer in enumerate(self.perceptual_module):
      fast_stream = layer(fast_stream, fast_stream, fast_stream, stream='fast')
      if layer_idx % self.r == 0:
        fast_stream = layer(fast_stream, slow_stream, slow_stream, stream='slow')
    slow_stream = self.tlb_module(slow_stream, fast_stream, fast_stream)
    return fast_stream, [ops.reshape(slow_stream, (-1, self.chunk_size * self.ffn_dims))]


class TemporalLatentBottleneckModel(keras.Model):

  def __init__(self, patch_layer, custom_cell, **kwargs):
    super().__init__(**kwargs)
    self.patch_layer = patch_layer
    self.rnn = layers.RNN(custom_cell)
    self.gap = layers.GlobalAveragePooling1D()
    self.head = layers.Dense(10, activation='softmax', dtype='float32')

  def call(self, inputs):
    return self.head(self.gap(self.rnn(self.patch_layer(inputs))))


def build_seed_model(config: dict) -> keras.Model:
  """The seed's TLB, compiled as the seed compiles it."""
  model = TemporalLatentBottleneckModel(
      PatchEmbedding(config['image_size'], config['patch_size'], config['embed_dim'],
                     config['chunk_size']),
      CustomRecurrentCell(config['chunk_size'], config['r'], config['num_layers'],
                          config['embed_dim'], config['ffn_drop'], config['num_heads'],
                          config['embed_dim'], config['attn_drop']))
  model.compile(optimizer=keras.optimizers.AdamW(config['learning_rate'],
                                                 weight_decay=config['weight_decay']),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--output', help='Write the results as JSON here.')
  args = parser.parse_args()

  keras.utils.set_random_seed(42)
  size = SEED_CONFIG['image_size']
  images = np.random.rand(args.batch_size, size, size, 3).astype(np.float32)
  labels = np.random.randint(0, 10, size=(args.batch_size, 1))
  model = build_seed_model(SEED_CONFIG)
  results = {'framework': f'keras {keras.__version__} ({keras.backend.backend()})',
             'allocator': allocator.preloaded_allocator(), 'batch_size': args.batch_size,
             'compute_dtype': 'float32'}
  for name, step in (('train', lambda: model.train_on_batch(images, labels)),
                     ('eval', lambda: model.predict_on_batch(images))):
    seconds = median_seconds(step, args.repeats, args.warmup)
    results[name] = {'ms_per_step': 1e3 * seconds, 'images_per_s': args.batch_size / seconds}
    print(f'keras seed {name}: {args.batch_size / seconds:.0f} images/s '
          f'({1e3 * seconds:.1f} ms per step of {args.batch_size})')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
