"""`report`: statistics, tables and pictures of an ablation sweep (see `sgdnet_jax.study.report`).

  python -m sgdnet_jax.main report --root R [--baseline cto] [--split test] \
      [--metrics dice,iou,hd95,assd] [--seed 0] [--allow-incomplete]

Reads every `R/<variant>/fold<k>[/seed<s>]/eval/<split>.json` and `<split>_cases.csv`; writes
R/report.md, .csv, .json, .tex, R/report_<metric>.png and R/curves.png. A run without both
(unfinished) is refused, naming it, unless `--allow-incomplete` (its cells are marked incomplete).
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.study import report


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `report`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("report", __doc__, config=False)
  parser.add_argument("--root", required=True, help="the sweep root R")
  parser.add_argument("--baseline", default="cto", help="the variant every other is compared with")
  parser.add_argument("--split", default="test", help="the evaluated split (eval/<split>.json)")
  parser.add_argument(
    "--metrics", default=",".join(report.DEFAULT_METRICS), help="comma-separated metric names"
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
  parser.add_argument(
    "--allow-incomplete",
    action="store_true",
    help="report runs that are unfinished or miss an output as incomplete cells instead of "
    "refusing",
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  metrics = [m for m in args.metrics.split(",") if m]
  runs = report.load_runs(args.root, args.split, metrics, args.allow_incomplete)
  incomplete = report.incomplete_runs(args.root, args.split)
  result = report.compare(runs, args.baseline, args.seed, incomplete=incomplete)
  paths = report.write_tables(args.root, result)
  from sgdnet_jax.study import plots

  paths += plots.write_plots(args.root, runs, result)
  print(f"report of {len(runs)} runs: {', '.join(paths)}")
  return 0
