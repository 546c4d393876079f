"""`train_and_evaluate(config, workdir)`: the sharded jit training loop with exact resume.

One code path for one CPU, fake CPU devices and multi-host pods: per-host batches become global
arrays over the mesh's batch axes, the update is jitted with donated state, BN statistics are
global under jit. The workdir (a local folder or a `gs://` URL, see `sgdnet_jax.core.paths`) holds
config.json, metrics.jsonl, TensorBoard events and the checkpoints; starting again in the same
workdir resumes where the last checkpoint left off and continues the identical loss sequence.
"""

import contextlib
import dataclasses
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import optax

from sgdnet_jax import metrics, models
from sgdnet_jax.core import compilation_cache, distributed, errors, paths, programs, sharding
from sgdnet_jax.data import pipeline
from sgdnet_jax.inference import evaluate
from sgdnet_jax.porting import pretrained
from sgdnet_jax.train import losses, optimizer, preemption, writers
from sgdnet_jax.train import state as state_lib
from sgdnet_jax.workdir import checkpointing, guard, image_size, variables_io


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Raised when the training loss stops being finite; the last checkpoint is left as it was."""


@dataclasses.dataclass
class BestCheckpoint:
  """The best validation Dice so far and its step (-1: none yet); saved with every checkpoint."""

  dice: float = -1.0
  step: int = -1

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "BestCheckpoint":
    return cls(dice=float(record["best_dice"]), step=int(record["best_step"]))

  def to_json(self) -> dict[str, Any]:
    return {"best_dice": self.dice, "best_step": self.step}


def due(step: int, every: int, total: int) -> bool:
  """True every `every` steps (never when `every` <= 0) and at the last step (as `itstime`)."""
  return step == total or (every > 0 and step % every == 0)


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

  batch_sharding = sharding.batch_sharding(mesh)
  return jax.jit(
    train_step,
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def _programs_key(config, steps_per_epoch: int, total_steps: int, mesh) -> dict[str, Any]:
  """What `config`'s init and train step depend on besides argument shapes and dtypes."""
  return {
    "model": programs.config_key(config.model),
    "optimizer": programs.config_key(config.optimizer),
    "schedule": [steps_per_epoch, total_steps],
    "image_size": config.data.image_size,
    "mesh": programs.mesh_key(mesh),
    "fsdp_min_size": config.mesh.fsdp_min_size,
    "prng_impl": config.prng_impl,
  }


@dataclasses.dataclass(frozen=True)
class _Setup:
  """A config's model, optimizer, schedule and state init (`state.Init`)."""

  model: Any
  tx: Any
  schedule: Any
  init: state_lib.Init


def _setup(config, steps_per_epoch: int, total_steps: int, mesh) -> _Setup:
  """`config`'s `_Setup`, the same one for an equal key within the process (core.programs)."""
  model_config, optimizer_config = programs.frozen(config.model), programs.frozen(config.optimizer)
  image_shape = (1, config.data.image_size, config.data.image_size, 3)
  min_size = config.mesh.fsdp_min_size

  def build():
    try:
      model = models.build(model_config)
    except ValueError as error:
      raise errors.ConfigError(f"{error}; fix that --config.model field") from None
    tx, schedule = optimizer.make_optimizer(optimizer_config, steps_per_epoch, total_steps)
    return _Setup(model, tx, schedule, state_lib.make_init(model, tx, image_shape, mesh, min_size))

  return programs.cached(
    "train_setup", _programs_key(config, steps_per_epoch, total_steps, mesh), build
  )


def _train_step(config, start: "_Start", mesh) -> tuple[Any, bool]:
  """`make_train_step` of `config`, the same jitted function for an equal key (core.programs),
  and whether it is new to this process (then its first call compiles or loads it)."""
  key = _programs_key(config, start.steps_per_epoch, start.total_steps, mesh)
  key["loss"] = programs.config_key(config.loss)
  loss_config = programs.frozen(config.loss)
  setup = start.setup
  built = []

  def build():
    built.append(True)
    return make_train_step(
      setup.model, setup.tx, setup.schedule, loss_config, mesh, setup.init.shardings
    )

  return programs.cached("train_step", key, build), bool(built)


