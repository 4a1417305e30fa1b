"""A run is recorded with the settings it ran with, never with someone else's.

DVC records a stage's params as ``params.yaml`` holds them when the stage *ends*, and ``dvc exp run -S`` writes its
values into the workspace's ``params.yaml`` before it takes DVC's lock. So a second ``dvc exp run`` started in the
same workspace while a first one runs swaps the first one's settings, fails on the lock, and leaves them swapped:
the first then trains (if its stage had not started yet) or is recorded (if it had) with the second's settings, in
DVC and in MLflow. ``SettingsGuard`` finds both cases: a stage checks at its start that the workspace experiment
DVC says is running is still its own, and while it works (at each checkpoint, before it records anything) that
``params.yaml`` still holds what it started with. Queued and ``--temp`` experiments run in copies of their own and
are safe side by side; the errors say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from palbert.config import Params, params_from_dict
from palbert.params_file import load_params
from palbert.errors import SettingsChanged

#: DVC's record of the experiment running in the workspace (``dvc/repo/experiments/queue/workspace.py``, DVC 3):
#: ``{"name": <experiment>, ...}``, written when ``dvc exp run`` starts it and removed when a run ends, also a
#: second run's that failed on the lock.
WORKSPACE_RUN_DIR = Path(".dvc/tmp/exps/run")
WORKSPACE_RUN_FILE = WORKSPACE_RUN_DIR / "workspace/workspace.run"

SIDE_BY_SIDE = ("To run experiments side by side, queue each (`dvc exp run --queue -S key=value`) and then "
                "`dvc queue start`: each runs in its own copy of the workspace")


def workspace_experiment() -> tuple[str, Path] | None:
    """``(experiment name, repository)`` when this stage runs for a ``dvc exp run`` in the workspace itself; None
    for ``dvc repro``, for a queued or ``--temp`` experiment (its own copy), and where DVC keeps no run record."""
    name, root = os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_ROOT")
    if not name or not root or Path.cwd().resolve() != Path(root).resolve():
        return None
    if not (Path(root) / WORKSPACE_RUN_DIR).is_dir():
        return None
    return name, Path(root)


def running_experiment(root: Path) -> str | None:
    """The name in DVC's workspace run record, None when there is none."""
    try:
        return json.loads((root / WORKSPACE_RUN_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key}: {before.get(key)!r} at the start, {now.get(key)!r} now" for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)]


@dataclass
class SettingsGuard:
    """The settings a stage started with (``params.flat()``), and the workspace experiment it runs for."""

    path: Path
    settings: dict[str, Any]
    experiment: tuple[str, Path] | None = field(default_factory=workspace_experiment)

    @classmethod
    def start(cls, path: str | Path, params: Params) -> "SettingsGuard":
        """Call right after loading ``params`` from ``path``: raises ``SettingsChanged`` when another workspace
        experiment has already swapped them."""
        guard = cls(Path(path), params.flat())
        guard._check_experiment("before this stage started")
        return guard

    def _check_experiment(self, when: str) -> None:
        if self.experiment is None:
            return
        name, root = self.experiment
        running = running_experiment(root)
        if running == name:
            return
        seen = f"DVC now says {running!r} runs here" if running else "it ended and removed DVC's record of this run"
        raise SettingsChanged(
            f"another `dvc exp run` started in this workspace {when} while experiment {name!r} ran ({seen}): DVC "
            f"wrote that run's -S values into {self.path}, so this stage would use settings {name!r} was not "
            f"started with. Stopped before recording anything under {name!r}; run it again with its own -S values. "
            f"{SIDE_BY_SIDE}")

    def check(self, when: str, kept: str = "") -> None:
        """Raise ``SettingsChanged`` when ``params.yaml`` no longer holds the starting settings (or another
        workspace experiment took over). ``when`` says where the stage is, ``kept`` what of its work is kept."""
        self._check_experiment(when)
        try:
            now = params_from_dict(yaml.safe_load(self.path.read_bytes().decode("utf-8-sig")) or {}).flat()
        except Exception as exc:  # unreadable or invalid now: changed, whatever it holds
            changes = [f"it no longer reads ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"]
        else:
            changes = _differences(self.settings, now)
        if not changes:
            return
        raise SettingsChanged(
            f"{self.path} changed while this stage ran ({'; '.join(changes)}); DVC would record this run with the "
            f"new values, which it did not use. Stopped {when}{'; ' + kept if kept else ''}. Put the starting "
            f"values back (`dvc exp run -S key=value`, or `git checkout {self.path.name}`) to resume. Another `dvc "
            f"exp run` in this workspace writes its -S values into {self.path.name}: {SIDE_BY_SIDE}")


def load_guarded(path: str | Path) -> tuple[Params, SettingsGuard]:
    """What a stage starts with: ``load_params(path)`` and the guard of those settings."""
    params = load_params(path)
    return params, SettingsGuard.start(path, params)
