"""`train`: python -m sgdnet_jax.main train --config configs/<exp>.py[:args] --workdir W [--config.x=y]."""

import argparse
import json
import logging

from sgdnet_jax import config_utils


def main(argv) -> int:
  parser = argparse.ArgumentParser(prog="sgdnet_jax.main train", description=__doc__)
  parser.add_argument("--config", required=True, help="configs/<experiment>.py[:key=value,...]")
  parser.add_argument(
    "--workdir", required=True, help="checkpoints, metrics and config.json go here"
  )
  args, overrides = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax.train import loop  # After argument errors, which should not wait for JAX.

  summary = loop.train_and_evaluate(config, args.workdir)
  print(json.dumps(summary))
  return 0