def validation_dice(step_fn, variables, config: ml_collections.ConfigDict, mesh) -> float:
  """Dice on the validation split under `config.metrics` (the same collection as `evaluate`)."""
  record, _ = evaluate.collect_split(
    step_fn, [variables], config, config.data.val_split, mesh, device_metrics=True
  )
  options = evaluate.metric_options(config, "train")
  record = {k: v for k, v in record.items() if k != "index"}
  return metrics.compute_results(record, options).values["dice"]


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


def _check_finite(pending, checkpoints, workdir: paths.Path, lr: float):
  """Raises NonFiniteLossError at the first (step, metrics) whose loss or weights are not finite."""
  for step, scalars in pending:
    loss, param_norm = float(scalars["loss"]), float(scalars["param_norm"])
    if not (math.isfinite(loss) and math.isfinite(param_norm)):
      checkpoints.wait()
      latest = checkpoints.latest_step()
      intact = (
        f"the last checkpoint (step {latest}) in {workdir} is intact"
        if latest is not None
        else f"no checkpoint was saved in {workdir} yet"
      )
      raise NonFiniteLossError(
        f"training loss {loss} (parameter norm {param_norm}) at step {step} is not finite; "
        f"stopping; {intact}. Try a lower --config.optimizer.lr (now {lr}) with the same "
        f"command"
      )


