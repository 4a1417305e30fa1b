"""One logging set-up for every stage, so library code logs through ``logging`` and stages stay thin."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any, ContextManager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def setup_logging(level: int = logging.INFO) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def terminal_shape(stream: IO[str]) -> tuple[int | None, int | None]:
    """(columns, rows) a bar on ``stream`` may use; (None, None) when it is not a terminal (no trimming).

    A terminal that reports a size of 0 x 0 (some container and CI ptys do) would make tqdm trim its bar
    to nothing; it gets ``$COLUMNS`` (else 80) columns instead.
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None, None
    fallback = os.environ.get("COLUMNS", "")
    columns = size.columns if size.columns > 0 else int(fallback) if fallback.isdigit() else 80
    return columns - 1, (size.lines if size.lines > 0 else 24) - 1


class ProgressBar(tqdm):
    """A tqdm bar that log records go around, and that follows the terminal's width when it has one.

    While the bar is open, records of the root logger's console handlers are written with ``tqdm.write``:
    above the bar, on their own line, instead of glued onto the bar's line (``…it/s]04:44:15 INFO …``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        file = kwargs.get("file") or sys.stderr
        self._on_terminal = bool(getattr(file, "isatty", lambda: False)())
        kwargs["ncols"], kwargs["nrows"] = terminal_shape(file)
        super().__init__(*args, dynamic_ncols=False, **kwargs)
        self._log_redirect: ContextManager | None = None
        if not self.disable:
            self.dynamic_ncols = terminal_shape  # re-read at every redraw: follows a resized terminal
            self._log_redirect = logging_redirect_tqdm(tqdm_class=type(self))
            self._log_redirect.__enter__()

    def clear(self, nolock: bool = False) -> None:
        """On a terminal, erase the bar's line; into a log file, end it, so that a record written next
        starts a line of its own (not one that begins with the bar, a carriage return and padding)."""
        if self._on_terminal or self.disable:
            super().clear(nolock)
        else:
            self.fp.write("\n")
            self.fp.flush()

    def close(self) -> None:
        super().close()
        redirect, self._log_redirect = getattr(self, "_log_redirect", None), None
        if redirect is not None:
            redirect.__exit__(None, None, None)
