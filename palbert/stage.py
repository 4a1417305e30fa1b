"""What every stage script shares: logging set-up, and user errors as one clear line instead of a traceback."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from palbert.errors import USER_ERRORS, Terminated
from palbert.logs import setup_logging
from palbert.stop_signals import stop_on_signals

log = logging.getLogger("palbert")

#: A write that failed because of the disk, not the code: no space, quota, read-only, permissions.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or settings: reported in one line, exit code 1."""
    return USER_ERRORS


def recovery_hint() -> str:
    """Under ``dvc repro`` / ``dvc exp run``: what DVC removed before the stage ran and how to get it back.

    DVC deletes a stage's outputs (all but ``persist: true`` ones) before running its command, so a stage that
    fails leaves them missing, whatever the stage itself took care not to write. DVC sets ``$DVC_STAGE``.
    """
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return ""
    return (f" [DVC removed the outputs of {stage} before running it: `dvc checkout {stage}` restores the last "
            "good ones from the DVC cache (outputs with cache: false, such as metrics/, are not in it)]")


def run_stage(main: Callable[..., int | None], argv: Sequence[str] = ()) -> None:
    """Run a stage's library function with the command line's words as its arguments (``prepare`` takes its
    dataset; the others none) and exit with its status: every ``stages/*.py`` is this one call."""
    try:
        inspect.signature(main).bind(*argv)
    except TypeError:
        words = " ".join(f"<{name}>" for name in inspect.signature(main).parameters) or "(no arguments)"
        print(f"usage: python -m {_module_name()} {words}", file=sys.stderr)
        sys.exit(2)
    setup_logging()
    stop_on_signals()
    try:
        code = main(*argv) or 0
    except user_errors() as exc:
        log.error("%s%s", exc, recovery_hint())
        code = 1
    except Terminated as exc:
        log.error("stopped by %s%s", exc.signal_name, recovery_hint())
        code = 128 + exc.signum
    except KeyboardInterrupt:
        log.error("interrupted%s", recovery_hint())
        code = 130
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            _log_unexpected()
            raise
        # the disk filled or turned read-only mid-stage: outputs are written atomically, so nothing is half-written
        log.error("%s: %s; the files written before are whole and the last checkpoint is kept: fix it and run "
                  "again (training resumes)%s", exc.filename or "a write", exc.strerror, recovery_hint())
        code = 1
    except Exception:
        _log_unexpected()
        raise
    sys.exit(code)


def _log_unexpected() -> None:
    if recovery_hint():
        log.error("unexpected error (traceback below)%s", recovery_hint())


def _module_name() -> str:
    """What ``python -m`` ran (``stages.prepare``), for the usage line."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem
