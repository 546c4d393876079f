"""One path type for everything a run reads or writes: `etils.epath.Path`.

A workdir, a checkpoint folder, an evaluation folder, a study root or a prepared dataset may be
a local path or a `gs://` URL, which `etils.epath` (the path type Orbax uses) reads through
fsspec and gcsfs (`sgdnet_jax/__init__.py` pins that backend; tests/test_core_paths.py runs
it). `as_path` keeps such URLs intact (never `<cwd>/gs:/bucket/run`), makes local paths absolute
as before, and reads `file:///abs/path` as the local path it names. Object stores have no
rename and no append, so `write_bytes_atomic` and `write_text_atomic` write an object in one
piece (it appears whole or not at all) and rename a temporary file only on local disks.
"""

import os
import urllib.parse
import uuid
from collections.abc import Sequence

from etils import epath

from sgdnet_jax.core import errors

Path = epath.Path
FILE_URL = "file://"
# The URL schemes a run reads and writes: those a test exercises through the backend a run uses.
URL_SCHEMES = ("gs://",)


def is_local(path: str | os.PathLike) -> bool:
  """True for a path on this machine's file system (absolute, relative or file://)."""
  text = os.fspath(path)
  return "://" not in text or text.startswith(FILE_URL)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: URLs kept as given, local paths absolute with `~` expanded."""
  text = os.fspath(path)
  if text.startswith(FILE_URL):
    text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
  if is_local(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  if not text.startswith(URL_SCHEMES):
    raise errors.UserError(
      f"{text}: unsupported URL scheme; give a local path, file:///abs/path or a "
      f"{', '.join(URL_SCHEMES)} URL"
    )
  return epath.Path(text)


def as_paths(
  value: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[epath.Path]:
  """One path or several as a list of `as_path`s: the one rule for arguments such as `workdir`.

  A `str`, an `os.PathLike` (pathlib, `epath.Path`) or a sequence of them; a path is never
  taken for a sequence of its characters or parts.
  """
  if isinstance(value, (str, os.PathLike)):
    return [as_path(value)]
  return [as_path(item) for item in value]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the new one, never a part.

  Locally through a temporary file in the same folder and a rename; in an object store by one
  upload (objects have no rename, and a write is visible only once it is complete).
  """
  path = as_path(path)
  try:
    if not is_local(path):
      path.write_bytes(data)
      return
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
      temporary.write_bytes(data)
      temporary.replace(path)
    finally:
      if temporary.exists():
        temporary.unlink()
  except OSError as error:  # e.g. ENOSPC from write(): no file name; the one-line error needs it
    if error.filename is None and error.errno is not None:
      raise OSError(error.errno, error.strerror, os.fspath(path)) from error
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """`write_bytes_atomic` of `text` encoded as UTF-8."""
  write_bytes_atomic(path, text.encode("utf-8"))
