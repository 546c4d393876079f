"""Test setup: CPU only and a persistent compilation cache shared with test subprocesses.

Numeric tolerances are derived from the dtype a result is computed in, never tuned to the
machine at hand: a result that reduces n terms is within n * eps(dtype) of the exact value,
relative to the magnitude of those terms (`tests.tolerances.rounding`), times the condition of
what follows (for example the cancellation in 1 - ratio). A float32 result is compared with a
float64 expectation at that float32 bound; where float32 cannot decide (non-smooth operators at
near-ties, long chains of layers), both sides compute in float64 (`model.dtype='float64'`,
`jax.enable_x64`) and agree to 1e-9 or better.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)

import jax
import pytest

from sgdnet_jax import compilation_cache

compilation_cache.enable("", min_compile_time_secs=0.5)
jax.config.update("jax_default_prng_impl", "rbg")  # As training does: much faster init compiles.


@pytest.fixture
def x64():
  """64-bit JAX for the test (float64 arrays, `model.dtype='float64'`), restored afterwards."""
  with jax.enable_x64(True):
    yield
