"""Loading experiment configs: `path/to/config.py[:arg]` plus `--config.a.b=value` overrides.

Mirrors `ml_collections.config_flags` for commands that parse their own arguments. A config
module may also define `get_sweep(name)`: a list of runs, each a dict of config arguments (keys
of its `get_config(arg)`, e.g. `variant`, `fold`) and field overrides (keys `config.<field>`);
`file.py:sweep=<name>[,arg=value...]` selects one (`load_sweep`, docs/ablations.md).
"""

import ast
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import errors

SWEEP_ARG = "sweep"  # the config argument that selects a sweep of get_sweep
FIELD_PREFIX = "config."  # a sweep key naming a config field rather than a config argument
# Renamed config fields, old dotted name -> new: refused when given, mapped in a recorded config.
RENAMED_FIELDS = {"model.lesions": "model.knockouts"}


def _load_module(path: str):
  if not os.path.isfile(path):
    raise errors.ConfigError(
      f"config file {path!r} does not exist (expected configs/<experiment>.py)"
    )
  # Configs import `configs.common`: make the folder above `configs/` importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _arg_items(arg: str) -> list[tuple[str, str]]:
  """`a=1,b=x` -> [('a', '1'), ('b', 'x')]; an item without '=' keeps '' (get_config refuses)."""
  return [
    tuple(part.strip() for part in item.partition("=")[::2]) for item in arg.split(",") if item
  ]


def is_sweep(spec: str) -> bool:
  """True when `spec` selects a sweep (`file.py:sweep=<name>,...`)."""
  return any(key == SWEEP_ARG for key, _ in _arg_items(spec.partition(":")[2]))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `file.py[:arg]` via its `get_config(arg)` and applies `--config.x.y=value` overrides."""
  path, _, arg = spec.partition(":")
  if is_sweep(spec):
    raise errors.ConfigError(
      f"{spec} selects a sweep of several runs; run it with `sweep --config {spec} --root R`"
      " (`config` prints each run's config)"
    )
  module = _load_module(path)
  if not hasattr(module, "get_config"):
    raise errors.ConfigError(f"config file {path!r} has no get_config(arg) function")
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError) as error:  # Argument parsing in the config file itself.
    raise errors.ConfigError(f"{spec}: {error}") from None
  for old, new in RENAMED_FIELDS.items():
    if _has_path(config, old):
      raise errors.ConfigError(f"{path} sets config.{old}, which is now config.{new}; rename it")
  apply_overrides(config, overrides)
  return config


def _has_path(tree: Any, dotted: str) -> bool:
  """True when the nested ConfigDict or dict `tree` holds the field `a.b` of `dotted`."""
  for key in dotted.split("."):
    if not isinstance(tree, (dict, ml_collections.ConfigDict)) or key not in tree:
      return False
    tree = tree[key]
  return True


def rename_recorded_fields(recorded: dict[str, Any]) -> dict[str, Any]:
  """A recorded config (config.json) with its renamed fields under their current names, so that
  a workdir written before a rename compares with, and reads like, a current config."""
  for old, new in RENAMED_FIELDS.items():
    *old_parents, old_leaf = old.split(".")
    *new_parents, new_leaf = new.split(".")
    if not _has_path(recorded, old):
      continue
    source = recorded
    for key in old_parents:
      source = source[key]
    target = recorded
    for key in new_parents:
      target = target.setdefault(key, {})
    value = source.pop(old_leaf)
    target.setdefault(new_leaf, value)
  return recorded


def split_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
  """`--config.a.b=value` (or `--config.a.b value`) items as (dotted field, value text)."""
  items, pairs = list(overrides), []
  while items:
    item = items.pop(0)
    if not item.startswith("--config."):
      raise errors.ConfigError(
        f"unexpected argument {item!r} (overrides look like --config.model.num_classes=2)"
      )
    key, sep, value = item[len("--config.") :].partition("=")
    if not sep:
      if not items:
        raise errors.ConfigError(f"override {item!r} has no value")
      value = items.pop(0)
    pairs.append((key, value))
  return pairs


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]):
  """Applies `--config.a.b=value` items; the value is parsed as a Python literal when it can be."""
  for key, value in split_overrides(overrides):
    set_path(config, key, parse_value(value))


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of a sweep: where it goes and how to build its config again on a command line."""

  name: str  # workdir below the sweep root: <variant>/fold<k>[/seed<s>]
  spec: str  # file.py[:arg] of this run (the sweep's arguments, then the run's)
  overrides: tuple[str, ...]  # --config.x=y: the run's fields, then the command line's
  config: ml_collections.ConfigDict


