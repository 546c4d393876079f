"""The train step on 8 fake CPU devices in every layout computes what it computes on 1 device."""

import json
import sys

import numpy as np

from tests import train_helpers

# float64 unit roundoff is 1.1e-16; the reductions of this network (at most 8 x 32 x 32 terms)
# and BatchNorm's amplification over 1x1 maps keep layout differences far below this, while a
# real fault (statistics over the wrong axis, a per-shard normalisation, a missing all-reduce)
# changes the results by 1e-3 or more.
FLOAT64_BOUND = 1e-9
# Bias gradients of convolutions followed by BatchNorm: zero up to rounding (BatchNorm removes a
# constant shift), so their differences are measured against the largest gradient as well.
ZERO_GRADIENT_LEAVES = [
  "params/head/conv_p1_0/bias",
  "params/head/conv_p2_0/bias",
]


def test_sharded_step_equals_the_single_device_step():
  result = train_helpers.run(
    [sys.executable, "tests/sharding_worker.py"], train_helpers.subprocess_env()
  )
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert sorted(report["float64"]) == ["1x8", "4x2", "8x1"], report
  for mesh, diffs in report["float64"].items():
    assert diffs["loss_relative_diff"] <= FLOAT64_BOUND, (mesh, diffs)
    assert diffs["grad_max_diff"] <= FLOAT64_BOUND, (mesh, diffs)
    assert diffs["zero_gradient_leaves"] == ZERO_GRADIENT_LEAVES, (mesh, diffs)
    assert diffs["zero_gradient_max_diff"] <= FLOAT64_BOUND, (mesh, diffs)
    assert diffs["batch_stats_max_diff"] <= FLOAT64_BOUND, (mesh, diffs)
  assert report["float64"]["1x8"]["sharded_param_leaves"] > 0, report  # fsdp shards parameters.
  # float32: the loss is a mean of n = batch x height x width positive per-pixel terms; summing
  # them in another order changes the sum by at most (n - 1) unit roundoffs relative, and n * eps
  # (twice that) leaves room for the rounding of the terms themselves.
  float32_bound = report["loss_terms"] * np.finfo(np.float32).eps
  assert report["float32"]["loss_relative_diff"] <= float32_bound, report
