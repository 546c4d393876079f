"""CTO's optimiser (SPEC §0.8, §4.3) in optax.

Element-wise gradient clip, coupled L2 weight decay added to the gradient before Adam (as torch's
Adam does), Adam(0.9, 0.99, 1e-8), and a poly schedule that is constant within an epoch:
lr(e) = lr0 * (1 - e / E) ** power for 0-based epoch e, where E = ceil(total steps / steps per
epoch) is the number of (possibly partial) epochs the run spans, whether `config.epochs` or
`config.total_steps` set its length. The last step thus always runs at the end value
lr0 * (1 / E) ** power (CTO's last epoch), and no step runs at a learning rate of 0.
"""

import math
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax


def schedule_epochs(steps_per_epoch: int, total_steps: int) -> int:
  """E: the epochs a run of `total_steps` spans, the last one possibly partial."""
  if steps_per_epoch <= 0 or total_steps <= 0:
    raise ValueError(
      f"steps per epoch {steps_per_epoch} and total steps {total_steps}: expected positive"
    )
  return math.ceil(total_steps / steps_per_epoch)


def poly_epoch_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
  epochs = schedule_epochs(steps_per_epoch, total_steps)

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch)
    return config.lr * jnp.maximum(1.0 - epoch / epochs, 0.0) ** config.poly_power

  return schedule


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int):
  """Returns (optax transformation, learning-rate schedule) for a run of `total_steps` steps."""
  schedule = poly_epoch_schedule(config, steps_per_epoch, total_steps)
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
