"""The persistent XLA compilation cache: repeated runs skip most of their compile time.

Every library entry of a command that compiles calls `enable(config.compilation_cache_dir)` before
anything else: `train.loop.train_and_evaluate`, `inference.evaluate.evaluate`,
`inference.predict.predict`, `inference.stablehlo.export_model`, `study.ablate.ablate`,
`demo.run_demo`, `models.summary.summarize` (when it compiles) and the `convert` command (it
compiles the initialisation of partial layouts); a sweep's runs train and evaluate through the
first two (tests/test_core_compilation_cache.py checks each).
"""

import os

import jax


def enable(directory: str, min_compile_time_secs: float = 1.0):
  """Caches compiled programs in `directory` ('' disables); $JAX_COMPILATION_CACHE_DIR wins."""
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
