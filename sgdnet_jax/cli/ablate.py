"""`ablate`: the trained model with components switched off, against itself intact.

  python -m sgdnet_jax.main ablate --config C --workdir W [--split test] \
      [--knockouts guidance=zero,guidance=shuffle,sgdc.dynamic=off,sgdc.local=off,sgdc=identity]

Each comma-separated item is one evaluation with knockouts ('a+b' composes two); the default is
every knockout that acts on the variant. Writes W/ablate/<split>.json, per-case CSVs under
W/ablate/<knockout>/fold<k>/eval/ and the report W/ablate/<split>/report.md (docs/ablations.md).
"""

import argparse
import json

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.study import report


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `ablate`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("ablate", __doc__)
  parser.add_argument("--workdir", required=True, help="training workdir (or a `convert` output)")
  parser.add_argument("--split", default="test", help="train, val, test or a data.extra_eval name")
  parser.add_argument(
    "--knockouts", default="", help="comma-separated knockouts (default: all that act)"
  )
  parser.add_argument("--lesions", help=argparse.SUPPRESS)  # the former name, refused in main
  parser.add_argument("--resolution", default="train", choices=("train", "native"))
  parser.add_argument(
    "--metrics", default=",".join(report.DEFAULT_METRICS), help="comma-separated metric names"
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if args.lesions is not None:
    raise errors.UserError(
      f"--lesions is now --knockouts; run ablate with --knockouts {args.lesions}"
      " (docs/ablations.md lists the knockouts)"
    )
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax.study import ablate

  outcome = ablate.ablate(
    config,
    args.workdir,
    args.split,
    ablate.parse_knockouts(args.knockouts) or None,
    args.resolution,
    [m for m in args.metrics.split(",") if m],
    args.seed,
  )
  print(json.dumps({"report": outcome["report"], "values": outcome["values"]}, default=str))
  return 0
