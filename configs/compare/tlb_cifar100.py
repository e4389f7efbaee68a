"""The TLB of `configs/cifar100.py` (the CIFAR-10 recipe with a 100-class head) for one hour
of a 2-core x86 CPU: the equal-time comparison with `vit_cifar100.py` and
`perceiver_cifar100.py` on CIFAR-100.

The comparison of `tlb_cifar10.py` on CIFAR-100: the first 40,000 training images, validation
after each epoch on the other 10,000, the test split scored once at the end, the same shared
recipe; only the model section and the number of epochs differ between the three.
"""

from configs import default

# `TLB_JAX_CPU_DEVICES=1 python -m tlb_jax.benchmark --config=configs/compare/tlb_cifar100.py
# --num_classes=100 --noflops --repeats=5 --loop_steps=150` on a 2-core x86 CPU (Intel Xeon),
# idle, tcmalloc, one host device: images/s of the training loop, the mean of two passes over the
# six compare configs (the second in reverse order).
LOOP_IMAGES_PER_S = 485


def get_config():
  config = default.get_config()
  config.tlb.update(
      tokenizer='stem', chunk_size=16, num_heads=4, dropout_rate=0.1, attention_dropout_rate=0.0,
      slow_stream_init='learned', head='slow_mean',
      scan_unroll=4)  # all 4 chunks in one loop iteration, as in cifar10.py

  config.dataset = 'cifar100'
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
