"""Jitted programs reused within a process, keyed on what determines them.

A second training or evaluation in the same process (tests, a local sweep, `demo`, ablations)
whose programs equal an earlier one's gets the earlier jitted callables back, so JAX's in-memory
caches hit: no new trace (seconds) and no new load from the persistent compilation cache
(seconds more). A key names everything a program closes over (model, optimizer and loss configs,
schedule length, mesh, shardings, PRNG implementation); argument shapes, dtypes and x64 are
JAX's own cache key. The builder runs once per key and builds the model, optimizer and schedule
itself from deep copies of the configs, so an equal key gives an equal function. The cache is
an LRU of `MAX_ENTRIES` entries: each holds its executables alive, and a long in-process sweep
must not keep every run's.
"""

import collections
import copy
import json
from collections.abc import Callable
from typing import Any, TypeVar

import ml_collections
from jax.sharding import Mesh

T = TypeVar("T")
MAX_ENTRIES = 8

_entries: collections.OrderedDict[str, Any] = collections.OrderedDict()


def config_key(config: ml_collections.ConfigDict) -> Any:
  """A JSON-able, order-independent value of `config` (tuples and lists alike)."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=repr))


def frozen(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A deep copy of `config` for a builder to close over: later edits of the caller's
  config cannot change a cached program behind its key."""
  return copy.deepcopy(config)


def mesh_key(mesh: Mesh) -> dict[str, Any]:
  """The mesh's devices (ids, in their layout), axis names and shape."""
  return {
    "devices": mesh.device_ids.tolist(),
    "axes": list(mesh.axis_names),
    "platform": mesh.devices.flat[0].platform,
  }


def cached(kind: str, key: Any, build: Callable[[], T]) -> T:
  """What `build()` returned for an equal (`kind`, `key`) earlier in this process, else
  `build()` (kept, the least recently used entry dropped beyond `MAX_ENTRIES`)."""
  name = json.dumps([kind, key], sort_keys=True, default=repr)
  if name in _entries:
    _entries.move_to_end(name)
    return _entries[name]
  value = build()
  _entries[name] = value
  while len(_entries) > MAX_ENTRIES:
    _entries.popitem(last=False)
  return value
