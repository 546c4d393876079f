"""`train_and_evaluate(config, workdir)`: the sharded jit training loop with exact resume.

One code path for one CPU, fake CPU devices and multi-host pods: per-host batches become global
arrays over the mesh's batch axes, the update is jitted with donated state, BN statistics are
global under jit. The workdir holds config.json, metrics.jsonl, TensorBoard events and the
checkpoints; starting again in the same workdir resumes where the last checkpoint left off and
continues the identical loss sequence.
"""

import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sgdnet_jax import compilation_cache, config_utils, distributed, models, variables_io
from sgdnet_jax.data import pipeline
from sgdnet_jax.train import checkpointing, losses, optimizer, writers
from sgdnet_jax.train import state as state_lib


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss stops being finite; the last checkpoint is left as it was."""


def make_train_step(model, tx, schedule, loss_config, mesh, shardings):
  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      outputs, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": rng},
      )
      loss, parts = losses.total_loss(outputs, batch["mask"], loss_config)
      return loss, (parts, updates["batch_stats"])

    (_, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    parts["grad_norm"] = optax.global_norm(grads)
    parts["param_norm"] = optax.global_norm(params)
    parts["lr"] = schedule(state.step)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, parts

  batch_sharding = state_lib.batch_sharding(mesh)
  return jax.jit(
    train_step,
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, state_lib.replicated(mesh)),
    donate_argnums=0,
  )


def make_dice_step(model, mesh, shardings):
  """Per-batch sums for the validation score: per-image foreground Dice (both empty = 1)."""

  def dice_step(variables, batch):
    pred = (
      losses.foreground_probability(model.apply(variables, batch["image"], train=False)["o1"]) > 0.5
    )
    gt = batch["mask"] > 0
    tp = jnp.sum(pred & gt, axis=(1, 2))
    denominator = jnp.sum(pred, axis=(1, 2)) + jnp.sum(gt, axis=(1, 2))
    dice = jnp.where(denominator > 0, 2.0 * tp / jnp.maximum(denominator, 1), 1.0)
    valid = batch["valid"].astype(jnp.float32)
    return jnp.sum(dice * valid), jnp.sum(valid)

  variable_shardings = {"params": shardings.params, "batch_stats": shardings.batch_stats}
  return jax.jit(
    dice_step,
    in_shardings=(variable_shardings, state_lib.batch_sharding(mesh)),
    out_shardings=state_lib.replicated(mesh),
  )


def validation_dice(dice_step, variables, data_config, split: str, batch_size: int, mesh) -> float:
  total = count = 0.0
  for batch in pipeline.make_eval_iterator(data_config, split, batch_size):
    device_batch = state_lib.global_batch({k: batch[k] for k in ("image", "mask", "valid")}, mesh)
    batch_total, batch_count = dice_step(variables, device_batch)
    total += float(batch_total)
    count += float(batch_count)
  return total / max(count, 1.0)


def _load_initial_variables(path: str, state, shardings):
  """Params (and BN statistics) from a `convert` output or another workdir, checked to fit."""
  loaded = variables_io.load_variables(path)
  for collection in ("params", "batch_stats"):
    expected = jax.tree_util.tree_structure(getattr(state, collection))
    got = jax.tree_util.tree_structure(loaded.get(collection, {}))
    if expected != got:
      raise ValueError(
        f"config.init_from={path!r}: its {collection} do not match the model of "
        f"this config (different variant or widths?)"
      )
    for a, b in zip(
      jax.tree_util.tree_leaves(getattr(state, collection)),
      jax.tree_util.tree_leaves(loaded[collection]),
    ):
      if a.shape != b.shape:
        raise ValueError(
          f"config.init_from={path!r}: a {collection} leaf has shape {b.shape}, "
          f"the model expects {a.shape}"
        )
  params = jax.device_put(loaded["params"], shardings.params)
  batch_stats = jax.device_put(loaded["batch_stats"], shardings.batch_stats)
  return state.replace(params=params, batch_stats=batch_stats)


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint); returns a summary."""
  distributed.initialize(config.distributed)
  compilation_cache.enable(config.compilation_cache_dir)
  jax.config.update("jax_default_prng_impl", config.prng_impl)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    config_utils.save_config(config, os.path.join(workdir, "config.json"))

  mesh = state_lib.make_mesh(config.mesh)
  global_batch = config.global_batch_size
  steps_per_epoch = max(
    1, math.ceil(pipeline.split_size(config.data, config.data.train_split) / global_batch)
  )
  total_steps = config.total_steps or config.epochs * steps_per_epoch
  model = models.build(config.model)
  tx, schedule = optimizer.make_optimizer(config.optimizer, steps_per_epoch, config.epochs)
  image_shape = (1, config.data.image_size, config.data.image_size, 3)
  state, shardings = state_lib.create_state(
    model, tx, image_shape, jax.random.PRNGKey(config.seed), mesh, config.mesh.fsdp_min_size
  )
  checkpoints = checkpointing.WorkdirCheckpoints(workdir, config.keep_checkpoints)
  train_iter = pipeline.make_train_iterator(config.data, global_batch, config.seed)
  meta = {"best_dice": -1.0, "best_step": -1}
  if checkpoints.latest_step() is not None:
    abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    state, data_state, meta = checkpoints.restore(abstract)
    train_iter.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))
  elif config.init_from:
    state = _load_initial_variables(config.init_from, state, shardings)

  train_step = distributed.CompiledOnAllProcesses(
    make_train_step(model, tx, schedule, config.loss, mesh, shardings), "train_step"
  )
  dice_step = distributed.CompiledOnAllProcesses(
    make_dice_step(model, mesh, shardings), "dice_step"
  )
  writer = writers.MetricsWriter(workdir)
  preemption = _Preemption()
  step = int(state.step)
  pending = (
    None  # (step, metrics) of the previous step, checked one step late to keep dispatch async.
  )
  window_start, window_steps = time.time(), 0
  last_log: dict[str, Any] = {}

  def save(step):
    checkpoints.save(step, state, train_iter.get_state(), meta)

  def check(pending):
    step_done, metrics = pending
    loss, param_norm = float(metrics["loss"]), float(metrics["param_norm"])
    if not (math.isfinite(loss) and math.isfinite(param_norm)):
      raise NonFiniteLossError(
        f"training loss {loss} (parameter norm {param_norm}) at step {step_done} is not "
        f"finite; stopping. The last checkpoint "
        f"(step {checkpoints.latest_step()}) in {workdir} is intact. Parts: "
        f"{ {k: float(v) for k, v in metrics.items()} }"
      )

  try:
    while step < total_steps:
      batch = state_lib.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      if pending is not None:
        check(pending)
      step += 1
      pending = (step, metrics)
      window_steps += 1
      if step % config.log_every_steps == 0 or step == total_steps:
        check(pending)
        elapsed = time.time() - window_start
        rate = window_steps * global_batch / max(elapsed, 1e-9)
        last_log = {k: float(v) for k, v in metrics.items()}
        writer.write_scalars(
          step, {**last_log, "images_per_sec": rate, "epoch": step / steps_per_epoch}
        )
        eta = (total_steps - step) * global_batch / max(rate, 1e-9)
        if jax.process_index() == 0:
          print(
            f"step {step}/{total_steps}  loss {last_log['loss']:.4f}  {rate:.1f} img/s  "
            f"ETA {eta / 60:.1f} min",
            flush=True,
          )
        window_start, window_steps = time.time(), 0
      epoch_end = step % steps_per_epoch == 0
      epoch = step // steps_per_epoch
      evaluating = config.eval_every_epochs > 0 and (
        (epoch_end and epoch % config.eval_every_epochs == 0) or step == total_steps
      )
      if evaluating:
        check(pending)
        dice = validation_dice(
          dice_step,
          state.variables(),
          config.data,
          config.data.val_split,
          config.eval_batch_size,
          mesh,
        )
        writer.write_scalars(step, {"val_dice": dice, "epoch": step / steps_per_epoch})
        if jax.process_index() == 0:
          print(
            f"step {step}: validation Dice {dice:.4f} (best {max(dice, meta['best_dice']):.4f})",
            flush=True,
          )
        if dice > meta["best_dice"]:
          meta = {"best_dice": dice, "best_step": step}
          checkpoints.save_best(step, state.variables())
      checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
      if step % checkpoint_every == 0 or step == total_steps:
        check(pending)
        save(step)
      if preemption.requested:
        check(pending)
        save(step)
        break
    if pending is not None:
      check(pending)
  finally:
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    preemption.restore()
  return {
    "step": step,
    "total_steps": total_steps,
    "best_dice": meta["best_dice"],
    "best_step": meta["best_step"],
    "last": last_log,
    "preempted": preemption.requested,
  }
