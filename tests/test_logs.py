"""The training bar: log lines above it (not glued onto it), and a bar under a terminal that reports no width."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import subprocess
import sys
import termios

from tqdm import tqdm

from conftest import PROJECT
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


LOG_FILE_SCRIPT = r"""
import logging, sys
from palbert.logs import ProgressBar, setup_logging
setup_logging()  # stderr is a file here, as under `dvc exp run ... 2> run.log` or a queued experiment
from transformers import AutoModel
AutoModel.from_pretrained(sys.argv[1])  # transformers' own "Loading weights" bar
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
logging.getLogger("palbert.check").info("mlflow bars %s", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get())
bar = ProgressBar(total=30, desc="train", mininterval=0)
for step in range(30):
    bar.set_postfix({"loss_sst": "1.5", "loss_para": "0.6"}, refresh=False)
    bar.update(1)
    if step == 14:
        logging.getLogger("palbert.train.loop").info("epoch 1: scoring dev")
bar.close()
"""


def test_into_a_log_file_each_update_is_a_line_and_library_bars_are_off(tmp_path, tiny_bert_dir):
    import subprocess

    log_path = tmp_path / "run.log"
    with log_path.open("w") as log_file:
        subprocess.run([sys.executable, "-c", LOG_FILE_SCRIPT, str(tiny_bert_dir)], stderr=log_file, check=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k not in ("HF_HUB_DISABLE_PROGRESS_BARS",
                                                      "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    text = log_path.read_text()
    lines = text.splitlines()
    assert "\r" not in text and "" not in lines  # no in-place redraws, no blank lines
    assert "Loading weights" not in text and "mlflow bars False" in text
    bars = [line for line in lines if line.startswith("train:")]
    assert 31 <= len(bars) <= 32 and bars[-1].startswith("train: 100%|") and "30/30" in bars[-1]  # 0/30, ..., 30/30 (and the closing total)
    assert all(line.endswith("loss_sst=1.5, loss_para=0.6]") for line in bars[1:])
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d INFO palbert.train.loop: epoch 1: scoring dev", line) for line in lines)


def test_the_training_bar_shows_losses_in_task_order():
    from palbert.train.loop import bar_postfix

    shown = bar_postfix({"simcse": [0.2], "sts": [1.0, 3.0], "sst": [1.5]}, rate=31.7)
    assert shown == {"loss_sst": "1.5", "loss_sts": "2", "loss_simcse": "0.2", "ex/s": "32"}


def test_a_pause_leaves_only_itself_out_of_the_rate(tmp_path):
    """Into a file (redrawn every 30 s) the closing line's elapsed time keeps the work before the pause."""
    import time

    with (tmp_path / "log").open("w") as log_file:
        bar = ProgressBar(total=2, desc="train", file=log_file, mininterval=30)
        time.sleep(1.1)  # training
        bar.update(1)
        bar.pause()
        time.sleep(0.5)  # dev scoring
        bar.unpause()
        bar.update(1)
        bar.close()
    last = (tmp_path / "log").read_text().splitlines()[-1]
    assert "2/2 [00:01<00:00" in last, last  # tqdm's own unpause would say 00:00 and a rate of thousands it/s
    silent = ProgressBar(total=2, desc="train", disable=True)  # every rank but 0: no clock, nothing to pause
    silent.pause()
    silent.unpause()
    silent.close()


def test_into_a_file_the_last_update_is_not_printed_again_at_close(tmp_path):
    """A bar whose last update was written (n == total) closes without a second, differently timed line; one
    whose last update was not written (mininterval) gets its closing line."""
    with (tmp_path / "log").open("w") as log_file:
        bar = ProgressBar(total=2, desc="train", file=log_file, mininterval=0)
        bar.update(2)  # written at once: mininterval 0
        bar.pause()
        bar.unpause()
        bar.close()
    lines = (tmp_path / "log").read_text().splitlines()
    assert [line for line in lines if "2/2" in line] == lines[-1:], lines
    with (tmp_path / "log2").open("w") as log_file:
        bar = ProgressBar(total=2, desc="train", file=log_file, mininterval=30)
        bar.update(2)  # not written yet: 30 s have not passed
        bar.close()
    lines = (tmp_path / "log2").read_text().splitlines()
    assert len([line for line in lines if "2/2" in line]) == 1, lines


def test_mlflows_log_lines_have_palberts_timestamp():
    """MLflow installs a handler of its own at import (``2026/12/07 02:30:00 INFO mlflow...``): after
    ``setup_logging`` its records come out as palbert's (``02:30:00 INFO mlflow...``), imported before or after."""
    script = (
        "import logging, sys\n"
        "import mlflow\n"  # imported first, as a stage's imports do: MLflow's own handler is in place
        "from palbert.logs import setup_logging\n"
        "setup_logging()\n"
        "logging.getLogger('mlflow.tracking.fluent').info('from mlflow')\n"
        "logging.getLogger('palbert.train.loop').info('from palbert')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.endswith(("from mlflow", "from palbert"))]
    assert len(lines) == 2, result.stderr
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d INFO [a-z_.]+: from (mlflow|palbert)", line) for line in lines), lines


def test_a_second_bar_under_the_training_bar_writes_plain_lines_into_a_file(tmp_path):
    """Dev scoring inside training: its bar opens while the (paused) training bar is open. Into a log file each
    writes lines of its own, without the cursor movements tqdm uses to stack bars on a terminal."""
    with (tmp_path / "log").open("w") as log_file:
        train = ProgressBar(total=4, desc="train", file=log_file, mininterval=0)
        train.update(2)
        train.pause()
        for _ in ProgressBar(range(3), desc="predict sst-dev", file=log_file, leave=False, mininterval=0):
            pass
        train.unpause()
        train.update(2)
        train.close()
    text = (tmp_path / "log").read_text()
    assert "\x1b[" not in text, repr(text)
    lines = text.splitlines()
    assert any(line.startswith("predict sst-dev: 100%") and "3/3" in line for line in lines), lines
    assert lines[-1].startswith("train: 100%") and "4/4" in lines[-1], lines
