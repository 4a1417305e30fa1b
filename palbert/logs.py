"""One logging set-up for every stage, so library code logs through ``logging`` and stages stay thin."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any, ContextManager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


#: Switches of the libraries' own progress bars (model weights loading, hub and MLflow artifact transfers).
_LIBRARY_BARS_OFF = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def quiet_library_bars() -> None:
    """Turn off the progress bars of transformers, huggingface_hub and MLflow (unless the user set them).

    Into a log file their ``\r`` redraws pile up on one physical line and say nothing a log line does not;
    palbert's own bars (``ProgressBar``) write one line per update there instead.
    """
    for name, value in _LIBRARY_BARS_OFF.items():
        os.environ.setdefault(name, value)
    # a library imported before this call read its switch already
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["transformers"].utils.logging.disable_progress_bar()


#: Libraries that install a handler of their own with another timestamp (MLflow: ``2026/12/07 02:30:00``).
_OWN_FORMAT_LOGGERS = ("mlflow",)


def setup_logging(level: int = logging.INFO) -> None:
    """Log records as ``HH:MM:SS LEVEL logger: message`` on stderr, MLflow's too; into a file, no library
    progress bars."""
    if not _is_terminal(sys.stderr):
        quiet_library_bars()
    # MLflow configures its loggers at import unless told not to; if it was imported already, its records go
    # through the root handler below from now on instead of its own
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    for name in _OWN_FORMAT_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # MLflow's SQL store runs alembic at every open; its INFO lines (plugins, migrations) say nothing to a user
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def _is_terminal(stream: IO[str]) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class LogLines:
    """A bar's stream when it is a file, not a terminal: tqdm redraws its line in place (``\r`` and padding),
    which in a file joins every update onto one physical line; here each redraw becomes a line of its own,
    and a newline that would only end an already ended line is dropped (no blank lines)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._line_ended = True

    def write(self, text: str) -> int:
        head, *redraws = text.split("\r")
        if head and not (head == "\n" and self._line_ended):
            self._emit(head)
        for redraw in redraws:
            content = redraw.rstrip(" ")
            if content.strip():
                self._emit(("" if self._line_ended else "\n") + content.rstrip("\n") + "\n")
        return len(text)

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        self._line_ended = text.endswith("\n")

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, ...
        return getattr(self.stream, name)


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
    Into a file (not a terminal) each update is a line of its own (``LogLines``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        file = kwargs.get("file") or sys.stderr
        self._on_terminal = _is_terminal(file)
        kwargs["ncols"], kwargs["nrows"] = terminal_shape(file)
        if not self._on_terminal:
            kwargs["file"] = LogLines(file)  # one line per update
            kwargs.setdefault("mininterval", 30.0)  # not ten lines a second
            # a second bar (dev scoring under the training bar) writes plain lines too, no cursor movement
            kwargs.setdefault("position", 0)
        super().__init__(*args, dynamic_ncols=False, **kwargs)
        self._log_redirect: ContextManager | None = None
        if not self.disable:
            self.dynamic_ncols = terminal_shape  # re-read at every redraw: follows a resized terminal
            self._log_redirect = logging_redirect_tqdm(tqdm_class=type(self))
            self._log_redirect.__enter__()

    def pause(self) -> None:
        """Mark the start of a pause (dev scoring) that ``unpause`` leaves out of the rate and ETA.

        tqdm's own ``unpause`` counts the pause from the last redraw: into a log file, redrawn every 30 s,
        that also drops the training time since then, and the closing line claims 0 s and a huge rate. A disabled
        bar (every rank but 0) has no clock and nothing to pause."""
        self._paused_at = None if self.disable else self._time()

    def unpause(self) -> None:
        paused_at, self._paused_at = getattr(self, "_paused_at", None), None
        if paused_at is None or self.disable:
            super().unpause()
            return
        pause = self._time() - paused_at
        self.start_t += pause
        self.last_print_t += pause

    def clear(self, nolock: bool = False) -> None:
        """On a terminal, erase the bar's line; into a log file, leave it: every update there is a line of
        its own already (``LogLines``), so a record written next starts a line of its own."""
        if self._on_terminal or self.disable:
            super().clear(nolock)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        shown = super().display(msg, pos)
        if msg is None:
            self._shown_n = self.n
        return shown

    def close(self) -> None:
        if not self._on_terminal and getattr(self, "_shown_n", None) == self.n:
            # into a log file the last update is a line of its own already: a closing line would repeat it with
            # another elapsed time (the dev scoring and checkpoint since)
            self.leave = False
        super().close()
        redirect, self._log_redirect = getattr(self, "_log_redirect", None), None
        if redirect is not None:
            redirect.__exit__(None, None, None)
