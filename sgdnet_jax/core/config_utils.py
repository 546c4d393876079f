"""Loading experiment configs: `path/to/config.py[:arg]` plus `--config.a.b=value` overrides.

Mirrors `ml_collections.config_flags` for commands that parse their own arguments. A config
module may also define `get_sweep(name)`, selected by `file.py:sweep=<name>[,arg=value...]`;
`load_config` refuses such a spec, and `sgdnet_jax.study.sweep.load_sweep` loads its runs.
"""

import ast
import difflib
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import errors

SWEEP_ARG = "sweep"  # the config argument that selects a sweep of get_sweep
# Renamed config fields, old dotted name -> new: refused when given, mapped in a recorded config.
RENAMED_FIELDS = {"model.lesions": "model.knockouts"}


def load_module(path: str):
  """The config file at `path` as a module (a ConfigError when there is none)."""
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
  try:
    module_spec.loader.exec_module(module)
  except Exception as error:  # The user's file: a syntax error, a bad import, a typo.
    raise _file_error(path, error) from error
  return module


def _file_error(path: str, error: Exception) -> errors.ConfigError:
  """The one-line error of a config file that fails to load or run, at its line."""
  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  for frame in traceback.extract_tb(error.__traceback__):
    if os.path.abspath(frame.filename) == os.path.abspath(path):
      line = frame.lineno
  where = f"{path}, line {line}" if line else path
  message = error.msg if isinstance(error, SyntaxError) else str(error)
  return errors.ConfigError(f"config file {where}: {type(error).__name__}: {message}; fix the file")


def _default_fields() -> dict[str, Any] | None:
  """configs/default.py's fields, dotted -> value (None where there is no `configs` package)."""
  try:
    default = importlib.import_module("configs.default")
  except ImportError:
    return None
  return _flatten(default.get_config().to_dict())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A nested dict as dotted fields -> values (an empty dict is a field of its own)."""
  if not isinstance(tree, dict) or not tree:
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def check_known_fields(config: ml_collections.ConfigDict, path: str):
  """Refuses a field that the config file at `path` sets but configs/default.py does not define
  (a typo such as `optimizer.lrr`), naming the nearest known field."""
  known = _default_fields()
  if known is None:
    return
  open_fields = [k for k, v in known.items() if isinstance(v, dict)]  # free-form dicts
  for field in _flatten(config.to_dict()):
    if field in known or any(field.startswith(f"{k}.") for k in open_fields):
      continue
    nearest = difflib.get_close_matches(field, list(known), n=1, cutoff=0.6)
    hint = f"did you mean config.{nearest[0]}? " if nearest else ""
    raise errors.ConfigError(
      f"{path} sets config.{field}, which configs/default.py does not define; {hint}"
      f"(a new field is added to configs/default.py first)"
    )


def arg_items(arg: str) -> list[tuple[str, str]]:
  """`a=1,b=x` -> [('a', '1'), ('b', 'x')]; an item without '=' keeps '' (get_config refuses)."""
  return [
    tuple(part.strip() for part in item.partition("=")[::2]) for item in arg.split(",") if item
  ]


def is_sweep(spec: str) -> bool:
  """True when `spec` selects a sweep (`file.py:sweep=<name>,...`)."""
  return any(key == SWEEP_ARG for key, _ in arg_items(spec.partition(":")[2]))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `file.py[:arg]` via its `get_config(arg)` and applies `--config.x.y=value` overrides."""
  path, _, arg = spec.partition(":")
  if is_sweep(spec):
    raise errors.ConfigError(
      f"{spec} selects a sweep of several runs; run it with `sweep --config {spec} --root R`"
      " (`config` prints each run's config)"
    )
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise errors.ConfigError(f"config file {path!r} has no get_config(arg) function")
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError) as error:  # Argument parsing in the config file itself.
    raise errors.ConfigError(f"{spec}: {error}") from None
  except Exception as error:  # A mistake in the file: a misspelled attribute, a bad call.
    raise _file_error(path, error) from error
  for old, new in RENAMED_FIELDS.items():
    if _has_path(config, old):
      raise errors.ConfigError(f"{path} sets config.{old}, which is now config.{new}; rename it")
  check_known_fields(config, path)
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
