"""`python -m tests.preemption_worker train ...`: `train` with faults planted in this process, as
the environment asks, for the two-process preemption test (tests/test_train_multiprocess.py).

  PREEMPT_AT_BATCH=k   SIGTERM to itself while fetching the k-th batch (the k-th step's)
  PREEMPT_AT_COMPILE=1 SIGTERM to itself when the train step starts compiling
  FAIL_NEWEST_RESTORE=1 the first restore of a training checkpoint (the newest) raises here

After a planted SIGTERM the process sleeps PREEMPT_SLEEP_S (default 3) seconds, and with
PREEMPT_AT_BATCH as long again at every later batch: JAX's notifier polls its flag every second
and its sync protocol then runs in the background while the processes keep stepping, so that
with steps slower than both the stop step does not depend on the machine's speed (with fast
steps a run was seen to pass its sync point and finish).
"""

import os
import signal
import sys
import time


def _sleep():
  time.sleep(float(os.environ.get("PREEMPT_SLEEP_S", "3")))


def _preempt():
  os.kill(os.getpid(), signal.SIGTERM)
  _sleep()


def main() -> int:
  from sgdnet_jax import main as cli
  from sgdnet_jax.core import distributed, sharding
  from sgdnet_jax.workdir import checkpointing

  at_batch = int(os.environ.get("PREEMPT_AT_BATCH", "0"))
  if at_batch:
    global_batch, calls = sharding.global_batch, [0]

    def planted_global_batch(*args, **kwargs):
      calls[0] += 1
      if calls[0] == at_batch:
        _preempt()
      elif calls[0] > at_batch:
        _sleep()
      return global_batch(*args, **kwargs)

    sharding.global_batch = planted_global_batch
  if os.environ.get("PREEMPT_AT_COMPILE"):
    compile_ = distributed.CompiledOnAllProcesses.compile

    def planted_compile(self, *args):
      if self._compiled is None:
        _preempt()
      return compile_(self, *args)

    distributed.CompiledOnAllProcesses.compile = planted_compile
  if os.environ.get("FAIL_NEWEST_RESTORE"):
    restore_step, failed = checkpointing.WorkdirCheckpoints._restore_step, []

    def planted_restore_step(self, step, *args):
      if not failed:  # the newest: restore_newest_intact tries it first
        failed.append(step)
        raise OSError(f"planted: process {os.environ['JAX_PROCESS_ID']} cannot read step {step}")
      return restore_step(self, step, *args)

    checkpointing.WorkdirCheckpoints._restore_step = planted_restore_step
  return cli.main(sys.argv[1:])


if __name__ == "__main__":
  sys.exit(main())
