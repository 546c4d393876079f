"""Every command line the documentation shows is one the code accepts.

Collects each `python -m sgdnet_jax.main ...` line and each `launch/...` invocation of README.md,
docs/*.md and docs/*.sh (fenced and indented code, inline code spans, shell scripts; `\\`
continuations joined, `# comments` dropped, `;`/`&&`/`|` separating commands) and checks it
without running anything heavy:

* `python -m sgdnet_jax.main COMMAND ARGS`: COMMAND is in `main.COMMANDS`; ARGS parse with the
  command's own parser (`sgdnet_jax/cli/<command>.py::build_parser`); what the parser leaves over
  is `--config.x=y` overrides, and only for commands that read a config; the config file and its
  `:args` load (`config_utils.load_config`, or `sweeps.load_sweep` for `:sweep=`) with the
  overrides, each naming a field and parsing to its type; `ablate --knockouts` act on the config's
  variant (the check `ablate` itself makes).
* `launch/SCRIPT ARGS`: the script exists and accepts ARGS (the SLURM and TPU launchers with
  `--dry-run` added, `local_multiprocess.sh` with a stub Python), with stub cluster tools on PATH
  that fail the test if called; the `python -m sgdnet_jax.main` command the launcher would run is
  then checked as above.

The documentation's own shorthand is read explicitly: `[...]` marks an optional part (checked as
if given), `...` (and `"$@"` in scripts) elides arguments (required options are then not
required, and an elided value is not checked), `--config.x=y` stands for any overrides, and an
upper-case word (`C`, `NAME`, `TPU_NAME`) or a `<...>` word is a placeholder. A config given as a
placeholder is not loaded; its overrides are still checked against `configs/default.py`. Paths
are not checked for existence.
"""

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import pathlib
import re
import shlex
import subprocess

import pytest

from sgdnet_jax import main
from sgdnet_jax.core import config_utils
from sgdnet_jax.models import knockouts as knockout_lib
from sgdnet_jax.study import sweeps
from tests import train_helpers

REPO = train_helpers.REPO
DOCUMENT_FILES = [
  REPO / "README.md",
  *sorted((REPO / "docs").glob("*.md")),
  *sorted((REPO / "docs").glob("*.sh")),
]
ELISIONS = ("...", "$@", "$*")  # arguments left out
OVERRIDE_PLACEHOLDER = "--config.x=y"  # any number of --config.field=value overrides
DEFAULT_CONFIG = "configs/default.py"
# `python -m sgdnet_jax.main` as the docs and scripts write it (python3, .venv/bin/python, "$PY").
_PROGRAM = re.compile(r"(?:\S*python3?|\$\{?PY\}?)$")
_COMMAND_START = re.compile(r"-m\s+sgdnet_jax\.main\b|(?:^|[\s`])launch/[\w.-]+")
# An indented Markdown line that is a command (not a list item's prose that names one).
_INDENTED_COMMAND = re.compile(r"\s+(?:\S*python3?\s+-m\s+sgdnet_jax\.main|(?:bash\s+)?launch/)")
_COMMENT = re.compile(r"(?:^|\s)#(?:\s.*)?$")
_INLINE_CODE = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")
_FENCE = re.compile(r"^\s*```")
CONTINUATION = "\\"
# The launchers that print what they would run under --dry-run instead of calling a cluster tool.
DRY_RUN_LAUNCHERS = ("tpu_pod.sh", "slurm_task.sh", "slurm_gpu.sbatch")
CLUSTER_TOOLS = ("gcloud", "srun", "sbatch", "salloc", "kubectl")


@dataclasses.dataclass(frozen=True)
class DocumentedCommand:
  where: str  # file:line of the line the command starts on
  words: tuple[str, ...]  # after `python -m sgdnet_jax.main`, or the launch/ script and its args
  problem: str = ""  # why the line could not be read as shell words

  @property
  def is_launcher(self) -> bool:
    return self.words[0].startswith("launch/")


def is_placeholder(word: str) -> bool:
  """`C`, `NAME`, `TPU_NAME`, `<v>`, `configs/<exp>.py`: a word the reader replaces."""
  return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|\S*<[^<>\s]+>\S*", word))


def _unbracket(word: str) -> str:
  """`[--resolution` -> `--resolution`, `native]` -> `native`; `a.py[:args]` stays as is."""
  word = word.lstrip("[")
  while word.endswith("]") and word.count("]") > word.count("["):
    word = word[:-1]
  return word


