"""A training workdir's guards: one run at a time (a lock file) and a config that fits it.

  W/train.lock              {"host", "pid", "since"} of the run holding W (process 0 of it)
  W/config.json             the config of the run that wrote W's checkpoints
  W/config.<time>.json      an earlier config.json, kept when a resume changed non-model fields

The lock is created atomically with its content on a local disk (written to a temporary file,
then hard-linked into place, which fails when the lock exists; O_EXCL where links are not
supported) and removed when the run ends, exceptions included. A lock left by a killed run on
this host (its pid is no longer alive), or one that is empty or unreadable (a full disk while
an older version wrote it), is taken over with a warning; one held by a live process, or by
another host, refuses the second run at once.
In an object store (a `gs://` workdir) there is no exclusive create: the lock is checked, then
written, which guards against a second run started later but not against two started within
the same second.

A resume must build the same parameter tree as the checkpoints: every `model.*` field counts
except `NON_STRUCTURAL_MODEL_FIELDS`, which change how the model is initialised or computed but
not its parameters. Any other change (epochs, lr, image size, ...) is allowed and listed. The
commands that read a workdir's variables (evaluate, predict, export, ablate) apply the same rule
(`check_model_fits`): their model is the recorded one, and a `--config` that builds another is
refused in one line before anything is loaded.
"""

import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import config_utils, errors, paths
from sgdnet_jax.workdir import layout, variables_io

# model.* fields a resumed run may change: initialisation (pretrained, layer scale), compute
# dtype, the convolution and SGDC implementations (same parameters, another algorithm),
# functional knockouts (switches of the forward pass) and regularisation.
NON_STRUCTURAL_MODEL_FIELDS = frozenset(
  {
    "pretrained",
    "dtype",
    "conv_impl",
    "knockouts",
    "head_dropout",
    "sgdc.impl",
    "sgdc.drop_path",
    "sgdc.layer_scale_init",
  }
)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _describe(holder: dict[str, Any]) -> str:
  return (
    f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
    f"since {holder.get('since', '?')}"
  )


def _read_holder(path: paths.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def _create_lock(path: paths.Path) -> bool:
  """Creates the lock file with this process as holder; False when it exists already."""
  holder = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
  }
  if not paths.is_local(path):  # object stores: check, then write (see the module docstring)
    if path.exists():
      return False
    path.write_text(json.dumps(holder))
    return True
  temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
  try:
    temporary.write_text(json.dumps(holder))  # complete before it is linked into place
    try:
      os.link(temporary, path)  # Atomic, and fails when the lock exists.
    except FileExistsError:
      return False
    except OSError:  # A file system without hard links: exclusive create, then the content.
      try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(descriptor, "w") as f:
        json.dump(holder, f)
        f.flush()
        os.fsync(f.fileno())
  finally:
    with contextlib.suppress(FileNotFoundError):
      temporary.unlink()
  return True


def _writable_error(workdir: paths.Path, error: OSError) -> errors.UserError:
  reason = error.strerror or type(error).__name__
  return errors.UserError(
    f"cannot write in workdir {workdir} ({reason}); choose a writable --workdir"
  )


