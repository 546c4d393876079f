"""`train --config configs/<exp>.py[:args] --workdir W [--config.x=y ...]`: train, resuming W.

SIGTERM or Ctrl-C save a checkpoint after the current step (every process of a run at the same
step) and exit 75, "stopped, resume me", on which the launchers restart the run (a second
Ctrl-C aborts at once, keeping the last saved checkpoint); the same command resumes. A finished
run exits 0.
"""

import argparse
import json
import logging

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `train`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("train", __doc__)
  parser.add_argument(
    "--workdir", required=True, help="checkpoints, metrics and config.json go here"
  )
  parser.add_argument(
    "--reset-optimizer",
    action="store_true",
    help="resume checkpoints whose optimizer state does not fit the config (optimizer.grad_clip "
    "or weight_decay switched on or off, another prng_impl): keep the weights, BN statistics "
    "and step, start a fresh optimizer state",
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  from sgdnet_jax.train import loop, preemption

  outcome = loop.train_and_evaluate(config, args.workdir, args.reset_optimizer)
  print(json.dumps(outcome))
  if outcome["stopped_by"]:
    if outcome["step"] == outcome["start_step"]:
      saved = "before its first step, nothing new to save"
    else:
      saved = "with a checkpoint"
    print(
      f"stopped by {outcome['stopped_by']} at step {outcome['step']} of "
      f"{outcome['total_steps']} {saved}; run the same command again to resume (exit status "
      f"{preemption.RESUME_EXIT}: the launchers in launch/ restart the run on it)",
      flush=True,
    )
    return preemption.RESUME_EXIT
  return 0
