"""The values of the config fields that name a choice, shared by the modules that act on them and
by `config_validation`.

This module imports nothing: main.py checks a command line with `config_validation` before it
loads JAX and TensorFlow, which take seconds, so that a bad one is answered at once.
"""

DATASETS = ('cifar10', 'cifar100')
TEST_TIME_AUGMENTATIONS = ('none', 'flip', 'crops_flip')
TOKENIZERS = ('linear', 'conv', 'stem')
# What the TLB's backward pass recomputes (`tlb.REMAT_POLICIES`).
REMATS = ('none', 'dots', 'dots_activations', 'full')
# Tokenizers that halve the resolution log2(patch_size) times.
POWER_OF_TWO_TOKENIZERS = ('conv', 'stem')
# How the 'keras_seed' TLB counts the fan-in and fan-out of its attention kernels for Keras's
# glorot_uniform (`layers.keras_attention_kernel_init`).
KERAS_FANS = ('conv', 'einsum')
# Where Adam's epsilon goes: 'optax' adds it to sqrt(v_hat), 'keras' to sqrt(v) before the bias
# correction (`train_state.scale_by_keras_adam`).
ADAM_EPS_PLACEMENTS = ('optax', 'keras')
