"""Test setup: CPU only and a persistent compilation cache shared with test subprocesses.

Numeric tolerances are derived from the dtype a result is computed in, never tuned to the
machine at hand: a result that reduces n terms is within n * eps(dtype) of the exact value,
relative to the magnitude of those terms (`tests.tolerances.rounding`), times the condition of
what follows (for example the cancellation in 1 - ratio). A float32 result is compared with a
float64 expectation at that float32 bound; where float32 cannot decide (non-smooth operators at
near-ties, long chains of layers), both sides compute in float64 (`model.dtype='float64'`,
`jax.enable_x64`) and agree to 1e-9 or better.
"""

import collections
import contextlib
import dataclasses
import fcntl
import io
import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
XLA_TEST_FLAGS = {
  # The tests compile hundreds of small programs and run each a few times: LLVM's optimisations
  # cost more than they save (-26 % compile CPU time).
  "xla_backend_optimization_level": "0",
  # XLA:CPU's older elemental emitters compile a training step of the tests' model 38 % faster
  # (14.2 -> 8.8 s at level 0) than its fusion emitters.
  "xla_cpu_use_fusion_emitters": "false",
}
# Every test compares programs compiled alike, and subprocesses inherit the flags
# (tests.train_helpers.subprocess_env keeps them). A flag already in $XLA_FLAGS wins (to compare
# timings or results under other flags).
for _name, _value in XLA_TEST_FLAGS.items():
  if _name not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_name}={_value}".strip()
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)

import jax
import pytest

from sgdnet_jax.core import compilation_cache

compilation_cache.enable("", min_compile_time_secs=0.5)
jax.config.update("jax_default_prng_impl", "rbg")  # As training does: much faster init compiles.


# Seconds each test file took in the last recorded run (`make test-durations`). Under
# `--dist loadfile --no-loadscope-reorder` (the Makefile) the two CI workers take whole files in
# the order collected: the longest first, so that both finish together. A file not yet recorded
# counts as DEFAULT_FILE_SECONDS.
DURATIONS_FILE = pathlib.Path(__file__).with_name("durations.json")
DEFAULT_FILE_SECONDS = 30.0


def pytest_addoption(parser):
  parser.addoption(
    "--record-durations",
    action="store_true",
    help=f"write each test file's total time (setup, call, teardown) to {DURATIONS_FILE.name}",
  )


def pytest_collection_modifyitems(items):
  seconds = json.loads(DURATIONS_FILE.read_text()) if DURATIONS_FILE.exists() else {}
  # Stable: a file's tests stay together and in their order.
  items.sort(key=lambda item: -seconds.get(item.path.name, DEFAULT_FILE_SECONDS))


_file_seconds: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
  _file_seconds[pathlib.Path(report.location[0]).name] += report.duration


def pytest_sessionfinish(session):
  is_worker = hasattr(session.config, "workerinput")  # xdist: the controller gets every report
  if session.config.getoption("record_durations") and not is_worker:
    recorded = json.loads(DURATIONS_FILE.read_text()) if DURATIONS_FILE.exists() else {}
    recorded.update({name: round(total, 1) for name, total in _file_seconds.items()})
    ordered = dict(sorted(recorded.items(), key=lambda item: -item[1]))
    DURATIONS_FILE.write_text(json.dumps(ordered, indent=2) + "\n")


@pytest.fixture
def x64():
  """64-bit JAX for the test (float64 arrays, `model.dtype='float64'`), restored afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory, request) -> pathlib.Path:
  """A folder every xdist worker of this run shares (this session's own folder without xdist)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if hasattr(request.config, "workerinput") else base


@dataclasses.dataclass(frozen=True)
class ReferenceTraining:
  data_dir: str
  workdir: pathlib.Path
  config: object
  summary: dict
  printed: list


@pytest.fixture(scope="session")
def reference_training(shared_tmp) -> ReferenceTraining:
  """The tiny baseline trained 6 steps (`train_helpers.REFERENCE_FIELDS`: checkpoints 2, 4 and 6
  kept) in-process, once per test run: the first worker to ask trains it while the other waits,
  then both read it (with what it printed)."""
  from sgdnet_jax.core import config_utils
  from sgdnet_jax.train import loop
  from tests import train_helpers

  root = shared_tmp / "reference_training"
  data_dir, workdir = root / "data", root / "workdir"
  printed_file, summary_file = root / "printed.txt", root / "summary.json"

  def load_config():
    return config_utils.load_config(
      train_helpers.TRAIN_CONFIG,
      train_helpers.overrides(
        str(data_dir / "prepared"), tensorboard=True, **train_helpers.REFERENCE_FIELDS
      ),
    )

  with open(shared_tmp / "reference_training.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not summary_file.exists():
      root.mkdir(exist_ok=True)
      train_helpers.tiny_dataset(data_dir)
      printed = io.StringIO()
      with contextlib.redirect_stdout(printed):
        summary = loop.train_and_evaluate(load_config(), str(workdir))
      printed_file.write_text(printed.getvalue())
      summary_file.write_text(json.dumps(summary))
  return ReferenceTraining(
    data_dir=str(data_dir / "prepared"),
    workdir=workdir,
    config=load_config(),
    summary=json.loads(summary_file.read_text()),
    printed=printed_file.read_text().splitlines(),
  )
