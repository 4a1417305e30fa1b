"""The training bar: log lines above it (not glued onto it), and a bar under a terminal that reports no width."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import sys
import termios

from tqdm import tqdm

from palbert.logs import ProgressBar, setup_logging

GLUED = re.compile(r"\]\d\d:\d\d:\d\d INFO")  # `…it/s]04:44:15 INFO …`


def _draw_and_log(bar_class: type[tqdm]) -> None:
    bar = bar_class(total=10, desc="train", file=sys.stderr, mininterval=0)
    bar.update(3)
    logging.getLogger("palbert.train.loop").info("epoch 1: scoring dev")
    bar.update(7)
    bar.close()


def test_log_lines_go_above_the_bar(capsys):
    setup_logging()  # a console handler on stderr, as every stage has
    _draw_and_log(tqdm)
    assert GLUED.search(capsys.readouterr().err)  # what plain tqdm does: the record lands on the bar's line

    setup_logging()
    handlers = list(logging.getLogger().handlers)
    _draw_and_log(ProgressBar)
    err = capsys.readouterr().err
    assert "epoch 1: scoring dev" in err and not GLUED.search(err)
    # not a terminal (a log file): the record is a line of its own, without the bar, \r or padding before it
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d INFO palbert.train.loop: epoch 1: scoring dev", line)
               for line in err.split("\n"))
    assert logging.getLogger().handlers == handlers  # closing the bar restores the console handler


def _bar_on_a_terminal_without_size(bar_class: type[tqdm], **kwargs) -> str:
    """What a bar draws on a pseudo-terminal that reports 0 x 0 (as some container and CI ptys do)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        bar = bar_class(total=4, desc="train", file=terminal, mininterval=0, **kwargs)
        bar.update(2)
        bar.close()
    os.set_blocking(master, False)
    try:
        return os.read(master, 65536).decode()
    finally:
        os.close(master)


def test_a_terminal_of_unknown_width_still_gets_a_bar():
    assert "50%" not in _bar_on_a_terminal_without_size(tqdm, dynamic_ncols=True)  # tqdm trims it to nothing
    drawn = _bar_on_a_terminal_without_size(ProgressBar)
    assert "train:  50%|" in drawn and "2/4" in drawn
