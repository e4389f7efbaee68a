"""The seed's recipe, unchanged, for an apples-to-apples comparison with the Keras example:
embed 64, 4 layers, r 2, chunk 8, patch 4, image 48, dropout 0.2, 1 head, AdamW lr 1e-4 and
wd 1e-4 on all weights (with Keras's epsilon, 1e-7, where Keras adds it), batch 2048, 30 epochs,
no schedule, zero initial state, head on the mean of the last chunk's fast stream, Keras's
initializers as the Keras versions that trained the example's published logs drew them; trained
on the first 40,000 training images of the original files and validated on the other 10,000, as
the example splits them.

The batch of 2048 is trained in micro-batches of 256 (the same update; the memory of one
micro-batch): the whole batch at once needs 9-19 GB on a CPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.variant = 'keras_seed'  # the seed's blocks, initializers and parameter count
  config.tlb.keras_fans = 'conv'     # attention kernels drawn as by the Keras of its logs
  config.adam_eps = 1e-7             # Keras AdamW's epsilon...
  config.adam_eps_placement = 'keras'  # ...where Keras adds it
  config.train_split = 'train[:40000]@official'  # Keras' cifar10.load_data() order
  config.eval_split = 'train[40000:]@official'
  config.microbatch_size = 256
  # All 18 chunks in one loop iteration: 1.15x faster training on a CPU, for twice the resident
  # memory (7.7 GB against 3.6) and 2.5 more minutes of compiling; 1 brings the loop back.
  config.tlb.scan_unroll = 18
  return config
