"""Command-line front ends: one module per command, `main(argv) -> exit code`.

Each module only parses arguments and calls a library function (which never sees argparse);
`build_parser()` returns its parser without running anything (tests/test_documented_commands.py
checks every command line of the docs against it), and `main` parses with it.
`sgdnet_jax.main` dispatches to them and turns `errors.UserError` into a one-line message.
Heavy imports (JAX, the data stack) happen inside `main`, after the arguments are checked.
"""

import argparse


def parser(command: str, description: str, config: bool = True) -> argparse.ArgumentParser:
  """An argument parser for `command`, with `--config` when the command reads an experiment."""
  result = argparse.ArgumentParser(
    prog=f"python -m sgdnet_jax.main {command}", description=description
  )
  if config:
    result.add_argument("--config", required=True, help="configs/<experiment>.py[:key=value,...]")
  return result
