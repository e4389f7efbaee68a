"""The seed's Perceiver on CIFAR-100 (Keras "Image classification with Perceiver"; the seed
reports 51.62% top-1 / 78.75% top-5 on the test set after 35 epochs).

Model as in the seed: 32x32 images resized to 64x64, 2x2 patches -> a byte array of 1,024
tokens with learned position embeddings; a 256 x 256 latent array; one single-head
cross-attention block and a tower of 4 self-attention blocks with 8 heads, run 2 iterations
with shared weights; MLPs of width 256 (`ffn_units = [256, 256]`), dropout 0.2 after MLPs and
0.1 on attention. Training as in the seed: AdamW lr 1e-3 and wd 1e-4 on all weights, batch 64,
35 epochs, the last 10% of the training set as validation (Keras `validation_split=0.1`).

Every attention has 256 features per head (`head_dim=256`, the seed's Keras
`MultiHeadAttention(key_dim=projection_dim)`), so the 8-head tower attends in 2,048 features.
Differences from the Keras code (the shared blocks of tlb_jax.models.layers): pre-LN blocks
with an output projection in every attention; a LayerNorm'd mean + Dense head instead of
Dense(256, GELU) + Dense; the seed's RandomZoom(0.2) becomes a random 64x64 crop of the image
resized to 72x72; no ReduceLROnPlateau / EarlyStopping (constant learning rate).
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  del config['tlb']
  config.model = 'perceiver'
  config.perceiver = ml_collections.ConfigDict(dict(
      patch_size=2,
      embed_dim=256,             # seed projection_dim
      num_latents=256,           # seed latent_dim
      num_layers=4,              # seed num_transformer_blocks
      num_iterations=2,          # cross-attention + tower repeats, weights shared
      num_heads=8,
      cross_attention_heads=1,
      head_dim=256,              # seed key_dim = projection_dim in every head
      mlp_ratio=1,               # seed ffn_units = [projection_dim, projection_dim]
      dropout_rate=0.2,
      attention_dropout_rate=0.1,
  ))
  config.dataset = 'cifar100'
  config.train_split = 'train[:45000]'
  config.eval_split = 'train[45000:]'
  config.resize_size = 72
  config.image_size = 64
  config.batch_size = 64
  config.eval_batch_size = 500
  config.num_epochs = 35
  config.learning_rate = 1e-3
  config.lr_schedule = 'constant'
  config.weight_decay = 1e-4
  config.weight_decay_on = 'all'
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  return config
