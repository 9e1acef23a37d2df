"""SIGTERM and SIGINT become "checkpoint, then stop" instead of lost work.

Preemption (Kubernetes, Slurm, spot instances) sends SIGTERM and waits a
grace period; Ctrl-C sends SIGINT. While a `StopRequests` is active the
first of either is only recorded; the loop checks `requested` after each
compiled call (at most `steps_per_loop` steps), saves a checkpoint and
raises `cfal.errors.Interrupted`. A second signal of the same kind gets the
default behaviour back, so a stuck run can still be stopped at once.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
  """Records SIGTERM/SIGINT while active (a context manager).

  Handlers can only be installed from the main thread; elsewhere (a run
  started from a worker thread) this does nothing and signals keep their
  usual effect.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum = signum
    # The next one of the same kind acts as if we were never here.
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name
