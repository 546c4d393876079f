"""`summary`: parameter counts, BN statistics, constants, GMACs (`sgdnet_jax.models.summary`)."""

import argparse
import json

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `summary`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("summary", __doc__)
  parser.add_argument(
    "--image-size", type=int, default=None, help="default: config.data.image_size, else 256"
  )
  parser.add_argument("--no-compile", action="store_true", help="skip the executed-FLOPs compile")
  parser.add_argument("--json", action="store_true", help="end with one JSON line")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax import models
  from sgdnet_jax.models import summary

  size = args.image_size or config.data.image_size or 256
  what = f"--image-size {size}" if args.image_size else f"data.image_size={size}"
  models.check_input_size(config.model, size, what)
  result = summary.summarize(config, size, compile_flops=not args.no_compile)
  summary.print_table(result)
  if args.json:
    print(json.dumps(result))
  return 0
