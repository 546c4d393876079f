"""Training: losses, optimiser parity, non-finite stop (exact resume after SIGKILL:
tests/test_train_workdir.py; signals and preemption: tests/test_train_robust.py; evaluating the
run: tests/test_inference_evaluate.py)."""

import json
import math
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import default
from sgdnet_jax.core import config_utils
from sgdnet_jax.train import loop, losses, optimizer, writers
from sgdnet_jax.workdir import checkpointing, layout, variables_io
from tests import tolerances, train_helpers


def test_loss_matches_a_hand_computed_value():
  mask = np.zeros((1, 4, 4), np.uint8)
  mask[0, 1:3, 1:3] = 1
  logits = np.full((1, 4, 4, 1), -2.0, np.float32)
  logits[0, 1:3, 1:3, 0] = 3.0
  logits[0, 0, 0, 0] = 1.0  # one false positive
  outputs = {k: jnp.asarray(logits) for k in ("o1", "o2", "o3")}
  config = default.get_config().loss
  config.edge_weight = 0.0
  loss, parts = losses.total_loss(outputs, jnp.asarray(mask), config)
  p = 1 / (1 + np.exp(-logits[0, ..., 0]))
  t = mask[0].astype(np.float64)
  bce = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
  ratio = (2 * np.sum(p * t) + 1) / (np.sum(p) + np.sum(t) + 1)
  dice = 1 - ratio
  # float32 sums of 16 pixels: BCE within 16 eps of itself; the Dice ratio (two such sums) within
  # 2 x 16 eps of itself, which 1 - ratio turns into an absolute error.
  bound = tolerances.rounding(np.float32, 2 * p.size, bce + ratio)
  assert float(parts["loss_o1"]) == pytest.approx(bce + dice, rel=0, abs=bound)
  assert float(loss) == pytest.approx(3 * (bce + dice), rel=0, abs=3 * bound)
  # Two-class logits [0, z] give the same probabilities, hence the same loss.
  two = {k: jnp.concatenate([jnp.zeros_like(v), v], -1) for k, v in outputs.items()}
  assert float(losses.total_loss(two, jnp.asarray(mask), config)[0]) == pytest.approx(
    float(loss), rel=0, abs=2 * 3 * bound
  )


def test_edge_term_uses_the_outer_disk2_ring():
  from skimage.morphology import dilation, disk

  rng = np.random.default_rng(0)
  mask = (rng.random((2, 20, 20)) > 0.8).astype(np.uint8)
  ring = np.asarray(losses.boundary_target(jnp.asarray(mask)))
  for m, e in zip(mask, ring):
    np.testing.assert_array_equal(e, dilation(m, disk(2)) - m)
  # Probability 0.5 on the ring: every sum is exact in float32 (multiples of 0.5), so only the
  # ratio (S + 1) / (1.5 S + 1) ~ 2/3 rounds; 1 - ratio is exact and amplifies that by
  # ratio / (1 - ratio) = 2, the mean over two samples rounds once more: 3 unit roundoffs, and
  # 4 eps leaves room for a division computed as a reciprocal and a product.
  edge = jnp.asarray(ring[..., None] * 0.5)
  outputs = {
    "o1": jnp.zeros((2, 20, 20, 1)),
    "o2": jnp.zeros((2, 20, 20, 1)),
    "o3": jnp.zeros((2, 20, 20, 1)),
    "edge": edge,
  }
  _, parts = losses.total_loss(outputs, jnp.asarray(mask), default.get_config().loss)
  expected = np.mean([1 - (2 * 0.5 * r.sum() + 1) / (0.5 * r.sum() + r.sum() + 1) for r in ring])
  assert float(parts["loss_edge"]) == pytest.approx(
    expected, rel=tolerances.rounding(np.float32, 4)
  )


def test_structure_loss_weights_each_sample_by_its_own_map():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 40, 40, 2)), jnp.float32)
  mask = np.zeros((2, 40, 40), np.float32)
  mask[0, 5:30, 5:30] = 1  # only sample 0 has a lesion: the two weight maps differ.
  batch = losses.structure_loss(logits, jnp.asarray(mask))
  single = [
    losses.structure_loss(logits[i : i + 1], jnp.asarray(mask[i : i + 1]))[0] for i in range(2)
  ]
  # Both are float32 means over the 40 x 40 pixels, reduced in whichever order XLA picks.
  np.testing.assert_allclose(batch, single, rtol=tolerances.rounding(np.float32, 40 * 40))


