"""`report`: statistics, tables and pictures of an ablation sweep (see `sgdnet_jax.study.report`).

  python -m sgdnet_jax.main report --root R [--baseline cto] [--split test] \
      [--metrics dice,iou,hd95,assd] [--seed 0] [--allow-incomplete] \
      [--paper-tables [--published]]

Reads every `R/<variant>/fold<k>[/seed<s>]/eval/<split>.json` and `<split>_cases.csv`; writes
R/report.md, .csv, .json, .tex, R/report_<metric>.png and R/curves.png. A run without both
(unfinished) is refused, naming it, unless `--allow-incomplete` (its cells are marked incomplete).
The default metrics add `pq` where the evaluations have it (CoNIC). `--paper-tables` also writes
R/paper_tables.md and .tex in the paper's layouts (Tables 1-5, `sgdnet_jax.study.paper_tables`);
`--published` puts the paper's numbers beside the measured ones.
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.study import paper_tables, report


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `report`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("report", __doc__, config=False)
  parser.add_argument("--root", required=True, help="the sweep root R")
  parser.add_argument("--baseline", default="cto", help="the variant every other is compared with")
  parser.add_argument("--split", default="test", help="the evaluated split (eval/<split>.json)")
  parser.add_argument(
    "--metrics",
    default="",
    help=f"comma-separated metric names (default: {','.join(report.DEFAULT_METRICS)}, and pq"
    " where the evaluations have it)",
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap")
  parser.add_argument(
    "--allow-incomplete",
    action="store_true",
    help="report runs that are unfinished or miss an output as incomplete cells instead of "
    "refusing",
  )
  parser.add_argument(
    "--paper-tables",
    action="store_true",
    help="also write R/paper_tables.md and .tex in the layouts of the paper's Tables 1-5",
  )
  parser.add_argument(
    "--published",
    action="store_true",
    help="with --paper-tables: the paper's published numbers beside the measured ones",
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.published and not args.paper_tables:
    parser.error("--published needs --paper-tables")
  metrics = [m for m in args.metrics.split(",") if m] or paper_tables.default_metrics(
    args.root, args.split
  )
  runs = report.load_runs(args.root, args.split, metrics, args.allow_incomplete)
  incomplete = report.incomplete_runs(args.root, args.split)
  result = report.compare(runs, args.baseline, args.seed, incomplete=incomplete)
  tables = (
    paper_tables.paper_tables(runs, result, args.seed, show_published=args.published)
    if args.paper_tables
    else []
  )
  paths = report.write_tables(args.root, result)
  if args.paper_tables:
    paths += paper_tables.write(args.root, tables, result)
  from sgdnet_jax.study import plots

  paths += plots.write_plots(args.root, runs, result)
  print(f"report of {len(runs)} runs: {', '.join(paths)}")
  return 0
