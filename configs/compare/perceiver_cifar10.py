"""A Perceiver of the TLB's size for one hour of a 2-core x86 CPU: the equal-time comparison on
CIFAR-10 (see `tlb_cifar10.py` for the shared recipe).

The Keras example's Perceiver sized down from its 9.7M parameters: the TLB's tokens (the
stride-2 convolutional stem over 4x4 patches: a byte array of 64 tokens in place of the
example's 1,024 linear 2x2 patches), width 64 in place of 256, a latent array of 32 in place of
256, one single-head cross-attention and a tower of 6 four-head self-attention blocks with the
TLB's MLP (the example: 4 blocks of 8 heads, MLP ratio 1, 256 features per head), run twice with
shared weights as in the example: 380,618 parameters against the TLB's 379,338.
"""

from configs import default

# `TLB_JAX_CPU_DEVICES=1 python -m tlb_jax.benchmark --config=configs/compare/perceiver_cifar10.py
# --num_classes=10 --noflops --repeats=5 --loop_steps=150` on a 2-core x86 CPU (Intel Xeon), idle,
# tcmalloc, one host device: images/s of the training loop, the mean of two passes over the six
# compare configs (the second in reverse order).
LOOP_IMAGES_PER_S = 425


def get_config():
  config = default.get_config()
  config.model = 'perceiver'
  config.perceiver.update(
      patch_size=4, tokenizer='stem', embed_dim=64, num_latents=32, num_layers=6,
      num_iterations=2, num_heads=4, cross_attention_heads=1, head_dim=None, mlp_ratio=4,
      dropout_rate=0.1, attention_dropout_rate=0.0)

  config.train_split = 'train[:40000]'
  config.eval_split = 'train[40000:]'
  config.test_split = 'test'
  config.image_size = 32
  config.resize_size = 32
  config.crop_padding = 4
  config.test_time_augmentation = 'crops_flip'

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = round(3600 * LOOP_IMAGES_PER_S / 40_000)
  config.learning_rate = 1e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 2.0
  config.weight_decay = 0.05
  config.weight_decay_on = 'kernels'
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  return config
