"""The train state, created directly in its sharded layout (`sgdnet_jax.core.sharding`)."""

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


def create_state(
  model, tx, image_shape: tuple[int, ...], rng: jax.Array, mesh: Mesh, min_size: int
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly in its sharded layout; returns (state, its shardings)."""

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

  abstract = jax.eval_shape(init, rng)
  shardings = sharding.param_sharding(abstract, mesh, min_size)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings
