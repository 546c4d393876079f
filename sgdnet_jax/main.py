"""Command-line entry point: `python -m sgdnet_jax.main <command> [--debug] ...`.

Every command lives in `sgdnet_jax/cli/<command>.py` and is imported only when it runs, so that
`config` does not pay for JAX and `prepare` does not pay for the model. A mistake the user can
fix (`errors.UserError`, a missing or unwritable path) prints one line and exits 2; `--debug`
shows its traceback. Ctrl-C that reaches here prints one line and exits 130. Anything else is a
bug and keeps its traceback.
"""

import importlib
import sys

from sgdnet_jax import errors

COMMANDS = (
  "ablate",
  "config",
  "convert",
  "demo",
  "evaluate",
  "export",
  "export-torch",
  "predict",
  "prepare",
  "report",
  "summary",
  "sweep",
  "train",
)
PATH_ERRORS = (
  FileNotFoundError,
  FileExistsError,
  PermissionError,
  IsADirectoryError,
  NotADirectoryError,
)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [arg for arg in argv if arg != "--debug"]
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    print(
      f"usage: python -m sgdnet_jax.main <command> [--debug] [args]\n"
      f"commands: {', '.join(COMMANDS)}",
      file=sys.stderr,
    )
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  command = importlib.import_module(f"sgdnet_jax.cli.{argv[0].replace('-', '_')}")
  try:
    return command.main(argv[1:]) or 0
  except (errors.UserError, *PATH_ERRORS) as error:
    if debug:
      raise
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"error: interrupted; {argv[0]} stopped without finishing", file=sys.stderr)
    return 130


def _one_line(error: BaseException) -> str:
  if isinstance(error, OSError) and error.filename is not None:
    return f"{error.strerror or type(error).__name__}: {error.filename}"
  return " ".join(str(error).split())


if __name__ == "__main__":
  sys.exit(main())
