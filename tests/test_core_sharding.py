"""The train step on 8 fake CPU devices in every layout computes what it computes on 1 device."""

import json
import sys

import numpy as np

from tests import tolerances, train_helpers

# float64 unit roundoff is 1.1e-16; the reductions of this network (at most 8 x 32 x 32 terms)
# and BatchNorm's amplification over 1x1 maps keep layout differences far below this, while a
# real fault (statistics over the wrong axis, a per-shard normalisation, a missing all-reduce)
# changes the results by 1e-3 or more.
FLOAT64_BOUND = tolerances.FLOAT64_AGREEMENT
# Gradients that are zero up to rounding, so their differences are measured against the largest
# gradient as well: biases of convolutions followed by BatchNorm (directly or through a 1x1
# convolution; BatchNorm removes a constant shift), the key bias of the patch attention (a
# constant per query, which the softmax removes) and the position attention's convolutions (its
# output is scaled by alpha, 0 at initialisation).
ZERO_GRADIENT_LEAVES = [
  "dm1/predict3_0/bias",
  "dm1/predict3_3/bias",
  "dm2/predict3_0/bias",
  "dm2/predict3_3/bias",
  "dm3/predict3_0/bias",
  "dm3/predict3_3/bias",
  "head/out_1/bias",
  "head/pam/conv_b/bias",
  "head/pam/conv_b/kernel",
  "head/pam/conv_c/bias",
  "head/pam/conv_c/kernel",
  "head/pam/conv_d/bias",
  "head/pam/conv_d/kernel",
  "multi_trans/t/attention/key_embedding/bias",
  "multi_trans/t/attention/output_linear_0/bias",
  "multi_trans/t/feed_forward/conv_0/bias",
  "multi_trans/t/feed_forward/conv_3/bias",
  "reduce1/conv/bias",
  "reduce2/conv/bias",
  "reduce3/conv/bias",
  "reduce4/conv/bias",
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
  # float32, the train-mode loss only: a mean of n = batch x height x width positive per-pixel
  # terms; summing them in another order changes the sum by at most (n - 1) unit roundoffs
  # relative, and n * eps (twice that) leaves room for the rounding of the terms themselves.
  float32_bound = tolerances.rounding(np.float32, report["float32"]["loss_terms"])
  assert report["float32"]["loss_relative_diff"] <= float32_bound, report
