"""The Perceiver of the Keras example "Image classification with Perceiver" with its recipe, on
CIFAR-100: 32x32 images resized to 64x64 (1,024 patch tokens of 2x2), a random 64x64 crop of a
72x72 resize in place of the example's RandomZoom, AdamW lr 1e-3 and weight decay 1e-4 on all
weights, batch 64, 35 epochs, the last 10% of the training split for validation (Keras
`validation_split=0.1`). The model is `configs/default.py`'s perceiver section."""

from configs import default


def get_config():
  config = default.get_config()
  config.model = 'perceiver'
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
