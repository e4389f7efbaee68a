"""The seed's recipe, unchanged, for an apples-to-apples comparison with the Keras example:
embed 64, 4 layers, r 2, chunk 8, patch 4, image 48, dropout 0.2, 1 head, AdamW lr 1e-4 and
wd 1e-4 on all weights (with Keras's epsilon, 1e-7, where Keras adds it), batch 2048, 30 epochs,
no schedule, zero initial state, head on the mean of the last chunk's fast stream."""

from configs import default


def get_config():
  config = default.get_config()
  config.tlb.variant = 'keras_seed'  # the seed's blocks, initializers and parameter count
  config.adam_eps = 1e-7             # Keras AdamW's epsilon...
  config.adam_eps_placement = 'keras'  # ...where Keras adds it
  return config
