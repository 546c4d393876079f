"""Metric writing: `metrics.jsonl` and, with `config.tensorboard`, clu's default writer.

clu's writer (TensorBoard events + logging) imports TensorFlow, about 6 s of start-up, so it is
created at the first write, and only when TensorBoard events are asked for. Only process 0 writes
files; other processes log only. The workdir may be a local folder or an
object-store URL (`sgdnet_jax.core.paths`): TensorBoard events go through TensorFlow's file systems,
which write `gs://` natively. `metrics.jsonl` is appended to, a line per call, on a local file
system. Object stores cannot append, so there the writer keeps the whole file in memory (the
lines of earlier runs in the same workdir included) and uploads it again at most every
`OBJECT_STORE_UPLOAD_S` seconds and at `close`: one file to read wherever the workdir lives, at
the cost of losing at most that many seconds of lines if the process dies.
"""

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sgdnet_jax.core import paths
from sgdnet_jax.workdir import layout

OBJECT_STORE_UPLOAD_S = 30.0


def _jsonable(value: Any):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class _JsonLines:
  """One JSON object per line in a file that is appended to (local) or re-uploaded (objects)."""

  def __init__(self, path: paths.Path):
    self.path = path
    self.appendable = paths.is_local(path)
    if self.appendable:
      # Held open for the whole run (closed in `close`), so no context manager here.
      self._file = path.open("a")
    else:
      self._text = path.read_text() if path.exists() else ""
      self._uploaded_at = time.monotonic()
      self._unsent = False

  def write(self, record: Mapping[str, Any]):
    line = json.dumps(record) + "\n"
    if self.appendable:
      self._file.write(line)
      self._file.flush()
      return
    self._text += line
    self._unsent = True
    if time.monotonic() - self._uploaded_at >= OBJECT_STORE_UPLOAD_S:
      self._upload()

  def _upload(self):
    paths.write_text_atomic(self.path, self._text)
    self._uploaded_at, self._unsent = time.monotonic(), False

  def close(self):
    if self.appendable:
      self._file.close()
    elif self._unsent:
      self._upload()


def _clu_writer(workdir: paths.Path, is_main: bool):
  """clu's default writer: TensorBoard events on process 0, logging only on the others."""
  import tensorflow as tf
  from clu import metric_writers  # Imports TensorFlow.

  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take accelerator memory.
  return metric_writers.create_default_writer(
    str(workdir), just_logging=not is_main, asynchronous=False
  )


class MetricsWriter:
  """Scalars to metrics.jsonl (process 0) and, when `tensorboard`, to clu's writer."""

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self.workdir = paths.as_path(workdir)
    self.is_main = jax.process_index() == 0
    self.tensorboard = tensorboard
    self._clu = None
    self._jsonl = _JsonLines(layout.metrics_file(self.workdir)) if self.is_main else None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if self.tensorboard:
      if self._clu is None:
        self._clu = _clu_writer(self.workdir, self.is_main)
      self._clu.write_scalars(step, scalars)
    if self._jsonl:
      self._jsonl.write({"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}})

  def close(self):
    if self._clu is not None:
      self._clu.close()
    if self._jsonl:
      self._jsonl.close()