@contextlib.contextmanager
def locked(workdir: str | os.PathLike):
  """Holds `workdir/train.lock` for the duration of the block (see the module docstring)."""
  workdir = paths.as_path(workdir)
  path = layout.lock_file(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    taken = _create_lock(path)
    if not taken:
      holder = _read_holder(path)
      unreadable = not isinstance(holder, dict) or not holder
      if unreadable:
        logging.warning(
          "taking over the lock %s: it is empty or unreadable (a run that could not finish "
          "writing it)",
          path,
        )
        holder = {}
      stale = unreadable or (
        holder.get("host") == socket.gethostname()
        and isinstance(holder.get("pid"), int)
        and not _pid_alive(holder["pid"])
      )
      if not stale:
        raise errors.UserError(
          f"workdir {workdir} is in use by another train run ({_describe(holder)}); wait for "
          f"it to end or use another --workdir (if that run is gone, delete {path})"
        )
      if not unreadable:
        logging.warning(
          "taking over the stale lock %s of a run that is no longer alive (%s)",
          path,
          _describe(holder),
        )
      path.unlink()
      if not _create_lock(path):
        raise errors.UserError(
          f"workdir {workdir} was just locked by another train run "
          f"({_describe(_read_holder(path))}); use another --workdir"
        )
  except OSError as error:
    raise _writable_error(workdir, error) from None
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      path.unlink()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
  return flat


def _normalise(value: Any) -> Any:
  """JSON's view of a value (tuples as lists), so that a config compares with its record."""
  return json.loads(json.dumps(value, default=str))


def config_changes(recorded: dict[str, Any], config: dict[str, Any]) -> tuple[list, list]:
  """(model fields that change the parameter tree, other changed fields), dotted and sorted."""
  old, new = _flatten(_normalise(recorded)), _flatten(_normalise(config))
  changed = sorted(
    k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>")
  )
  structural = [
    k
    for k in changed
    if k.startswith("model.") and k[len("model.") :] not in NON_STRUCTURAL_MODEL_FIELDS
  ]
  return structural, [k for k in changed if k not in structural]


def _show(flat: dict[str, Any], key: str) -> str:
  return repr(flat[key]) if key in flat else "absent"


def describe_changes(recorded: dict[str, Any], config: dict[str, Any], keys: Sequence[str]) -> str:
  """`key: recorded value -> config value, ...` for the dotted `keys` (of `config_changes`)."""
  old, new = _flatten(_normalise(recorded)), _flatten(_normalise(config))
  return ", ".join(f"{k}: {_show(old, k)} -> {_show(new, k)}" for k in keys)


def recorded_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The config recorded in `workdir/config.json`, None when there is none (a UserError when
  it is not JSON)."""
  path = layout.config_file(workdir)
  try:
    return variables_io.load_config_dict(workdir)
  except ValueError as error:
    raise errors.UserError(
      f"{path} is not valid JSON ({error}); restore it or use another --workdir"
    ) from None


def _refuse_structural_changes(
  workdir: paths.Path, recorded: dict[str, Any], config_dict: dict[str, Any]
) -> list[str]:
  """Raises the one-line UserError when `config_dict` builds another model than `recorded`;
  returns the other changed fields."""
  structural, others = config_changes(recorded, config_dict)
  if structural:
    diffs = describe_changes(recorded, config_dict, structural)
    raise errors.UserError(
      f"workdir {workdir} holds a different model ({diffs}) than the config given (recorded "
      f"-> given); use another --workdir or the model fields of {layout.config_file(workdir)}"
    )
  return others


def check_model_fits(config: ml_collections.ConfigDict, workdirs: Sequence[str | os.PathLike]):
  """Refuses a config whose model is not the one recorded in each workdir's config.json.

  For the commands that read variables: the model they build must be the recorded one
  (otherwise the variables do not fit it). Non-structural model fields (conv_impl, knockouts,
  dtype, ...) and every other field (data, batch sizes) follow `config`. A folder without
  config.json (variables saved without their config) is not checked.
  """
  config_dict = config.to_dict()
  for workdir in workdirs:
    recorded = recorded_config(workdir)
    if recorded is not None:
      _refuse_structural_changes(paths.as_path(workdir), recorded, config_dict)


def check_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> dict | None:
  """Refuses `config` when its model does not fit the workdir's recorded one (reading only);
  returns the recorded config (None: none yet)."""
  recorded = recorded_config(workdir)
  if recorded is not None:
    _refuse_structural_changes(paths.as_path(workdir), recorded, config.to_dict())
  return recorded


def check_and_record_config(
  workdir: str | os.PathLike, config: ml_collections.ConfigDict, write: bool
):
  """Refuses a config whose model does not fit the workdir's; records `config` as config.json.

  Runs before anything is written: a refused run leaves config.json as it was. A changed
  non-model field is logged, and the previous config.json is kept as config.<time>.json. Only
  the process that `write`s touches files.
  """
  workdir = paths.as_path(workdir)
  path = layout.config_file(workdir)
  config_dict = config.to_dict()
  recorded = recorded_config(workdir)
  if recorded is not None:
    others = _refuse_structural_changes(workdir, recorded, config_dict)
    if not others:
      return
    logging.warning(
      "resuming %s with changed fields: %s",
      workdir,
      describe_changes(recorded, config_dict, others),
    )
    if write:
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      kept = layout.kept_config_file(workdir, stamp)
      suffix = 1
      while kept.exists():
        kept = layout.kept_config_file(workdir, f"{stamp}-{suffix}")
        suffix += 1
      path.rename(kept)
      logging.warning("kept the previous config as %s", kept)
  if write:
    config_utils.save_config(config, path)
