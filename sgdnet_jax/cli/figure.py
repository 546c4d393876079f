"""`figure`: the paper's Figure 2 for two trained models (see `sgdnet_jax.inference.figure`).

  python -m sgdnet_jax.main figure --config configs/<exp>.py:variant=sgdnet --workdir A \
      --config-b configs/<exp>.py:variant=cto --workdir-b B [--split test] \
      [--cases ID,ID | --limit 2] [--guidance l2|pca] [--channels] [--out A/figure] [--overwrite]

Model A is the one whose structural guidance is drawn (SGD-Net), model B the one whose boundary
map is drawn (CTO); `--config.x=y` overrides apply to both configs.
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `figure`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("figure", __doc__)
  parser.add_argument("--workdir", required=True, help="model A: a training workdir")
  parser.add_argument("--config-b", required=True, help="model B's configs/<experiment>.py[:...]")
  parser.add_argument("--workdir-b", required=True, help="model B: a training workdir")
  parser.add_argument("--split", default="test", help="the split whose cases are drawn")
  parser.add_argument("--cases", default="", help="comma-separated case ids of the split")
  parser.add_argument("--limit", type=int, default=2, help="without --cases: the first N cases")
  parser.add_argument(
    "--guidance", default="l2", help="A's guidance as one channel: l2 (norm) or pca (1st component)"
  )
  parser.add_argument(
    "--channels", action="store_true", help="also draw each guidance channel (<case>_guidance.png)"
  )
  parser.add_argument("--out", default="", help="default: <workdir>/figure")
  parser.add_argument("--overwrite", action="store_true", help="draw an existing figure again")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config_a = config_utils.load_config(args.config, overrides)
  config_b = config_utils.load_config(args.config_b, overrides)
  from sgdnet_jax.core import paths
  from sgdnet_jax.inference import figure

  result = figure.figure(
    config_a,
    config_b,
    args.workdir,
    args.workdir_b,
    args.out or paths.as_path(args.workdir) / "figure",
    args.split,
    [c for c in args.cases.split(",") if c],
    args.limit,
    guidance=args.guidance,
    channels=args.channels,
    overwrite=args.overwrite,
  )
  print(f"figure of {len(result.cases)} cases: {result.out / 'figure.png'} and .pdf")
  return 0
