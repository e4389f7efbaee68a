"""tlb-jax: Temporal Latent Bottleneck (Didolkar et al. 2022) image classifiers in JAX/Flax."""
