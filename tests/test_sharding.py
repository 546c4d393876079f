"""The same train step of SGD-Net on 1 device and on 8 fake CPU devices (4 data x 2 fsdp)."""
import json
import sys

from tests import train_helpers


def test_sharded_step_equals_the_single_device_step():
  result = train_helpers.run([sys.executable, "tests/sharding_worker.py"], train_helpers.subprocess_env())
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ("loss_relative_diff", "grad_norm_relative_diff", "grads_relative_diff",
              "batch_stats_max_diff"):
    assert report[key] < 1e-5, report
  assert report["sharded_param_leaves"] > 0, report  # fsdp really shards parameters.
