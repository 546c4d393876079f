"""The poly schedule ends at its end value on the run's last step, whichever sets the length."""

import numpy as np
import pytest

from configs import default
from sgdnet_jax.train import optimizer
from tests import tolerances

POWER = 0.9
# optax evaluates the schedule in float32: a power and a few products, each rounded once.
RATE_TOLERANCE = tolerances.rounding(np.float32, terms=8)


def _rates(steps_per_epoch: int, total_steps: int) -> np.ndarray:
  """The learning rate of every step, relative to lr0 (set to 1: float32 rates are then exact
  at 1 and within a few float32 ulps elsewhere)."""
  config = default.get_config().optimizer
  config.lr = 1.0
  _, schedule = optimizer.make_optimizer(config, steps_per_epoch, total_steps)
  return np.array([float(schedule(step)) for step in range(total_steps)])


def test_an_epochs_driven_run_is_ctos_poly_schedule():
  rates = _rates(steps_per_epoch=3, total_steps=4 * 3)  # epochs = 4
  expected = np.repeat([(1 - e / 4) ** POWER for e in range(4)], 3)
  np.testing.assert_allclose(rates, expected, rtol=RATE_TOLERANCE)
  assert rates[-1] == pytest.approx((1 / 4) ** POWER, rel=RATE_TOLERANCE)


@pytest.mark.parametrize("total_steps", [1, 5, 7, 40])
def test_a_total_steps_run_reaches_the_end_value_on_its_last_step(total_steps):
  # 3 steps per epoch; config.epochs (50 by default) plays no part.
  rates = _rates(steps_per_epoch=3, total_steps=total_steps)
  epochs = -(-total_steps // 3)  # the last, possibly partial, epoch counts
  assert rates[0] == 1.0
  assert rates[-1] == pytest.approx((1 / epochs) ** POWER, rel=RATE_TOLERANCE)
  assert np.all(rates > 0) and np.all(np.diff(rates) <= 0)
  assert len(np.unique(rates)) == epochs  # constant within an epoch, one value per epoch


def test_a_run_without_steps_is_refused():
  with pytest.raises(ValueError, match="expected positive"):
    optimizer.make_optimizer(default.get_config().optimizer, 3, 0)
