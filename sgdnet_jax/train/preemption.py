"""When a training run stops early: SIGTERM (a preemption notice) or Ctrl-C, on every process at
the same step.

One process: Python handlers for SIGTERM and SIGINT set a flag that the loop reads at every step
boundary (`stop_now`).

Several processes (`jax.distributed`): JAX's preemption service decides. `jax.distributed
.initialize()` installs its notifier for SIGTERM; a notice on any process reaches the others
through the coordination service, and `multihost_utils.reached_preemption_sync_point(n)` (what
Orbax's `CheckpointManager.reached_preemption` asks) returns True on every process at the same
`n`, the check after the step that the fastest process had reached plus one. So SIGTERM is left to
JAX's handler here, and a first SIGINT is passed on to it as SIGTERM. Every process calls
`stop_now` exactly once before the first step (n = 1: a notice during start-up, restore or
compilation stops the run there, before it trains a step) and once after every step.

A signal before `jax.distributed.initialize()` (start-up) is caught by our handler and passed on
to JAX's once it exists (`joined`). A second SIGINT raises KeyboardInterrupt at once, except inside
`critical()` (a checkpoint being handed to Orbax), where it waits for the block to end.

A run stopped this way exits with `RESUME_EXIT` (`cli/train.py`): the launchers restart it on that
status (docs/launch.md).
"""

import contextlib
import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL of sysexits.h: "try again later". Never 0 (a scheduler would record the run as
# completed) and none of the codes of a crash (1, 2, 128 + a signal).
RESUME_EXIT = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopDecision:
  """Installs the handlers (main thread only, Python's rule, and not over an ignored signal);
  `restore()` puts the previous ones back."""

  def __init__(self):
    self._received: str | None = None  # the first signal this process's handlers saw
    self._multiprocess = False
    self._checks = 0
    self._stopped = False
    self._abort_pending = False
    self._in_critical = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in _SIGNALS:
        # A SIGTERM handler over JAX's notifier (already running) would silence it.
        # (process_count() before jax.distributed.initialize() would start the backends.)
        if (
          signum == signal.SIGTERM and jax.distributed.is_initialized() and jax.process_count() > 1
        ):
          continue
        if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT under nohup
          self._previous[signum] = signal.signal(signum, self._handle)

  def joined(self):
    """After `distributed.initialize`: in a run of several processes, JAX's notifier decides."""
    self._multiprocess = jax.process_count() > 1
    if self._multiprocess and self._received:
      os.kill(os.getpid(), signal.SIGTERM)  # the one caught before the notifier existed
    elif not self._multiprocess and signal.SIGTERM in self._previous:
      # One process (also with config.distributed=on): our handler, not JAX's notifier, decides.
      signal.signal(signal.SIGTERM, self._handle)

  @property
  def signal_name(self) -> str | None:
    """The signal the run stopped for, or (one process) received in its last step; None if none.

    Several processes name the notice: the signal may have reached another process.
    """
    if not self._stopped:
      return self._received if not self._multiprocess else None
    if self._multiprocess:
      return "a preemption notice (SIGTERM or Ctrl-C on a process of the run)"
    return self._received

  def stop_now(self) -> bool:
    """True when the run must save and stop here; the same on every process (see module doc)."""
    if self._multiprocess:
      self._checks += 1
      self._stopped = multihost_utils.reached_preemption_sync_point(self._checks)
    else:
      self._stopped = self._received is not None
    return self._stopped

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._received:
      if self._in_critical:
        self._abort_pending = True
        return
      raise KeyboardInterrupt
    if self._received is None:
      self._received = signal.Signals(signum).name
      again = " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""
      logging.warning(
        "%s received: saving a checkpoint at the end of this step and stopping%s",
        self._received,
        again,
      )
      if self._multiprocess:  # JAX's notifier tells the other processes.
        os.kill(os.getpid(), signal.SIGTERM)

  @contextlib.contextmanager
  def critical(self):
    """A second SIGINT inside the block raises only after it."""
    self._in_critical = True
    try:
      yield
    finally:
      self._in_critical = False
    if self._abort_pending:
      raise KeyboardInterrupt

  def restore(self):
    for signum, handler in self._previous.items():
      # Putting SIGTERM back would replace JAX's notifier of a run of several processes.
      if signum == signal.SIGTERM and self._multiprocess:
        continue
      signal.signal(signum, handler)