def _code_pieces(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, code) of every piece of code in a document.

  Markdown: each logical line of a fenced block, each indented line that starts a command, and
  each inline code span outside fences. Shell: each logical line. Logical lines join `\\`
  continuations after their `# comment` is dropped.
  """
  lines = path.read_text().splitlines()
  is_markdown = path.suffix == ".md"
  in_fence = False
  code_lines, prose = [], []
  for number, line in enumerate(lines, 1):
    if is_markdown and _FENCE.match(line):
      in_fence = not in_fence
      code_lines.append((number, None))
      prose.append("")
      continue
    indented_command = line.startswith("    ") and _INDENTED_COMMAND.match(line)
    is_code = not is_markdown or in_fence or indented_command
    code_lines.append((number, line if is_code else None))
    prose.append("" if is_code else line)
  pieces, pending = [], None
  for number, line in [*code_lines, (len(lines) + 1, None)]:
    if line is None:  # prose, a fence or the end: a dangling continuation ends here
      if pending is not None:
        pieces.append(pending)
      pending = None
      continue
    text = _COMMENT.sub("", line).rstrip()
    start, before = pending or (number, "")
    pending = (start, " ".join(part for part in (before, text.removesuffix(CONTINUATION)) if part))
    if not text.endswith(CONTINUATION):
      pieces.append(pending)
      pending = None
  if is_markdown:
    joined = "\n".join(prose)
    for match in _INLINE_CODE.finditer(joined):
      pieces.append((joined.count("\n", 0, match.start()) + 1, match.group(1)))
  return [(number, text) for number, text in pieces if _COMMAND_START.search(text)]


def _split_commands(text: str) -> list[list[str]]:
  """Shell words of `text`, cut into commands at `;`, `&&`, `||` and `|`."""
  lexer = shlex.shlex(text.replace("\n", " "), posix=True, punctuation_chars=";&|")
  lexer.whitespace_split = True
  lexer.commenters = ""
  commands = [[]]
  for word in lexer:
    if word and set(word) <= set(";&|"):
      commands.append([])
    else:
      commands[-1].append(word)
  return [words for words in commands if words]


def commands_in_file(path: pathlib.Path) -> list[DocumentedCommand]:
  """The `python -m sgdnet_jax.main` and `launch/` command lines of one document."""
  found = []
  for number, text in _code_pieces(path):
    where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{number}"
    try:
      commands = _split_commands(text)
    except ValueError as error:  # unbalanced quotes
      found.append(DocumentedCommand(where, (text,), f"not shell words ({error})"))
      continue
    for words in commands:
      words = [_unbracket(word) for word in words]
      words = [word for word in words if word]
      for index, word in enumerate(words):
        program = words[index - 1] if index else ""
        if words[index : index + 2] == ["-m", "sgdnet_jax.main"] and _PROGRAM.match(program):
          found.append(DocumentedCommand(where, tuple(words[index + 2 :]) or ("",)))
          break
        if re.fullmatch(r"launch/[\w.-]+", word):
          found.append(DocumentedCommand(where, tuple(words[index:])))
          break
  return found


DOCUMENTED = [command for path in DOCUMENT_FILES for command in commands_in_file(path)]


class _ParserExit(Exception):
  """argparse wanted to exit (an error, or --help)."""


def _parse(parser: argparse.ArgumentParser, words: list[str]):
  """parse_known_args without exiting: argparse's message becomes an exception."""
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
    try:
      return parser.parse_known_args(words)
    except SystemExit:
      raise _ParserExit(stderr.getvalue().strip().splitlines()[-1]) from None


def _load_config(spec: str, overrides: list[str]):
  """The config a command line builds; None for a sweep or a placeholder config."""
  path, _, arg = spec.partition(":")
  values = [item.partition("=")[2] for item in arg.split(",") if item]
  if spec in ELISIONS or is_placeholder(path) or any(map(is_placeholder, values)):
    config_utils.load_config(DEFAULT_CONFIG, overrides)  # the fields and their types
    return None
  if config_utils.is_sweep(spec):
    sweeps.load_sweep(spec, overrides)
    return None
  return config_utils.load_config(spec, overrides)


