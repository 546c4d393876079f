"""`evaluate`: the paper's metrics on a split (see `sgdnet_jax.inference.evaluate`)."""

import argparse
import json

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils

RESOLUTIONS = ("train", "native")


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `evaluate`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("evaluate", __doc__)
  parser.add_argument(
    "--workdir",
    required=True,
    nargs="+",
    help="training workdir (or a `convert` output); several: their ensemble (needs --out)",
  )
  parser.add_argument("--split", default="test", help="train, val, test or a data.extra_eval name")
  parser.add_argument("--resolution", default="train", choices=RESOLUTIONS)
  parser.add_argument("--out", default=None, help="results folder (default: <workdir>/eval)")
  parser.add_argument(
    "--tta", default="none", choices=("none", "flip", "flip_rot"), help="test-time augmentation"
  )
  parser.add_argument("--post", default="", help="post-processing, e.g. largest,fill_holes")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax.inference import evaluate

  result = evaluate.evaluate(
    config,
    args.workdir,
    args.split,
    args.resolution,
    out_dir=args.out,
    tta=args.tta,
    post=args.post,
  )
  numbers = {k: v for k, v in result.items() if isinstance(v, float)}
  print(json.dumps({"split": result["split"], "n_total": result["n_total"], **numbers}))
  return 0