def schedule_length(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(steps per epoch, total steps) of training per `config` (data.dir must be prepared)."""
  train_size = pipeline.split_size(config.data, config.data.train_split)
  steps_per_epoch = max(1, math.ceil(train_size / config.global_batch_size))
  return steps_per_epoch, config.total_steps or config.epochs * steps_per_epoch


@dataclasses.dataclass
class _Start:
  """What the checks before a run found: its schedule, model, optimizer, and when its
  checkpoints hold another optimizer state (`--reset-optimizer`), the recorded config's
  optimizer and PRNG implementation to restore them with."""

  steps_per_epoch: int
  total_steps: int
  setup: _Setup
  recorded_tx: Any = None
  recorded_prng_impl: str = ""


def _check_batch_sizes(config: ml_collections.ConfigDict, train_size: int, devices: int):
  """ConfigError unless the batch sizes fit the training split, the devices and the processes."""
  for field in ("global_batch_size", "eval_batch_size"):
    value = config[field]
    if not isinstance(value, int) or value <= 0:
      raise errors.ConfigError(f"{field}={value!r}: expected a positive number of images")
  if config.global_batch_size % devices:
    raise errors.ConfigError(
      f"global_batch_size={config.global_batch_size} is not a multiple of the {devices} "
      f"devices of the mesh; give a multiple of {devices}"
    )
  for field in ("global_batch_size", "eval_batch_size"):
    if config[field] % jax.process_count():
      raise errors.ConfigError(
        f"{field}={config[field]} is not a multiple of the {jax.process_count()} processes"
      )
  if config.global_batch_size > train_size:
    raise errors.ConfigError(
      f"global_batch_size={config.global_batch_size} is larger than the training split "
      f"'{config.data.train_split}' of {config.data.dir} ({train_size} cases); give at most "
      f"{train_size}"
    )


def _optimizer_fits(recorded: dict[str, Any], config, start: _Start, abstract_params) -> bool:
  """True when the optimizer state that `recorded` (config.json) trained with has the tree,
  shapes and dtypes of `config`'s, and the PRNG implementation is the same; sets
  `start.recorded_*` either way."""
  recorded_optimizer = ml_collections.ConfigDict(
    {**config.optimizer.to_dict(), **recorded.get("optimizer", {})}
  )
  recorded_tx, _ = optimizer.make_optimizer(
    recorded_optimizer, start.steps_per_epoch, start.total_steps
  )
  shapes = lambda tx: jax.tree_util.tree_map(
    lambda x: (x.shape, x.dtype), jax.eval_shape(tx.init, abstract_params)
  )
  new, old = shapes(start.setup.tx), shapes(recorded_tx)
  prng_impl = recorded.get("prng_impl", config.prng_impl)
  start.recorded_tx, start.recorded_prng_impl = recorded_tx, prng_impl
  same_tree = jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(old)
  return same_tree and new == old and prng_impl == config.prng_impl


def check_start(
  config: ml_collections.ConfigDict, workdir: paths.Path, reset_optimizer: bool = False
) -> _Start:
  """Every check that can refuse a run, before anything is written (ConfigError/UserError).

  The model fields, the batch sizes against the splits and the devices, the length of the
  run, a validation split that validation needs, the initial weights, a workdir's recorded
  model, and whether its checkpoints' optimizer state fits the optimizer of `config`: when it
  does not (grad_clip or weight_decay switched on or off, another prng_impl), the run is
  refused naming the fields, unless `reset_optimizer` (then `_Start.recorded_*` say how to
  read the checkpoints, whose weights are kept and optimizer state dropped).
  """
  mesh = sharding.make_mesh(config.mesh)
  train_size = pipeline.split_size(config.data, config.data.train_split)
  _check_batch_sizes(config, train_size, mesh.size)
  if config.total_steps < 0 or (not config.total_steps and config.epochs <= 0):
    raise errors.ConfigError(
      f"epochs={config.epochs}, total_steps={config.total_steps}: give a positive number of "
      f"epochs (or of total_steps)"
    )
  if config.eval_every_epochs > 0 and not pipeline.split_size(config.data, config.data.val_split):
    raise errors.ConfigError(
      f"the validation split '{config.data.val_split}' of {config.data.dir} is empty but "
      f"eval_every_epochs={config.eval_every_epochs} validates on it; give a split with cases "
      f"(--config.data.val_split) or --config.eval_every_epochs=0"
    )
  steps_per_epoch, total_steps = schedule_length(config)
  setup = _setup(config, steps_per_epoch, total_steps, mesh)
  start = _Start(steps_per_epoch, total_steps, setup)
  abstract_params = setup.init.abstract.params
  recorded = guard.check_config(workdir, config)
  if not checkpointing.trained_steps(workdir):
    if config.init_from and not paths.as_path(config.init_from).exists():
      raise errors.ConfigError(
        f"config.init_from={config.init_from!r} does not exist; give a `convert` output or "
        f"a workdir"
      )
    if not config.init_from:
      pretrained.resolve(config.model.pretrained)
    return start
  if recorded is None or _optimizer_fits(recorded, config, start, abstract_params):
    start.recorded_tx = None  # The checkpoints restore into this run's state.
  else:
    changed = [
      key
      for key in guard.config_changes(recorded, config.to_dict())[1]
      if key.startswith("optimizer.") or key == "prng_impl"
    ]
    fields = guard.describe_changes(recorded, config.to_dict(), changed)
    if not reset_optimizer:
      raise errors.UserError(
        f"the checkpoints of {workdir} hold an optimizer state that the changed fields "
        f"({fields}; recorded -> given) cannot continue; resume with the recorded values, or "
        f"add --reset-optimizer to keep the weights and start a fresh optimizer state"
      )
    logging.warning(
      "--reset-optimizer: the optimizer state of %s does not fit (%s); keeping its weights, "
      "BN statistics and step, starting a fresh optimizer state",
      workdir,
      fields,
    )
  return start


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, reset_optimizer: bool = False
) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint); returns an outcome.

  Every check that can refuse the run (`check_start`) runs before anything is written: a
  refused run leaves the workdir as it found it. The workdir is then locked for the run
  (`workdir.locked`) and `config` recorded (`workdir.check_and_record_config`).
  `reset_optimizer`: resume checkpoints whose optimizer state does not fit `config` with a
  fresh optimizer state (otherwise refused).
  """
  stop = preemption.StopDecision()  # From here on a signal stops the run (before its first step)
  try:
    distributed.initialize(config.distributed)
    stop.joined()
    return _train_in_workdir(config, workdir, reset_optimizer, stop)
  finally:
    stop.restore()


def _train_in_workdir(
  config, workdir, reset_optimizer: bool, stop: preemption.StopDecision
) -> dict[str, Any]:
  compilation_cache.enable(config.compilation_cache_dir)
  jax.config.update("jax_default_prng_impl", config.prng_impl)
  workdir = paths.as_path(workdir)
  config.data.image_size = image_size.resolve(config, [workdir])  # recorded as trained
  start = check_start(config, workdir, reset_optimizer)
  with contextlib.ExitStack() as stack:
    refusal = ""
    if jax.process_index() == 0:
      try:
        stack.enter_context(guard.locked(workdir))
      except errors.UserError as error:
        refusal = str(error)
    refusal = distributed.from_process0(f"workdir_lock:{workdir}", refusal)
    if refusal:
      raise errors.UserError(refusal)
    try:
      guard.check_and_record_config(workdir, config, write=jax.process_index() == 0)
      return _train_until_done_or_stopped(config, workdir, start, stop)
    except OSError as error:  # A full disk, a read-only or forbidden folder while writing.
      raise _write_error(workdir, error) from error


def _write_error(workdir: paths.Path, error: OSError) -> errors.UserError:
  """The one-line error of a failed write in `workdir` (no space, read-only, permission)."""
  where = error.filename or workdir
  reason = error.strerror or str(error)
  return errors.UserError(
    f"cannot write {where} ({reason}); free space or fix the permissions of {workdir}, then "
    f"run the same command again (it resumes from the last checkpoint)"
  )


def _restore_abstract(state, shardings, start: _Start, mesh, min_size: int):
  """The abstract state to restore the checkpoints into (from this run's abstract `state`):
  this run's, or with `--reset-optimizer` the recorded run's optimizer state and PRNG key."""
  place = lambda tree, where: jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, where
  )
  if start.recorded_tx is None:
    return place(state, shardings)
  recorded = state.replace(
    opt_state=jax.eval_shape(start.recorded_tx.init, state.params),
    rng=jax.eval_shape(
      lambda: jax.random.key_data(jax.random.key(0, impl=start.recorded_prng_impl))
    ),
  )
  return place(recorded, sharding.param_sharding(recorded, mesh, min_size))