def _arg_text(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def load_sweep(spec: str, overrides: Sequence[str] = ()) -> list[SweepRun]:
  """The runs of `file.py:sweep=<name>[,arg=value...]`, each with its resolved config.

  `get_sweep(name)` lists the runs; the other arguments of `spec` and `overrides` apply to every
  run (a run's own keys win over the spec's arguments; `overrides` win over a run's fields). A
  run's workdir name comes from its config: `<model.variant>/fold<data.fold>`, plus
  `/seed<seed>` when the seed differs between runs.
  """
  path, _, arg = spec.partition(":")
  items = _arg_items(arg)
  name = next((value for key, value in items if key == SWEEP_ARG), "")
  base = {key: value for key, value in items if key != SWEEP_ARG}
  module = _load_module(path)
  if not hasattr(module, "get_sweep"):
    raise errors.ConfigError(f"config file {path!r} defines no sweeps (no get_sweep function)")
  try:
    entries = module.get_sweep(name)
  except (ValueError, KeyError) as error:
    raise errors.ConfigError(f"{spec}: {error}") from None
  command_line = [f"--config.{key}={value}" for key, value in split_overrides(overrides)]
  runs = []
  for entry in entries:
    args = dict(base)
    args.update({k: _arg_text(v) for k, v in entry.items() if not k.startswith(FIELD_PREFIX)})
    fields = [
      f"--config.{k[len(FIELD_PREFIX) :]}={v!r}"
      for k, v in entry.items()
      if k.startswith(FIELD_PREFIX)
    ]
    run_spec = path + (":" + ",".join(f"{k}={v}" for k, v in args.items()) if args else "")
    run_overrides = (*fields, *command_line)
    runs.append(SweepRun("", run_spec, run_overrides, load_config(run_spec, run_overrides)))
  if not runs:
    raise errors.ConfigError(f"{spec}: sweep {name!r} has no runs")
  with_seed = len({run.config.seed for run in runs}) > 1
  named = []
  for run in runs:
    parts = [str(run.config.model.variant), f"fold{run.config.data.fold}"]
    parts += [f"seed{run.config.seed}"] if with_seed else []
    named.append(dataclasses.replace(run, name="/".join(parts)))
  seen = {}
  for run in named:
    if run.name in seen:
      raise errors.ConfigError(
        f"{spec}: runs {seen[run.name]} and {run.spec} {' '.join(run.overrides)} would share"
        f" the workdir {run.name}; a sweep varies the variant, the fold or the seed"
      )
    seen[run.name] = f"{run.spec} {' '.join(run.overrides)}".strip()
  return named


def parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    lowered = text.lower()
    if lowered in ("true", "false"):
      return lowered == "true"
    return text


def set_path(config: ml_collections.ConfigDict, dotted: str, value: Any):
  """Sets `config.a.b = value`, refusing unknown fields (a typo must not pass silently)."""
  if dotted in RENAMED_FIELDS:
    raise errors.ConfigError(
      f"--config.{dotted} is now --config.{RENAMED_FIELDS[dotted]}; rename it"
    )
  *parents, leaf = dotted.split(".")
  target = config
  for index, parent in enumerate(parents):
    if parent not in target:
      raise errors.ConfigError(
        f"--config.{dotted}: no field {'.'.join(parents[: index + 1])!r} in the config"
      )
    target = target[parent]
  if leaf not in target:
    raise errors.ConfigError(
      f"--config.{dotted}: no field {dotted!r}; known: {sorted(target.keys())}"
    )
  current = target[leaf]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    target[leaf] = value
  except TypeError:  # ml_collections keeps each field's type
    raise errors.ConfigError(
      f"--config.{dotted}={value!r}: expected {type(current).__name__} (the default is {current!r})"
    ) from None


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike):
  """Writes the resolved config as JSON (the record of what ran), locally or to a URL."""
  from sgdnet_jax.core import paths

  paths.write_text_atomic(path, json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
