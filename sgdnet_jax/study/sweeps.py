"""What a sweep is: the runs of a config's `get_sweep`, each a config and a workdir name.

A config module may define `get_sweep(name)`: a list of runs, each a dict of config arguments
(keys of its `get_config(arg)`, e.g. `variant`, `fold`) and field overrides (keys
`config.<field>`); `file.py:sweep=<name>[,arg=value...]` selects one (docs/ablations.md).
`load_sweep` loads its runs, and run i lives in `R/<variant>/fold<k>[/seed<s>]` below a sweep
root R (`run_workdir`). Loading imports no JAX (the `config` command prints a sweep's runs);
`study.sweep` runs them.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import config_utils, errors, paths

FIELD_PREFIX = "config."  # a sweep key naming a config field rather than a config argument


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
  items = config_utils.arg_items(arg)
  name = next((value for key, value in items if key == config_utils.SWEEP_ARG), "")
  base = {key: value for key, value in items if key != config_utils.SWEEP_ARG}
  module = config_utils.load_module(path)
  if not hasattr(module, "get_sweep"):
    raise errors.ConfigError(f"config file {path!r} defines no sweeps (no get_sweep function)")
  try:
    entries = module.get_sweep(name)
  except (ValueError, KeyError) as error:
    raise errors.ConfigError(f"{spec}: {error}") from None
  command_line = [
    f"--config.{key}={value}" for key, value in config_utils.split_overrides(overrides)
  ]
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
    runs.append(
      SweepRun("", run_spec, run_overrides, config_utils.load_config(run_spec, run_overrides))
    )
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


def run_workdir(root: str, run: SweepRun) -> str:
  """`R/<run name>`; R may be a bucket URL (`sgdnet_jax.core.paths`) for local sweeps."""
  return str(paths.as_path(root) / run.name)
