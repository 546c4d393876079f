"""Test setup: CPU only and a persistent compilation cache shared with test subprocesses."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)

import jax

from sgdnet_jax import compilation_cache

compilation_cache.enable("", min_compile_time_secs=0.5)
jax.config.update("jax_default_prng_impl", "rbg")  # As training does: much faster init compiles.
