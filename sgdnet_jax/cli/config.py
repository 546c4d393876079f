"""`config --config configs/<exp>.py[:args] [--config.x=y ...]`: print the resolved config."""

import json

from sgdnet_jax import cli, config_utils


def main(argv) -> int:
  parser = cli.parser("config", __doc__)
  parser.add_argument("--json", action="store_true", help="JSON (as written to config.json)")
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  print(
    json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) if args.json else config
  )
  return 0