def check_main_command(words: list[str], elided: bool):
  """Raises (argparse's message, ConfigError, AssertionError) unless `python -m sgdnet_jax.main
  WORDS` is accepted; `elided`: the line leaves arguments out, so none is required."""
  command, args = words[0], list(words[1:])
  if is_placeholder(command) or command in ("-h", "--help"):
    return
  assert command in main.COMMANDS, f"no command {command!r}; commands: {', '.join(main.COMMANDS)}"
  parser = importlib.import_module(f"sgdnet_jax.cli.{command.replace('-', '_')}").build_parser()
  if elided:
    for action in parser._actions:
      action.required = False
    for group in parser._mutually_exclusive_groups:
      group.required = False
  if {"-h", "--help"} & set(args):
    return  # argparse prints the usage and exits 0, whatever else the line holds
  parsed, rest = _parse(parser, args)
  rest = [word for word in rest if word not in ELISIONS and word != OVERRIDE_PLACEHOLDER]
  if "--config" not in parser._option_string_actions:
    assert not rest, f"{command} takes no {' '.join(rest)!r} (nor --config.x=y overrides)"
    return
  config_utils.split_overrides(rest)  # what is left must be --config.x=y overrides
  config = _load_config(parsed.config, rest) if parsed.config else None
  if command == "ablate" and parsed.knockouts:
    from sgdnet_jax.study import ablate

    knockout_sets = ablate.parse_knockouts(parsed.knockouts)
    unknown = {knockout for knockouts in knockout_sets for knockout in knockouts} - set(
      knockout_lib.KNOCKOUTS
    )
    assert not unknown, (
      f"unknown knockouts {sorted(unknown)}; known: {', '.join(knockout_lib.KNOCKOUTS)}"
    )
    if config is not None:
      ablate._check(config, knockout_sets)  # the check `ablate` makes before it loads anything


def _stub_environment(folder: pathlib.Path) -> tuple[dict, pathlib.Path, pathlib.Path]:
  """An environment outside any cluster whose cluster tools record that they were called (and
  fail), and whose PYTHON records its arguments; returns it, the calls file and the argv file."""
  calls, argv = folder / "cluster_calls.txt", folder / "python_argv.txt"
  bin_dir = folder / "bin"
  bin_dir.mkdir(parents=True)
  for tool in CLUSTER_TOOLS:
    (bin_dir / tool).write_text(
      f'#!/bin/sh\necho "{tool} $*" >>{shlex.quote(str(calls))}\nexit 1\n'
    )
    (bin_dir / tool).chmod(0o755)
  python = bin_dir / "recording_python"
  argv_file = shlex.quote(str(argv))
  # One write per call (O_APPEND): the launcher starts its processes at once.
  python.write_text(f'#!/usr/bin/env bash\nline=$(printf "%q " "$@")\necho "$line" >>{argv_file}\n')
  python.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GCLOUD_", "JAX_"))}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHON=str(python))
  return env, calls, argv


def launched_commands(printed: str) -> list[list[str]]:
  """The `-m sgdnet_jax.main` command lines among printed shell commands (also inside a remote
  shell's `--command=...`, and `launch/tpu_worker.sh [--restart] STATUS ARGS`, which runs
  `train ARGS`), each cut at its first redirection."""
  found, texts = [], printed.splitlines()
  while texts:
    for words in _split_commands(texts.pop(0)):
      texts += [word.removeprefix("--command=") for word in words if word.startswith("--command=")]
      for index in range(1, len(words)):
        rest = None
        if words[index - 1 : index + 1] == ["-m", "sgdnet_jax.main"]:
          rest = words[index + 1 :]
        elif words[index - 1] == "launch/tpu_worker.sh":
          rest = ["train", *words[index + (words[index] == "--restart") + 1 :]]
        if rest is not None:
          cut = next((i for i, word in enumerate(rest) if word.startswith(("<", ">", "2>"))), None)
          found.append(rest[:cut])
  return found


