"""What one Table 3 runs: every selected row x seed at one scale, each with every override that defines it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from palbert.config import OPTIONAL_KEYS, Params, Table3Row, apply_overrides, params_from_dict, params_to_dict

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

    def set_param_args(self, threads: int = 0) -> list[str]:
        """``["-S", "model.pals=false", ...]`` for ``dvc exp run``, with the tags that group the table in MLflow,
        and ``train.threads`` when several runs share the CPU (not a result setting: records still match)."""
        tags = {"tracking.table3_id": self.table_id, "tracking.table3_row": self.row}
        args: list[str] = []
        for key, value in {**self.overrides, **tags, **({"train.threads": threads} if threads else {})}.items():
            args += ["-S", f"{'++' if _opt_in(key) else ''}{key}={hydra_value(value)}"]
        return args

    def queue_command(self, force: bool = False, threads: int = 0) -> list[str]:
        command = ["dvc", "exp", "run", "--queue", "--name", self.name]
        if force:
            command.append("--force")
        return command + self.set_param_args(threads)


def threads_per_job(jobs: int, cpus: int | None) -> int:
    """Intra-op threads for each of ``jobs`` runs at once on ``cpus`` cores (0: PyTorch's default, for one job).

    PyTorch's default is every core for each process, so two runs at once would oversubscribe the CPU; two
    runs of one thread each train 1.41x as many examples per second as one of two threads on a 2-core
    AVX512-BF16 machine (docs/results/cpu-threads-no-amx.txt)."""
    return 0 if jobs <= 1 else max(1, (cpus or 1) // jobs)


def plan_runs(base: Params, rows: Sequence[Table3Row], seeds: Sequence[int], table_id: str,
              scale: Mapping[str, Any]) -> list[PlannedRun]:
    """One run per row x seed, each with every override that defines it.

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
        for row in rows:
            # a row that sets a key of the scale keeps its own value (e.g. more steps for a cheaper step)
            overrides = {**row.overrides, **_scale_left(scale, row.overrides), "train.seed": int(seed)}
            params = params_from_dict(apply_overrides(raw, overrides))
            runs.append(PlannedRun(table_id=table_id, row=row.id, seed=int(seed), row_overrides=dict(row.overrides),
                                   scale=dict(scale), params=params))
    return runs
