"""Numeric tolerances derived from the dtype a test computes in (see tests/conftest.py)."""

import ml_dtypes
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
# Two float64 computations of the same function through a network (reductions of up to ~1e5
# terms, a few orders of amplification by normalisations) agree far below this, relative to the
# results' scale; a real fault (wrong axis, wrong statistics, a missing term) shows as 1e-3 or more.
FLOAT64_AGREEMENT = 1e-9


def rounding(dtype, terms: int = 1, magnitude: float = 1.0) -> float:
  """Bound on the rounding error of `terms` accumulated values of total size `magnitude`.

  Summing n values in any order changes the sum by at most (n - 1) unit roundoffs (eps / 2) of
  the sum of their magnitudes; n * eps also covers the few roundings of each value itself.
  """
  return terms * float(ml_dtypes.finfo(dtype).eps) * magnitude  # bfloat16 too
