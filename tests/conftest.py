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


# Files with the longest tests (subprocesses, several meshes or processes, resumed runs), longest
# first: under `--dist loadfile --no-loadscope-reorder` (the Makefile) the two CI workers take
# them first and share the short files at the end, so that both finish together.
LONGEST_FILES_FIRST = (
  "test_train.py",
  "test_sharding.py",
  "test_multiprocess.py",
  "test_models.py",
  "test_paths.py",
  "test_launch.py",
  "test_robust_training.py",
  "test_sweep.py",
  "test_pretrained.py",
  "test_lesions.py",
  "test_porting_parity.py",
  "test_inference.py",
  "test_export.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest in order


@pytest.fixture
def x64():
  """64-bit JAX for the test (float64 arrays, `model.dtype='float64'`), restored afterwards."""
  with jax.enable_x64(True):
    yield
