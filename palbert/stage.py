"""What every stage script shares: logging set-up, and user errors as one clear line instead of a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from palbert.logs import setup_logging

log = logging.getLogger("palbert")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or settings: reported in one line, exit code 1."""
    from palbert.config import ParamsError
    from palbert.data.readers import DataError
    from palbert.model.io import ModelLoadError
    from palbert.tracking import TrackingUnavailable

    return (ParamsError, DataError, ModelLoadError, TrackingUnavailable, FileNotFoundError)


def run_stage(main: Callable[[], int | None]) -> None:
    """Run a stage's ``main`` and exit with its status."""
    setup_logging()
    try:
        code = main() or 0
    except user_errors() as exc:
        log.error("%s", exc)
        code = 1
    except KeyboardInterrupt:
        log.error("interrupted")
        code = 130
    sys.exit(code)
