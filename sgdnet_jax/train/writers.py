"""Metric writing: clu's default writer (TensorBoard events + logging) and `metrics.jsonl`.

Only process 0 writes files; other processes log only.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _jsonable(value: Any):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
  """Scalars to clu's writer and, on process 0, one JSON object per call to metrics.jsonl."""

  def __init__(self, workdir: str):
    import tensorflow as tf
    from clu import metric_writers  # Imports TensorFlow: only the training loop pays for it.

    tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take accelerator memory.
    self.is_main = jax.process_index() == 0
    self._clu = metric_writers.create_default_writer(
      workdir, just_logging=not self.is_main, asynchronous=False
    )
    # Held open for the whole run (closed in `close`), so no context manager here.
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.is_main else None  # noqa: SIM115

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._clu.write_scalars(step, scalars)
    if self._jsonl:
      record = {"step": int(step), **{key: _jsonable(value) for key, value in scalars.items()}}
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()

  def close(self):
    self._clu.close()
    if self._jsonl:
      self._jsonl.close()