def test_optimizer_matches_torch_adam_with_clip_and_coupled_weight_decay():
  config = default.get_config().optimizer
  config.lr = 1e-2
  tx, schedule = optimizer.make_optimizer(config, steps_per_epoch=2, total_steps=8)
  rng = np.random.default_rng(2)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(scale=2.0, size=(5, 3)).astype(np.float32) for _ in range(5)]
  params = jnp.asarray(w0)
  state = tx.init(params)
  weight = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  torch_opt = torch.optim.Adam([weight], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-5)
  for step, g in enumerate(grads):
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
    for group in torch_opt.param_groups:  # CTO's poly_lr, set at the start of each epoch.
      group["lr"] = 1e-2 * (1 - (step // 2) / 4) ** 0.9
    weight.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_value_([weight], 0.5)
    torch_opt.step()
    # float32 on both sides, element-wise: about ten roundings per step (clip, decay, two moments,
    # two bias corrections, sqrt, division, learning rate, update), accumulating over the steps;
    # relative to the parameter, or to the learning rate for parameters near zero.
    roundings = 10 * (step + 1)
    np.testing.assert_allclose(
      params,
      weight.detach().numpy(),
      rtol=tolerances.rounding(np.float32, roundings),
      atol=tolerances.rounding(np.float32, roundings, 1e-2),
    )
  # The float32 schedule: a power and a product, a few roundings.
  assert float(schedule(0)) == float(schedule(1)) == pytest.approx(1e-2, rel=tolerances.EPS32)
  assert float(schedule(2)) == pytest.approx(
    1e-2 * 0.75**0.9, rel=tolerances.rounding(np.float32, 4)
  )


@pytest.fixture(scope="module")
def data_dir(reference_training):
  return reference_training.data_dir


@pytest.fixture(scope="module")
def reference_run(reference_training):
  return reference_training.workdir, reference_training.config, reference_training.summary


@pytest.fixture(scope="module")
def reference_output(reference_training):
  return reference_training.workdir, reference_training.config, reference_training.printed


def test_training_writes_config_metrics_events_and_checkpoints(reference_run):
  workdir, config, summary = reference_run
  assert summary["step"] == 6 and summary["best_step"] > 0
  names = set(os.listdir(workdir))
  assert {"config.json", "metrics.jsonl", "checkpoints", "best"} <= names
  assert any(n.startswith("events.out.tfevents") for n in names)
  losses_by_step = train_helpers.step_losses(workdir)
  assert sorted(losses_by_step) == [1, 2, 3, 4, 5, 6]
  assert all(math.isfinite(v) for v in losses_by_step.values())
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [2, 4, 6]
  written = json.loads((workdir / "config.json").read_text())
  assert written["total_steps"] == 6 and written["model"]["variant"] == config.model.variant


def test_without_tensorboard_only_metrics_jsonl_is_written(tmp_path):
  writer = writers.MetricsWriter(tmp_path, tensorboard=False)
  writer.write_scalars(1, {"loss": np.float32(0.5)})
  writer.close()
  assert os.listdir(tmp_path) == [layout.METRICS_FILE]
  assert train_helpers.step_losses(tmp_path) == {1: 0.5}


def test_compilation_is_announced_and_left_out_of_the_throughput(reference_output):
  # The step-2 rate must not hold the first step, which compiles.
  workdir, config, lines = reference_output
  order = [
    "compiling the train step (first step only)…",
    "compiled the train step: step 1 took",
    "step 2/6  loss",
    "compiling the validation step (first validation only)…",
    "step 4: validation Dice",
  ]
  found = [next(i for i, line in enumerate(lines) if line.startswith(o)) for o in order]
  assert found == sorted(found), lines
  first_step_seconds = float(re.search(r"took ([\d.]+) s", lines[found[1]]).group(1))
  assert re.fullmatch(r"step 2/6  loss [\d.]+  [\d.]+ img/s  ETA [\d.]+ min", lines[found[2]])
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  (rate,) = [r["images_per_sec"] for r in records if r["step"] == 2 and "images_per_sec" in r]
  # The rate times step 2 alone (one batch); with the compiling first step in its window it would
  # be two batches over more than first_step_seconds.
  assert config.global_batch_size / rate < first_step_seconds / 2, (rate, first_step_seconds)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
  reference_run, data_dir, tmp_path
):
  """The reference's checkpoints up to step 4 resumed with a learning rate whose first update
  overflows the parameters (step 5)."""
  reference, _, _ = reference_run
  workdir = tmp_path / "exploding"
  shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
  shutil.rmtree(workdir / "checkpoints" / "6")
  config = config_utils.load_config(
    train_helpers.TRAIN_CONFIG, train_helpers.overrides(data_dir, **train_helpers.EXPLODING_FIELDS)
  )
  with pytest.raises(loop.NonFiniteLossError, match=r"stopping; the last checkpoint \(step 4\)"):
    loop.train_and_evaluate(config, str(workdir))
  manager = checkpointing.WorkdirCheckpoints(str(workdir))
  assert manager.latest_step() == 4
  restored = variables_io.load_variables(str(workdir))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(restored))
