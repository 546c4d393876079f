"""The model's probability: test-time augmentation and the mean over an ensemble, in one function.

`probability_maps` is the one definition that `evaluate` (inside its jitted step), `predict`
(through `probability_fn`, plain and tiled) and the StableHLO export call:

* Test-time augmentation (`TTA_MODES`): `none` is the plain forward; `flip` averages the maps
  over the four mirrorings (identity, horizontal, vertical, both), as nnU-Net mirrors in 2-D;
  `flip_rot` over the eight symmetries of the square (four 90-degree rotations, each also
  mirrored). Every prediction is mapped back to the input's orientation before averaging.
* Ensembles: the mean over several variable sets of one architecture (e.g. the five folds);
  one set is the plain model.

Also here: `check_same_structure` (the members share one architecture) and `check_tta`, checked
before anything is loaded or traced.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.core import errors

TTA_MODES = ("none", "flip", "flip_rot")
# (quarter turns, mirrored first) for each symmetry each TTA mode averages over.
_SYMMETRIES = {
  "none": ((0, False),),
  # Identity, left-right, up-down (= half turn of the left-right mirror), both (= half turn).
  "flip": ((0, False), (0, True), (2, True), (2, False)),
  "flip_rot": tuple((k, m) for k in range(4) for m in (False, True)),
}

Maps = dict[str, jax.Array]


def check_tta(tta: str):
  if tta not in TTA_MODES:
    raise errors.UserError(f"--tta {tta!r}: unknown mode; use one of {', '.join(TTA_MODES)}")


def _transform(x: jax.Array, quarter_turns: int, mirrored: bool) -> jax.Array:
  """A symmetry of the (height, width) axes 1 and 2 of an (N, H, W[, C]) array."""
  if mirrored:
    x = jnp.flip(x, axis=2)
  return jnp.rot90(x, quarter_turns, axes=(1, 2)) if quarter_turns else x


def _inverse(x: jax.Array, quarter_turns: int, mirrored: bool) -> jax.Array:
  if quarter_turns:
    x = jnp.rot90(x, -quarter_turns, axes=(1, 2))
  return jnp.flip(x, axis=2) if mirrored else x


def with_tta(forward: Callable[[jax.Array], Maps], images: jax.Array, tta: str) -> Maps:
  """Mean of `forward`'s (N, H, W) maps over the symmetries of `tta`, each mapped back.

  The transformed batches run one after another through a single traced `forward`
  (`lax.map`), so compile time and memory do not grow with the number of symmetries.
  """
  if tta == "none":
    return forward(images)
  symmetries = _SYMMETRIES[tta]
  if tta == "flip_rot" and images.shape[1] != images.shape[2]:
    raise ValueError(f"--tta flip_rot needs square inputs, got {images.shape[1:3]}")
  stacked = jnp.stack([_transform(images, k, m) for k, m in symmetries])
  outputs = jax.lax.map(forward, stacked)
  return {
    name: sum(_inverse(maps[t], k, m) for t, (k, m) in enumerate(symmetries)) / len(symmetries)
    for name, maps in outputs.items()
  }


def probability_maps(
  model, variable_sets: Sequence[Any], images: jax.Array, tta: str = "none", edge: bool = False
) -> Maps:
  """{'probability': (N, H, W)[, 'edge': (N, H, W)]} of normalised NHWC `images`; traceable.

  `probability` is the foreground probability of the final output o1, `edge` the SGE edge map
  (zeros for models without one). Each is the `tta` mean (`with_tta`) of every variable set,
  then the mean over the sets, summed in their order and divided once; one set with tta='none'
  is exactly the plain forward. The members are traced one after another into one program.
  """
  check_tta(tta)

  def forward(variables, x):
    outputs = model.apply(variables, x, train=False)
    maps = {"probability": models.foreground_probability(outputs["o1"])}
    if edge:
      maps["edge"] = outputs["edge"][..., 0] if "edge" in outputs else jnp.zeros(x.shape[:3])
    return maps

  def member(variables):
    return with_tta(lambda x: forward(variables, x), images, tta)

  total = member(variable_sets[0])
  if len(variable_sets) == 1:
    return total
  for variables in variable_sets[1:]:
    total = jax.tree_util.tree_map(jnp.add, total, member(variables))
  return jax.tree_util.tree_map(lambda t: t / len(variable_sets), total)


@functools.lru_cache(maxsize=8)
def probability_fn(model, tta: str = "none", edge: bool = False) -> Callable:
  """`probability_maps` jitted: (variable sets, images NHWC) -> maps.

  Cached: an equal model (same config) reuses the traced and compiled function.
  """
  check_tta(tta)
  return jax.jit(functools.partial(probability_maps, model, tta=tta, edge=edge))


def check_same_structure(variable_sets: Sequence[Any], names: Sequence[str]):
  """Refuses an ensemble whose members do not share one architecture (tree and shapes)."""
  reference = jax.tree_util.tree_map(np.shape, variable_sets[0])
  for variables, name in zip(variable_sets[1:], names[1:]):
    if jax.tree_util.tree_map(np.shape, variables) != reference:
      raise errors.UserError(
        f"--workdir {name}: its model differs from that of {names[0]} (parameter names or "
        "shapes); ensemble only workdirs trained with the same model config"
      )
