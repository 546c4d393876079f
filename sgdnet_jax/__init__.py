"""sgdnet_jax: SGD-Net (Structure-Guided Dynamic Convolution) and its baselines in JAX/Flax."""
