"""The same train step on 1 device and on 8 fake CPU devices (4 data x 2 fsdp)."""

import json
import sys

from tests import train_helpers


def test_sharded_step_equals_the_single_device_step():
  result = train_helpers.run(
    [sys.executable, "tests/sharding_worker.py"], train_helpers.subprocess_env()
  )
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["loss_relative_diff"] < 1e-5, report
  # Gradients pass through BatchNorms over 1x1 and 2x2 maps in this 32-px network, which amplify
  # reduction-order rounding (measured: gradient norm 7e-5, largest gradient difference 6e-4 of
  # the largest gradient).
  for key in ("grad_norm_relative_diff", "grads_relative_diff", "batch_stats_max_diff"):
    assert report[key] < 2e-3, report
  assert report["sharded_param_leaves"] > 0, report  # fsdp really shards parameters.
