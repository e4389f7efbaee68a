"""Model definitions and the factory that builds one from a config."""

import flax.linen as nn
import ml_collections

from tlb_jax.models.layers import resolve_dtype
from tlb_jax.models.perceiver import Perceiver
from tlb_jax.models.tlb import TLB
from tlb_jax.models.vit import ViT

MODELS = {'tlb': TLB, 'perceiver': Perceiver, 'vit': ViT}


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds `config.model` with the hyper-parameters in `config[config.model]`."""
  if config.model not in MODELS:
    raise ValueError(f'config.model must be one of {sorted(MODELS)}, got {config.model!r}')
  kwargs = config[config.model].to_dict()
  return MODELS[config.model](num_classes=num_classes, dtype=resolve_dtype(config.dtype), **kwargs)
