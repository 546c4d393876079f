"""Staging folders that do not outlive an interruption (SIGTERM, SIGINT).

`prepare` and the synthetic generator write under a temporary name and rename into place. By
default SIGTERM ends Python without running `finally`, which left `.OUT.tmp-PID` folders behind.
Inside `Staging`, SIGTERM and SIGINT raise instead, the folder is removed, the previous handlers
come back, and the signal is delivered again to them (SIGTERM then ends the process as it would
have; SIGINT raises KeyboardInterrupt). `Staging.deferred()` holds signals back during steps that
must not be cut in half, such as swapping the finished folder into place.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import sys
import threading

from sgdnet_jax.core import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(errors.UserError):
  """A signal stopped the work; its staging folder was removed, nothing else was changed."""


class _Signalled(BaseException):  # BaseException: no `except Exception` on the way swallows it.
  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


class Staging:
  """A fresh folder `path` (emptied on entry), removed on exit unless renamed away.

  Signal handlers are installed only in the main thread (Python's rule) and not over a signal
  that was ignored before.
  """

  def __init__(self, path: os.PathLike):
    self.path = pathlib.Path(path)
    self._previous: dict[int, object] = {}
    self._armed = True
    self._received: int | None = None

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self._received is None:
      self._received = signum
    if self._armed:
      self._armed = False
      raise _Signalled(signum)

  def __enter__(self) -> "Staging":
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
          self._previous[signum] = signal.signal(signum, self._handle)
    try:
      shutil.rmtree(self.path, ignore_errors=True)
      self.path.mkdir(parents=True)
    except BaseException:  # a signal may arrive while the folder is being made
      self.__exit__(*sys.exc_info())
      raise
    return self

  def _restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def __exit__(self, kind, value, traceback) -> bool:
    self._armed = False  # a second signal now only waits for the cleanup to finish
    unfinished = self.path.exists()
    shutil.rmtree(self.path, ignore_errors=True)
    self._restore()
    if self._received is None:
      return False
    name = signal.Signals(self._received).name
    if unfinished:
      what = f"removed the unfinished {self.path}; nothing else was changed"
    else:
      what = "the result was already in place"
    print(f"interrupted by {name}: {what}", file=sys.stderr)
    try:
      signal.raise_signal(self._received)  # the previous handler decides (default: exit)
    except BaseException as delivered:  # e.g. KeyboardInterrupt: not "during" our own exception
      raise delivered from None
    raise Interrupted(f"interrupted by {name}; {what}; run the command again") from None

  @contextlib.contextmanager
  def deferred(self):
    """Signals received inside the block take effect only after it."""
    self._armed = False
    try:
      yield
    finally:
      self._armed = True
      if self._received is not None:
        raise _Signalled(self._received)