def check_launcher_command(words: list[str], folder: pathlib.Path):
  """Raises unless `launch/SCRIPT ARGS` exists and accepts ARGS (see the module docstring)."""
  script, args = REPO / words[0], list(words[1:])
  assert script.is_file(), f"{words[0]} does not exist"
  if script.suffix not in (".sh", ".sbatch") or not args:
    return  # a file the text names (e.g. `kubectl apply -f launch/gke_jobset.yaml`)
  env, calls, argv = _stub_environment(folder)
  run_args = [word for word in args if word not in ELISIONS]
  if script.name in DRY_RUN_LAUNCHERS:
    run_args.append("--dry-run")
  result = subprocess.run(
    ["bash", str(script), *run_args],
    cwd=REPO if script.name in DRY_RUN_LAUNCHERS else folder,  # local_multiprocess makes --workdir
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert not calls.exists(), f"{script.name} called {calls.read_text()}"
  assert result.returncode == 0, f"{script.name} exited {result.returncode}: {result.stderr}"
  printed = result.stdout if script.name in DRY_RUN_LAUNCHERS else argv.read_text()
  launched = launched_commands(printed)
  assert launched or script.name == "tpu_pod.sh", f"{script.name} printed no command: {printed}"
  for command in launched:
    check_main_command(command, elided=any(word in ELISIONS for word in args))


@pytest.mark.parametrize("documented", DOCUMENTED, ids=[c.where for c in DOCUMENTED])
def test_documented_command_is_accepted(documented, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)  # config paths are relative to the repository root
  words = list(documented.words)
  assert not documented.problem, f"{documented.where}: {documented.problem}: {words[0]}"
  try:
    if documented.is_launcher:
      check_launcher_command(words, tmp_path)
    else:
      check_main_command(words, elided=any(word in ELISIONS for word in words))
  except Exception as error:
    pytest.fail(f"{documented.where}: {shlex.join(words)}\n  {type(error).__name__}: {error}")


def test_every_command_and_launcher_is_documented():
  """Each command of main.COMMANDS and each launcher appears in some documented command line."""
  used = {c.words[0] for c in DOCUMENTED if not c.is_launcher}
  assert set(main.COMMANDS) <= used, f"undocumented: {sorted(set(main.COMMANDS) - used)}"
  launchers = {f"launch/{p.name}" for p in (REPO / "launch").iterdir()}
  invoked = {c.words[0] for c in DOCUMENTED if c.is_launcher}
  assert launchers <= invoked, f"undocumented: {sorted(launchers - invoked)}"


_SAMPLE = """\
Some text with `python -m sgdnet_jax.main config --config C [--config.x=y]` inline, and
`python -m sgdnet_jax.main report
--root R` across lines; `sgdnet_jax.main` alone is no command.

```
python -m sgdnet_jax.main train --config configs/test.py \\
    --workdir runs/a   # comment
launch/tpu_pod.sh logs T Z; launch/tpu_pod.sh stop T Z    # then: launch/no.sh
```

    .venv/bin/python -m sgdnet_jax.main predict ... --images "my photos/" [--tta flip]
"""


def test_documented_command_lines_are_read_as_a_shell_would(tmp_path):
  document = tmp_path / "sample.md"
  document.write_text(_SAMPLE)
  found = [(c.where.rsplit(":", 1)[1], c.words) for c in commands_in_file(document)]
  assert found == [
    ("6", ("train", "--config", "configs/test.py", "--workdir", "runs/a")),
    ("8", ("launch/tpu_pod.sh", "logs", "T", "Z")),
    ("8", ("launch/tpu_pod.sh", "stop", "T", "Z")),
    ("11", ("predict", "...", "--images", "my photos/", "--tta", "flip")),
    ("1", ("config", "--config", "C", "--config.x=y")),
    ("2", ("report", "--root", "R")),
  ]


@pytest.mark.parametrize(
  "words, message",
  [
    (["evaluate", "--config", "configs/test.py", "--workdir", "w", "--splits", "x"], "--splits"),
    (["train", "--config", "configs/test.py", "--work-dir", "w"], "required: --workdir"),
    (["train", "--config", "configs/test.py"], "--workdir"),
    (["train", "--config", "configs/test.py", "--workdir", "w", "--config.no_such=1"], "no_such"),
    (["train", "--config", "configs/test.py", "--workdir", "w", "--config.epochs=many"], "epochs"),
    (["train", "--config", "configs/nope.py", "--workdir", "w"], "does not exist"),
    (["sweep", "--config", "configs/test.py:sweep=nope", "--root", "R", "--print"], "nope"),
    (["report", "--root", "R", "--config.seed=1"], "--config.seed=1"),
    (["evaluate", "--config", "C", "--workdir", "W", "--config.model.nope=1"], "nope"),
    (
      ["ablate", "--config", "configs/test.py", "--workdir", "W", "--knockouts", "edge=off"],
      "edge",
    ),
    (["ablate", "--config", "C", "--workdir", "W", "--knockouts", "sgdc=of"], "sgdc=of"),
    (["trian", "--config", "configs/test.py"], "trian"),
  ],
)
def test_stale_command_lines_fail(words, message):
  with pytest.raises(Exception, match=re.escape(message)):
    check_main_command(words, elided=False)


@pytest.mark.parametrize(
  "words, message",
  [
    (["launch/tpu_pod.sh", "--dryrun", "setup", "T", "Z"], "--dryrun"),
    (
      ["launch/tpu_pod.sh", "run", "T", "Z", "--config", "configs/test.py", "--wd", "w"],
      "--workdir",
    ),
    (["launch/tpu_pod.sh", "run", "T", "Z", "--config", "C", "--workdir", "W", "-r"], "'-r'"),
    (["launch/slurm_gpu.sbatch", "--config", "C", "--workdir", "W", "--config.nope=1"], "nope"),
    (["launch/local_multiprocess.sh", "two", "--config", "c", "--workdir", "w"], "two"),
    (["launch/no_such.sh", "x"], "does not exist"),
  ],
)
def test_stale_launcher_lines_fail(words, message, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(Exception, match=re.escape(message)):
    check_launcher_command(words, tmp_path)
