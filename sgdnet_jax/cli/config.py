"""`config --config configs/<exp>.py[:args] [--config.x=y ...]`: print the resolved config.

With `:sweep=<name>` it prints the config of every run of that sweep, each headed by its workdir
below the sweep root and the command-line arguments that rebuild it.
"""

import argparse
import json

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils
from sgdnet_jax.study import sweeps


def _text(config, as_json: bool) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) if as_json else config


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `config`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("config", __doc__)
  parser.add_argument("--json", action="store_true", help="JSON (as written to config.json)")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if not config_utils.is_sweep(args.config):
    print(_text(config_utils.load_config(args.config, overrides), args.json))
    return 0
  runs = sweeps.load_sweep(args.config, overrides)
  if args.json:
    by_name = {run.name: run.config.to_dict() for run in runs}
    print(json.dumps(by_name, indent=2, sort_keys=True, default=str))
    return 0
  for run in runs:
    print(f"# {run.name}: --config {run.spec} {' '.join(run.overrides)}".rstrip())
    print(run.config)
  return 0