def _train_until_done_or_stopped(
  config, workdir: str, start: _Start, stop: preemption.StopDecision
) -> dict[str, Any]:
  mesh = sharding.make_mesh(config.mesh)
  steps_per_epoch, total_steps = start.steps_per_epoch, start.total_steps
  # The initial state is computed only where a run needs it: a resume restores into the abstract
  # state (no init program to load and run).
  init, shardings = start.setup.init, start.setup.init.shardings
  initial_state = lambda: init.init(jax.random.PRNGKey(config.seed))
  checkpoints = checkpointing.WorkdirCheckpoints(workdir, config.keep_checkpoints)
  train_iter = pipeline.make_train_iterator(config.data, config.global_batch_size, config.seed)
  best = BestCheckpoint()
  restored = None
  if checkpoints.latest_step() is not None:
    abstract = _restore_abstract(init.abstract, shardings, start, mesh, config.mesh.fsdp_min_size)
    restored = checkpoints.restore_newest_intact(abstract)
    if restored is None:
      logging.warning("no checkpoint in %s could be restored: starting from scratch", workdir)
  if restored is not None:
    restored_state, data_state, best_record = restored
    if start.recorded_tx is None:
      state = restored_state
    else:  # --reset-optimizer: the weights and step; this run's fresh optimizer state.
      fresh = initial_state()
      state = fresh.replace(
        step=restored_state.step,
        params=restored_state.params,
        batch_stats=restored_state.batch_stats,
        rng=restored_state.rng if start.recorded_prng_impl == config.prng_impl else fresh.rng,
      )
    train_iter.set_state(data_state)
    best = BestCheckpoint.from_json(best_record)
    logging.info("resumed from step %d", int(state.step))
  elif config.init_from:
    state = _load_initial_variables(config.init_from, initial_state(), shardings)
  else:
    state = initial_state()
    variables, loaded = pretrained.initialize_encoder(config.model.pretrained, state.variables())
    state = state.replace(
      params=jax.device_put(variables["params"], shardings.params),
      batch_stats=jax.device_put(variables["batch_stats"], shardings.batch_stats),
    )
    if jax.process_index() == 0:
      print(loaded, flush=True)

  train_step, new_train_step = _train_step(config, start, mesh)
  train_step = distributed.CompiledOnAllProcesses(train_step, "train_step")
  eval_step = distributed.CompiledOnAllProcesses(
    evaluate.eval_step_for(
      config.model, mesh, device_metrics=True, distances=False, one_empty="nan", probability=False
    ),
    "validation_step",
  )
  validate_every = config.eval_every_epochs * steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  is_main = jax.process_index() == 0
  writer = writers.MetricsWriter(workdir, tensorboard=config.tensorboard)
  step = start_step = int(state.step)
  pending = []  # (step, metrics) not yet checked: reading them waits for the device.
  # Throughput and ETA count the steps after the first, which compiles the train step: its
  # minutes would otherwise make the first ETA many times too long.
  window_start, window_steps = None, 0
  validation_compiled = False
  last_log: dict[str, Any] = {}
  if is_main and step < total_steps and new_train_step:
    print("compiling the train step (first step only)…", flush=True)
  first_step_start = time.time()
  batch = None
  if step < total_steps:  # Compiled before the first check: a signal meanwhile stops here.
    batch = sharding.global_batch(next(train_iter), mesh)
    train_step.compile(state, batch)
  stopping = stop.stop_now()
  try:
    while step < total_steps and not stopping:
      if batch is None:
        batch = sharding.global_batch(next(train_iter), mesh)
      state, scalars = train_step(state, batch)
      batch = None
      step += 1
      if window_start is None:
        jax.block_until_ready(scalars)
        if is_main and new_train_step:
          print(
            f"compiled the train step: step {step} took {time.time() - first_step_start:.1f} s",
            flush=True,
          )
        window_start = time.time()
      else:
        window_steps += 1
      pending.append((step, scalars))
      log_now = due(step, config.log_every_steps, total_steps)
      validate_now = config.eval_every_epochs > 0 and due(step, validate_every, total_steps)
      # Decided once per step, on every process alike (train/preemption.py).
      stopping = stop.stop_now()
      save_now = due(step, checkpoint_every, total_steps) or stopping
      # The previous step's metrics are ready by now; this step's are read only when something
      # below uses the state, so that dispatch stays one step ahead otherwise.
      syncing = log_now or validate_now or save_now
      _check_finite(pending if syncing else pending[:-1], checkpoints, workdir, config.optimizer.lr)
      pending = [] if syncing else pending[-1:]

      if log_now:
        last_log = {k: float(v) for k, v in scalars.items()}
        scalars = {**last_log, "epoch": step / steps_per_epoch}
        progress = f"step {step}/{total_steps}  loss {last_log['loss']:.4f}"
        if window_steps:  # No step timed yet right after the first one.
          elapsed = time.time() - window_start
          rate = window_steps * config.global_batch_size / max(elapsed, 1e-9)
          scalars["images_per_sec"] = rate
          eta = (total_steps - step) * config.global_batch_size / max(rate, 1e-9)
          progress += f"  {rate:.1f} img/s  ETA {eta / 60:.1f} min"
        writer.write_scalars(step, scalars)
        if is_main:
          print(progress, flush=True)
        window_start, window_steps = time.time(), 0
      if validate_now:
        validation_start = time.time()
        if is_main and not validation_compiled:
          print("compiling the validation step (first validation only)…", flush=True)
        dice = validation_dice(eval_step, state.variables(), config, mesh)
        if not validation_compiled:  # Its compilation does not count in the throughput either.
          window_start += time.time() - validation_start
          validation_compiled = True
        writer.write_scalars(step, {"val_dice": dice, "epoch": step / steps_per_epoch})
        if dice > best.dice:
          best = BestCheckpoint(dice, step)
        if is_main:
          print(f"step {step}: validation Dice {dice:.4f} (best {best.dice:.4f})", flush=True)
      new_best = best.step == step
      if save_now or new_best:  # The latest checkpoint first: best/<step> never runs ahead.
        with stop.critical():
          checkpoints.save(step, state, train_iter.get_state(), best.to_json())
          if new_best:
            checkpoints.save_best(step, state.variables())
    _check_finite(pending, checkpoints, workdir, config.optimizer.lr)
  finally:
    checkpoints.wait()  # An abort (second Ctrl-C) too lets a started save commit.
    checkpoints.close()
    writer.close()
  return {
    "step": step,
    "start_step": start_step,
    "total_steps": total_steps,
    "best_dice": best.dice,
    "best_step": best.step,
    "last": last_log,
    "stopped_by": stop.signal_name if step < total_steps else None,
    "signal": stop.signal_name,  # received during training, even in its last step
  }
