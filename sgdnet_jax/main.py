"""Command-line entry point: `python -m sgdnet_jax.main <command> [--debug] [--verbose] ...`.

Every command lives in `sgdnet_jax/cli/<command>.py` and is imported only when it runs, so that
`config` does not pay for JAX and `prepare` does not pay for the model. A mistake the user can
fix (`errors.UserError`, a missing or unwritable path) prints one line and exits 2 (an error
with a `summary`, such as porting's listing of every key, prints its summary); `--debug` shows
its traceback. Ctrl-C that reaches here prints one line and exits 130. Anything else is a bug
and keeps its traceback.

The libraries' own chatter is off unless `--verbose`: TensorFlow's C++ INFO lines and its
oneDNN notice (TensorFlow only writes TensorBoard events here; its oneDNN kernels compute
nothing of ours), and the INFO records of absl (Orbax, TFDS, clu), JAX and TensorFlow's Python
loggers. Their warnings and errors, and this project's own INFO lines, still show. `--verbose`
shows every INFO record, of any command.
"""

import errno
import importlib
import logging
import os
import signal
import sys

from sgdnet_jax.core import errors

# Each command and what it does (the first line of `--help`); its module is sgdnet_jax.cli.<name>
# with '-' as '_'.
COMMANDS = {
  "ablate": "evaluate a trained model with components switched off, against itself intact",
  "config": "print the resolved config of an experiment (or of every run of a sweep)",
  "convert": "a PyTorch checkpoint -> a variables directory (upstream layouts)",
  "demo": "the main job end to end on embedded synthetic data: train, evaluate, predict",
  "evaluate": "the paper's metrics of a trained model on a split",
  "export": "StableHLO export: a trained model as one portable jax.export file and a model card",
  "export-torch": "PyTorch export: a variables directory -> a state dict in an upstream layout",
  "figure": "the paper's Figure 2: two models' masks, guidance and boundary maps side by side",
  "predict": "masks and pictures for image files or a split",
  "prepare": "check a downloaded dataset and write the prepared copy training reads",
  "report": "statistics, tables and pictures of an ablation sweep",
  "summary": "parameter counts, BatchNorm statistics, constants and GMACs of a model",
  "sweep": "the runs of a config's sweep: printed, run here or sent to SLURM",
  "train": "train a model in a workdir, resuming it when it holds a checkpoint",
}
GLOBAL_FLAGS = {
  "--debug": "show the traceback of a user error too",
  "--verbose": "show the libraries' INFO logs (TensorFlow, oneDNN, absl/Orbax, JAX)",
}
PATH_ERRORS = (
  FileNotFoundError,
  FileExistsError,
  PermissionError,
  IsADirectoryError,
  NotADirectoryError,
)
# Errors of the file system a user can fix where any command writes: no space (or quota), a
# read-only file system, no permission. One line naming the path, like PATH_ERRORS.
FILESYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# Python loggers whose INFO records are the libraries' chatter (Orbax, TFDS and clu log
# through absl).
LIBRARY_LOGGERS = ("absl", "jax", "tensorflow")
# Environment read by TensorFlow when it is imported: C++ logs from WARNING up, and oneDNN
# kernels off (which also drops the notice that they are on).
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}


def usage() -> str:
  """What `--help` prints: the synopsis, each command with its description, the flags."""
  width = max(map(len, COMMANDS))
  lines = [
    "usage: python -m sgdnet_jax.main <command> [--debug] [--verbose] [args]",
    "",
    "commands:",
    *(f"  {name:<{width}}  {description}" for name, description in COMMANDS.items()),
    "",
    "flags (anywhere on the line):",
    *(f"  {flag:<{width}}  {description}" for flag, description in GLOBAL_FLAGS.items()),
    "",
    "python -m sgdnet_jax.main <command> --help describes a command's arguments.",
  ]
  return "\n".join(lines)


def configure_logs(verbose: bool):
  """Silences the libraries' INFO logs unless `verbose` (see the module docstring).

  Runs before any command module is imported: TensorFlow reads its environment once, when it is
  first imported. A variable the user set is kept.
  """
  if not verbose:
    for name, value in QUIET_TENSORFLOW.items():
      os.environ.setdefault(name, value)
  # absl creates its own logger class for "absl" when imported: import it before setting levels.
  from absl import logging as absl_logging  # noqa: F401  Light: no JAX.

  for name in LIBRARY_LOGGERS:  # NOTSET: the level of the root logger, as without this function.
    logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
  if verbose:  # Every command shows INFO records, not only those that configure logging.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug, verbose = "--debug" in argv, "--verbose" in argv
  argv = [arg for arg in argv if arg not in GLOBAL_FLAGS]
  if argv and argv[0] in ("-h", "--help"):
    print(usage())
    return 0
  if not argv:
    print(usage(), file=sys.stderr)
    return 2
  if argv[0] not in COMMANDS:
    print(
      f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} "
      f"(python -m sgdnet_jax.main --help describes them)",
      file=sys.stderr,
    )
    return 2
  configure_logs(verbose)
  command = importlib.import_module(f"sgdnet_jax.cli.{argv[0].replace('-', '_')}")
  try:
    return command.main(argv[1:]) or 0
  except (errors.UserError, *PATH_ERRORS) as error:
    if debug:
      raise
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return 2
  except OSError as error:
    if debug or error.errno not in FILESYSTEM_ERRNOS:
      raise
    print(f"error: {_one_line(error)}; {argv[0]} stopped, free space or give a path it may write",
          file=sys.stderr)  # fmt: skip
    return 2
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"error: interrupted; {argv[0]} stopped without finishing", file=sys.stderr)
    return 130


def _one_line(error: BaseException) -> str:
  if isinstance(error, OSError) and (error.filename is not None or error.strerror):
    return f"{error.strerror or type(error).__name__}: {error.filename or '(path not given)'}"
  return " ".join(str(getattr(error, "summary", None) or error).split())


def run() -> int:
  """`main` for the console: a reader that leaves early (`main --help | head`) ends the
  command quietly with the shell's SIGPIPE status, not a traceback."""
  try:
    code = main()
    sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
  return code


if __name__ == "__main__":
  sys.exit(run())
