"""What one Table 3 runs: every selected row x seed at one scale, each with every override that defines it."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from palbert.config import OPTIONAL_KEYS, Params, Table3Row, apply_overrides, params_from_dict, params_to_dict
from palbert.params_file import load_params

NAME_PREFIX = "t3"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Table3Error(RuntimeError):
    """The table cannot be made: bad selection, a failed experiment, a bad record."""


def check_name(kind: str, value: str) -> str:
    """Row ids and table ids end up in git ref names, folder names, Hydra overrides and MLflow filters."""
    if not _SAFE.match(value):
        raise Table3Error(f"{kind} {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def experiment_name(row: str, seed: int) -> str:
    return f"{NAME_PREFIX}-{row}-s{seed}"


def hydra_value(value: Any) -> str:
    """A param value in the Hydra override syntax ``dvc exp run -S`` parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "null"
    raise Table3Error(f"cannot pass {value!r} ({type(value).__name__}) as a -S value")


def _scale_left(scale: Mapping[str, Any], row_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The scale's overrides but those the row sets itself."""
    return {key: value for key, value in scale.items() if key not in row_overrides}


def _opt_in(dotted: str) -> bool:
    """An opt-in key (``config.OPTIONAL_KEYS``): params.yaml need not have it, so ``-S`` adds it (Hydra's ``++``)."""
    section, _, key = dotted.partition(".")
    return key in OPTIONAL_KEYS.get(section, ())


def select_rows(rows: Sequence[Table3Row], wanted: Sequence[str] | None) -> list[Table3Row]:
    """The rows named in ``wanted`` (all when None), in the table's order, so 'previous row' is the paper's."""
    known = [row.id for row in rows]
    if not wanted:
        return list(rows)
    unknown = [row_id for row_id in wanted if row_id not in known]
    if unknown:
        raise Table3Error(f"unknown Table 3 row(s) {', '.join(unknown)}; params.yaml has {', '.join(known)}")
    return [row for row in rows if row.id in set(wanted)]


@dataclass(frozen=True)
class PlannedRun:
    table_id: str
    row: str
    seed: int
    #: Dotted key -> value: the overrides that define the row, and those of the table's scale.
    row_overrides: dict[str, Any]
    scale: dict[str, Any]
    #: The params of the run with every override applied (params.yaml as the base).
    params: Params

    @property
    def overrides(self) -> dict[str, Any]:
        """Everything the run sets: scale, row (a key both set is the row's), seed."""
        return {**self.row_overrides, **_scale_left(self.scale, self.row_overrides), "train.seed": self.seed}

    @property
    def name(self) -> str:
        return experiment_name(self.row, self.seed)

    @property
    def folder(self) -> str:
        """The run's record folder inside the table's folder."""
        return f"{self.row}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        return self.params.result_settings()

    def row_differences(self, overrides: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
        """Where a record's row overrides and settings (``result_settings()``'s shape) disagree with this run's
        row, scale and seed, whatever the other settings are."""
        found = [f"row overrides {dict(overrides)}, not {self.row_overrides}"] if dict(overrides) != self.row_overrides else []
        for dotted, value in self.overrides.items():
            section, _, key = dotted.partition(".")
            have = (settings.get(section) or {}).get(key, "<absent>")
            if have != value:
                found.append(f"{dotted}: {have!r} in the record, {value!r} in the row")
        return found

    def exp_run_command(self) -> list[str]:
        """``dvc exp run --name t3-<row>-s<seed> -S ...``: this run by hand, as one DVC experiment in the workspace."""
        command = ["dvc", "exp", "run", "--name", self.name]
        tags = {"tracking.table3_id": self.table_id, "tracking.table3_row": self.row}
        for key, value in {**self.overrides, **tags}.items():
            command += ["-S", f"{'++' if _opt_in(key) else ''}{key}={hydra_value(value)}"]
        return command


def committed_params(root: Path) -> Params:
    """``params.yaml`` as committed at HEAD, the base of every run: each run checks out HEAD, and ``dvc exp run -S``
    leaves its values in the workspace's copy. Outside git: the workspace's file."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True)
    if shown.returncode != 0:
        return load_params(root / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="palbert-committed-") as tmp:
        (Path(tmp) / "params.yaml").write_bytes(shown.stdout)
        return load_params(Path(tmp) / "params.yaml")


def plan_runs(base: Params, rows: Sequence[Table3Row], seeds: Sequence[int], table_id: str,
              scale: Mapping[str, Any]) -> list[PlannedRun]:
    """One run per row x seed (a row that names its own seeds: those of ``seeds`` only), each with every
    override that defines it.

    Seed-major: all rows of the first seed, then of the next, so that a table whose runs are cut short
    (a job's time limit) is a whole table with fewer seeds, not some rows with all seeds.
    """
    check_name("table id", table_id)
    if not seeds:
        raise Table3Error("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise Table3Error(f"duplicate seeds in {list(seeds)}")
    raw = params_to_dict(base, include_table3=False)
    for row in rows:
        check_name("row id", row.id)
    runs = []
    for seed in seeds:
        for row in (row for row in rows if row.runs_seed(seed)):
            # a row that sets a key of the scale keeps its own value (e.g. more steps for a cheaper step)
            overrides = {**row.overrides, **_scale_left(scale, row.overrides), "train.seed": int(seed)}
            params = params_from_dict(apply_overrides(raw, overrides))
            runs.append(PlannedRun(table_id=table_id, row=row.id, seed=int(seed), row_overrides=dict(row.overrides),
                                   scale=dict(scale), params=params))
    return runs
