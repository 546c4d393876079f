"""`demo [--config configs/demo.py] [--workdir runs/demo] [--config.x=y]`: the main job, end to end.

Generates and prepares the embedded synthetic data, trains, evaluates and draws predictions.
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `demo`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("demo", __doc__, config=False)
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", default="runs/demo")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax import demo

  demo.run_demo(config, args.workdir)
  return 0
