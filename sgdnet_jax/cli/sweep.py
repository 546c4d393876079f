"""`sweep`: the runs of a config's `get_sweep`, printed, run here or sent to SLURM.

  python -m sgdnet_jax.main sweep --config configs/isic2018.py:sweep=table5 --root R \
      (--print | --local | --slurm [--submit] [--sbatch-args "..."]) [--config.x=y ...]

--print: one line per run (its workdir, then its train and evaluate commands). --local: runs
them here one after another (R/sweep.json holds each run's status; finished runs are skipped,
interrupted ones resume). --slurm: writes R/sweep.sbatch, a job array with one task per run;
--submit also calls sbatch on it (from the repository root). docs/ablations.md has the details.
"""

import argparse
import logging
import shlex

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `sweep`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("sweep", __doc__)
  parser.add_argument("--root", required=True, help="sweep root R: R/<variant>/fold<k>[/seed<s>]")
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--print", action="store_true", help="print each run's commands")
  mode.add_argument("--local", action="store_true", help="run every run here, in order")
  mode.add_argument("--slurm", action="store_true", help="write R/sweep.sbatch (a job array)")
  parser.add_argument("--submit", action="store_true", help="with --slurm: sbatch the script")
  parser.add_argument(
    "--sbatch-args", default="", help='with --submit: options for sbatch, e.g. "--partition=gpu"'
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if (args.submit or args.sbatch_args) and not args.slurm:
    parser.error("--submit and --sbatch-args go with --slurm")
  if args.sbatch_args and not args.submit:
    parser.error("--sbatch-args go with --submit (sbatch's own options win over the script's)")
  if not config_utils.is_sweep(args.config):
    parser.error(f"--config {args.config} selects no sweep; add :sweep=<name>")
  from sgdnet_jax.study import sweep, sweeps

  runs = sweeps.load_sweep(args.config, overrides)

  if args.print:
    print("\n".join(sweep.print_lines(runs, args.root)))
    return 0
  if args.slurm:
    script = sweep.write_slurm(runs, args.root, args.config)
    print(f"wrote {script} ({len(runs)} array tasks)")
    if args.submit:
      print(sweep.submit(script, shlex.split(args.sbatch_args)))
    return 0
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  record = sweep.run_local(runs, args.root, args.config, overrides)
  print(f"sweep {args.config} in {args.root}: {sweep.counts(record)}")
  if sweep.interrupted(record):
    print("interrupted: run the same command again to resume")
    return sweep.INTERRUPTED_EXIT
  return 1 if any(entry["status"] == "failed" for entry in record["runs"]) else 0
