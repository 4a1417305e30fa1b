"""Stop signals (SIGTERM, SIGHUP, Ctrl-C) end a stage as Ctrl-C does, but never inside a write to a local store.

A signal turns into an exception wherever the main thread happens to be. Inside SQLAlchemy's commit to the local
MLflow store (``mlflow.db``) that exception left the SQLite database locked, so marking the run KILLED then failed
with "database is locked" and the run stayed RUNNING. ``signals_held()`` marks such a call: a signal that arrives
during it is raised as soon as the call returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

from palbert.errors import Terminated

#: Signals that stop a stage as Ctrl-C does: SIGTERM (Slurm, torchrun on every rank, ``kill``), SIGHUP (the
#: terminal or SSH session of a run started without nohup went away).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_held = 0
_pending: int | None = None


def _stop_exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _held:
        if _pending is None:
            _pending = signum
        return
    raise _stop_exception(signum)


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP end a stage as Ctrl-C does: checkpoint kept, MLflow run KILLED, one line, exit
    128 + the signal; all three wait for a held store call to return.

    Python's default is to die at once, which left the MLflow run RUNNING forever and said nothing. A signal set
    to be ignored (``nohup``) or handled by someone else stays so; handlers can only be set in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_stop_signal)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold stop signals for the block: one that arrives is raised when the outermost held block ends."""
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise _stop_exception(signum)
