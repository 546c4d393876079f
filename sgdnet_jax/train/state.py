"""The train state, created directly in its sharded layout (`sgdnet_jax.core.sharding`)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sgdnet_jax.core import sharding


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray

  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class Init:
  """The jitted init of a train state in its sharded layout (rng -> state), the state's
  shardings and its abstract value (shapes and dtypes, for checks before a run)."""

  init: Callable[[jax.Array], TrainState]
  shardings: TrainState
  abstract: TrainState


def make_init(model, tx, image_shape: tuple[int, ...], mesh: Mesh, min_size: int) -> Init:
  """The init of `model`'s state with `tx`'s optimizer state, for a key of the default PRNG
  implementation (`jax_default_prng_impl`)."""

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng}, jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      rng=state_rng,
    )

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.param_sharding(abstract, mesh, min_size)
  return Init(jax.jit(init, out_shardings=shardings), shardings, abstract)


def create_state(
  model, tx, image_shape: tuple[int, ...], rng: jax.Array, mesh: Mesh, min_size: int
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly in its sharded layout; returns (state, its shardings)."""
  made = make_init(model, tx, image_shape, mesh, min_size)
  return made.init(rng), made.shardings
