"""Our recommended TLB recipe for CIFAR-10: the seed's model size with the paper's slow-stream
head and a learned initial state, trained with warmup + cosine AdamW, label smoothing and
decay on kernels only."""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.slow_stream_init = 'learned'
  config.tlb.head = 'slow_mean'
  config.tlb.dropout_rate = 0.1
  config.tlb.attention_dropout_rate = 0.0
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.learning_rate = 1e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 2.0
  config.weight_decay = 0.05
  config.weight_decay_on = 'kernels'
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  return config
