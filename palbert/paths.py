"""Where the project is: the repository root, also seen from a subfolder or a DVC temp workspace.

Queued and ``--temp`` DVC experiments run in ``<repo>/.dvc/tmp/exps/<tmp>/``, which DVC deletes afterwards;
files that must outlive a run (the MLflow store, Table 3 records) belong to the real repository. The
root, first match wins:
1. ``$PALBERT_PROJECT_ROOT``: an explicit override.
2. ``$DVC_ROOT``: DVC sets it for every stage command (``dvc/stage/run.py``); for queued and
   ``--temp`` experiments it points at the parent repository, not the temp workspace
   (``dvc/repo/experiments/queue/base.py``, next to ``DVC_EXP_NAME`` and ``DVC_EXP_BASELINE_REV``).
3. The git toplevel of the current folder; if that lies inside ``<repo>/.dvc/tmp/exps/``, ``<repo>``.
4. The current folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# The files of the pipeline, relative to a stage's working folder: dvc.yaml names the same paths as the
# stages' deps and outs (tests/test_dvc_stages.py checks that the two agree).
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
DATA_REPORT = Path("metrics/data.json")
LABEL_DISTRIBUTION = Path("metrics/plots/label_distribution.csv")
CHECKPOINTS = Path("checkpoints")
BEST_MODEL = Path("models/best")
TRAIN_SUMMARY = Path("metrics/train.json")
TRAIN_PLOTS = Path("metrics/plots/train")
DEV_METRICS = Path("metrics/dev.json")
PREDICTIONS = Path("predictions")
PARAMS = Path("params.yaml")


def find_project_root(start: Path | None = None) -> Path:
    """The real repository root, also from a subfolder or a DVC temp workspace (see module doc)."""
    for name in ("PALBERT_PROJECT_ROOT", "DVC_ROOT"):
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser().resolve()
    start = (start or Path.cwd()).resolve()
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        root = Path(top).resolve() if top else start
    except (OSError, subprocess.SubprocessError):
        root = start
    return outside_dvc_temp(root)


def outside_dvc_temp(path: Path) -> Path:
    """``<repo>/.dvc/tmp/exps/<tmp>/...`` → ``<repo>``: a DVC experiment workspace is not the project."""
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def shown_path(path: str | Path, root: Path | None = None) -> str:
    """``path`` as a result committed to the repository names it: relative to the project root when it lies
    inside, else only its file name after ``.../`` (an absolute path names a folder of the machine that wrote it)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to((root or find_project_root()).resolve()).as_posix()
    except ValueError:
        return f".../{path.name}"
