"""A second training in the same process with the programs of an earlier one reuses its jitted
functions (`sgdnet_jax.core.programs`): no new trace, no new compile or cache load."""

import collections
import contextlib
import io

import jax
from jax._src import dispatch

from sgdnet_jax.core import config_utils, programs, sharding
from sgdnet_jax.inference import evaluate
from sgdnet_jax.train import loop
from tests import train_helpers

EVENTS = (dispatch.JAXPR_TRACE_EVENT, dispatch.BACKEND_COMPILE_EVENT)


@contextlib.contextmanager
def counted_events():
  """(event, function name) -> how often JAX traced or compiled (or loaded) it meanwhile."""
  counts = collections.Counter()

  def listener(event, duration, **kwargs):
    if event in EVENTS:
      counts[event, kwargs.get("fun_name", "")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def reference_config(reference, **fields):
  """The reference training's config: its programs, one checkpoint (at the last step)."""
  fields = {"total_steps": 6, "checkpoint_every_steps": 6, "tensorboard": False, **fields}
  return config_utils.load_config(
    train_helpers.TRAIN_CONFIG, train_helpers.overrides(reference.data_dir, **fields)
  )


COMPILING = "compiling the train step (first step only)…"


def train(config, workdir) -> tuple[dict, str]:
  """The losses by step and the printed output of a training in this process."""
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    loop.train_and_evaluate(config, str(workdir))
  return train_helpers.step_losses(workdir), output.getvalue()


def test_equal_trainings_reuse_the_programs_and_another_learning_rate_traces_anew(
  reference_training, tmp_path
):
  reference_losses = train_helpers.step_losses(reference_training.workdir)
  # The reference may have trained in another test process: this one trains it first.
  assert train(reference_config(reference_training), tmp_path / "first")[0] == reference_losses
  with counted_events() as counts:
    again, output = train(reference_config(reference_training), tmp_path / "again")
  assert again == reference_losses  # the same floats, not merely close
  assert COMPILING not in output and "compiled the train step" not in output, output
  for name in ("train_step", "init", "step"):  # step: the validation step
    assert not counts[dispatch.JAXPR_TRACE_EVENT, name], (name, counts)
    assert not counts[dispatch.BACKEND_COMPILE_EVENT, name], (name, counts)

  lr = reference_training.config.optimizer.lr * 2
  with counted_events() as counts:
    other, output = train(
      reference_config(reference_training, **{"optimizer.lr": lr}), tmp_path / "lr"
    )
  assert counts[dispatch.JAXPR_TRACE_EVENT, "train_step"] == 1, counts
  assert COMPILING in output, output
  assert other[1] == reference_losses[1]  # the first step's loss precedes any update
  assert all(other[step] != reference_losses[step] for step in range(2, 7)), other


def test_equal_configs_give_the_same_functions_and_the_cache_keeps_a_few(monkeypatch):
  mesh = sharding.make_mesh(config_utils.load_config(train_helpers.TRAIN_CONFIG).mesh)
  load = lambda *overrides: config_utils.load_config(train_helpers.TRAIN_CONFIG, overrides).model
  options = dict(device_metrics=True, distances=False, one_empty="nan", probability=False)
  monkeypatch.setattr(programs, "_entries", type(programs._entries)())
  first = evaluate.eval_step_for(load(), mesh, **options)
  assert evaluate.eval_step_for(load(), mesh, **options) is first
  assert evaluate.eval_step_for(load(), mesh, **{**options, "distances": True}) is not first
  wider = load("--config.model.decoder_channels=8")
  assert evaluate.eval_step_for(wider, mesh, **options) is not first
  assert evaluate.eval_step_for(wider, mesh, **options) is evaluate.eval_step_for(
    wider, mesh, **options
  )

  built = []
  for n in range(programs.MAX_ENTRIES + 1):  # The least recently used entry is dropped.
    programs.cached("test", n, lambda: built.append(n))
  assert len(programs._entries) == programs.MAX_ENTRIES
  programs.cached("test", programs.MAX_ENTRIES, lambda: built.append("again"))
  programs.cached("test", 0, lambda: built.append("again"))
  assert built == [*range(programs.MAX_ENTRIES + 1), "again"]
