"""tlb-jax: Temporal Latent Bottleneck (Didolkar et al. 2022) image classifiers in JAX/Flax.

`main.py`'s modes, one module each: train (`train`), eval (`evaluate_run`), predict
(`predict`), plots (`run_plots`, also drawn at the end of training), export (`export`) and
compare (`compare`); all but train rebuild the run with `restore`.
"""
