"""CTO's optimiser (SPEC §0.8, §4.3) in optax.

Element-wise gradient clip, coupled L2 weight decay added to the gradient before Adam (as torch's
Adam does), Adam(0.9, 0.99, 1e-8), and a poly schedule that is constant within an epoch:
lr(e) = lr0 * (1 - e / epochs) ** power for 0-based epoch e.
"""

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax


def poly_epoch_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return config.lr * jnp.maximum(1.0 - epoch / epochs, 0.0) ** config.poly_power

  return schedule


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int):
  """Returns (optax transformation, learning-rate schedule)."""
  schedule = poly_epoch_schedule(config, steps_per_epoch, epochs)
  transforms = []
  if config.grad_clip:
    transforms.append(optax.clip(config.grad_clip))
  if config.weight_decay:
    transforms.append(optax.add_decayed_weights(config.weight_decay))
  transforms += [
    optax.scale_by_adam(config.b1, config.b2, config.eps),
    optax.scale_by_learning_rate(schedule),
  ]
  return optax.chain(*transforms), schedule
