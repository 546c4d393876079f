"""Command-line entry point: `python -m sgdnet_jax.main <command> ...`.

Each command lives in its own module and is imported only when it runs, so that
`summary` does not pay for the data stack and `prepare` does not pay for the model.
"""

import importlib
import sys

# command name -> "module:function"; the function takes argv (list of str) and returns an exit code.
COMMANDS = {
  "summary": "sgdnet_jax.summary:main",
  "train": "sgdnet_jax.train.cli:main",
  "evaluate": "sgdnet_jax.evaluate:main",
  "predict": "sgdnet_jax.predict:main",
  "demo": "sgdnet_jax.demo:main",
  "prepare": "sgdnet_jax.data.prepare:main",
  "convert": "sgdnet_jax.porting.cli:convert_main",
  "export-torch": "sgdnet_jax.porting.cli:export_main",
}


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    names = ", ".join(sorted(COMMANDS))
    print(f"usage: python -m sgdnet_jax.main <command> [args]\ncommands: {names}", file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  module_name, func_name = COMMANDS[argv[0]].split(":")
  return getattr(importlib.import_module(module_name), func_name)(argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main())
