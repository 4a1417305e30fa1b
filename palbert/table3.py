"""Table 3 of the paper in one command: every row x seed as a DVC experiment, then one table with seed spread.

Each row of ``params.yaml``'s ``table3`` section is the full set of overrides that defines it. For every
selected row and seed this module queues ``dvc exp run --queue --name t3-<row>-s<seed> -S ...``, runs the
queue in the foreground (``dvc exp run --run-all``), reads the results back from ``dvc exp show --json``
and writes ``metrics/table3.json`` and ``metrics/table3.md``: mean +- standard deviation over seeds of each
dev metric, the paper's number beside it, and the overall difference to the previous row with a 95%
bootstrap interval over dev examples, pooled over seeds. The paper's row-to-row gaps (0.761 vs 0.770) are
about the size of seed noise; the interval says which ones are not.

DVC facts this relies on (DVC 3.67):
- ``dvc exp run --run-all -j N`` starts N queue workers, follows every queued experiment's log in the
  foreground and returns when all are done, but exits 0 even when some failed: failures are found
  afterwards, from ``dvc exp show --json`` (``executor.state == "failed"``, or no metrics).
- Queueing a name that already exists as an experiment of the same baseline commit fails unless
  ``--force``; failed queue entries keep their name in ``dvc exp show`` but do not block it.
- ``-S`` values go through Hydra's override grammar: strings are single-quoted so that a row id
  ``0`` stays a string, lists are ``[a,b]``, booleans ``true``/``false``.
- Queued experiments run in ``.dvc/tmp/exps/<tmp>/`` with ``DVC_ROOT`` set to the real repository, which
  ``palbert.tracking.find_project_root`` uses, so their MLflow runs land in the project's store.

The MLflow runs of one table share the tag ``table3_id`` (no parent run: the UI filters on
``tags.table3_id = '<id>'``); each run's dev predictions (``predictions/*-dev.csv`` artifacts) feed
the bootstrap.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from palbert.atomic import write_json, write_text
from palbert.config import TASK_DATASET, TASKS, Params, Table3Row, params_from_dict
from palbert.metrics import DEV_METRICS, BootstrapInterval

log = logging.getLogger(__name__)

#: The dev metrics of ``metrics/dev.json`` the table reports, in column order.
COLUMNS: tuple[str, ...] = DEV_METRICS
#: The keys of a row's ``paper`` mapping for each column.
PAPER_KEYS: dict[str, str] = {"sst_acc": "sst", "para_acc": "para", "sts_pearson": "sts", "overall": "overall"}
NAME_PREFIX = "t3"
DEV_METRICS_FILE = "metrics/dev.json"
TABLE_JSON = Path("metrics/table3.json")
TABLE_MD = Path("metrics/table3.md")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Index matrices of a bootstrap chunk hold at most this many entries (memory stays ~64 MB).
_CHUNK_ENTRIES = 8_000_000


class Table3Error(RuntimeError):
    """The table cannot be made: bad selection, a failed experiment, missing predictions."""


# --------------------------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSize:
    """Optional shrinking of every run (smoke tests, quick looks): ``None`` keeps params.yaml's value."""

    epochs: int | None = None
    steps_per_epoch: int | None = None
    subset: int | None = None

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.epochs is not None:
            out["train.epochs"] = self.epochs
        if self.steps_per_epoch is not None:
            out["train.steps_per_epoch"] = self.steps_per_epoch
        if self.subset is not None:
            out["data.subset"] = self.subset
        return out


@dataclass(frozen=True)
class PlannedRun:
    row: str
    seed: int
    name: str
    #: Every param this run sets (row overrides, seed, size, tracking tags), dotted key -> value.
    overrides: dict[str, Any]

    def set_param_args(self) -> list[str]:
        """``["-S", "model.pals=false", ...]`` for ``dvc exp run``."""
        args: list[str] = []
        for key, value in self.overrides.items():
            args += ["-S", f"{key}={hydra_value(value)}"]
        return args

    def queue_command(self, force: bool = False) -> list[str]:
        command = ["dvc", "exp", "run", "--queue", "--name", self.name]
        if force:
            command.append("--force")
        return command + self.set_param_args()


def new_table_id() -> str:
    return time.strftime(f"{NAME_PREFIX}-%Y%m%d-%H%M%S")


def check_name(kind: str, value: str) -> str:
    """Row ids and table ids end up in git ref names, Hydra overrides and MLflow filters: keep them plain."""
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


def select_rows(rows: Sequence[Table3Row], wanted: Sequence[str] | None) -> list[Table3Row]:
    """The rows named in ``wanted`` (all when None), in the table's order, so 'previous row' is the paper's."""
    known = [row.id for row in rows]
    if not wanted:
        return list(rows)
    unknown = [row_id for row_id in wanted if row_id not in known]
    if unknown:
        raise Table3Error(f"unknown Table 3 row(s) {', '.join(unknown)}; params.yaml has {', '.join(known)}")
    return [row for row in rows if row.id in set(wanted)]


def plan_runs(rows: Sequence[Table3Row], seeds: Sequence[int], table_id: str,
              size: RunSize = RunSize()) -> list[PlannedRun]:
    """One run per row x seed, each with every override that defines it."""
    check_name("table id", table_id)
    if not seeds:
        raise Table3Error("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise Table3Error(f"duplicate seeds in {list(seeds)}")
    runs = []
    for row in rows:
        check_name("row id", row.id)
        for seed in seeds:
            overrides = {**row.overrides, **size.overrides(), "train.seed": int(seed),
                         "tracking.table3_id": table_id, "tracking.table3_row": row.id}
            runs.append(PlannedRun(row=row.id, seed=int(seed), name=experiment_name(row.id, seed),
                                   overrides=overrides))
    return runs


# --------------------------------------------------------------------------------------------
# What DVC already has
# --------------------------------------------------------------------------------------------


@dataclass
class ExpRecord:
    """One experiment of the current baseline commit, as ``dvc exp show --json`` lists it."""

    name: str
    rev: str
    #: ``success``, ``failed``, ``queued``, ``running``, or None (finished, no queue record left).
    state: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    log_file: str | None = None
    timestamp: str = ""

    @property
    def complete(self) -> bool:
        return (self.state not in ("failed", "queued", "running") and self.metrics is not None
                and all(isinstance(self.metrics.get(name), (int, float)) for name in COLUMNS))

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def has_ref(self) -> bool:
        """A finished experiment of this name exists: queueing the name again needs ``--force``."""
        return self.state not in ("failed", "queued", "running")

    @property
    def table_id(self) -> str:
        return str(self.params.get("tracking", {}).get("table3_id") or "")

    def param(self, dotted: str) -> Any:
        value: Any = self.params
        for part in dotted.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
        return value


_MISSING = object()


def parse_exp_show(data: Sequence[Mapping[str, Any]]) -> dict[str, list[ExpRecord]]:
    """``dvc exp show --json`` output -> named experiments of the shown baseline(s), newest first."""
    found: dict[str, list[ExpRecord]] = {}
    for baseline in data:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for rev in experiment.get("revs") or []:
                name = rev.get("name") or experiment.get("name")
                if not name:
                    continue
                body = rev.get("data") or {}
                metrics_file = (body.get("metrics") or {}).get(DEV_METRICS_FILE) or {}
                params_file = (body.get("params") or {}).get("params.yaml") or {}
                state = executor.get("state")
                if rev.get("error") and state is None:
                    state = "failed"
                found.setdefault(name, []).append(ExpRecord(
                    name=name,
                    rev=rev.get("rev", ""),
                    state=state,
                    params=params_file.get("data") or {},
                    metrics=metrics_file.get("data"),
                    log_file=(executor.get("local") or {}).get("log"),
                    timestamp=body.get("timestamp") or "",
                ))
    for records in found.values():
        records.sort(key=lambda record: record.timestamp, reverse=True)
    return found


def read_experiments(root: Path) -> dict[str, list[ExpRecord]]:
    """The experiments of the repository's HEAD commit (``dvc exp show --json``)."""
    result = _dvc(root, ["exp", "show", "--json"], capture=True)
    try:
        data = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise Table3Error(f"`dvc exp show --json` printed something that is not JSON: {exc}") from None
    return parse_exp_show(data)


def matches(record: ExpRecord, run: PlannedRun) -> bool:
    """Whether an existing experiment ran with every override of ``run`` (the table id aside)."""
    for key, value in run.overrides.items():
        if key == "tracking.table3_id":
            continue
        have = record.param(key)
        if have is _MISSING or not _same_value(have, value):
            return False
    return True


def _same_value(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return str(have).lower() == str(want).lower()
    if isinstance(want, (int, float)) and not isinstance(have, (list, dict)):
        try:
            return float(have) == float(want)  # YAML 1.2 `2e-05` may come back as a string
        except (TypeError, ValueError):
            return False
    if isinstance(want, (list, tuple)):
        return isinstance(have, list) and len(have) == len(want) and all(
            _same_value(a, b) for a, b in zip(have, want))
    return str(have) == str(want)


@dataclass
class QueuePlan:
    """What the command does with each planned run."""

    to_queue: list[tuple[PlannedRun, bool]] = field(default_factory=list)  # (run, force)
    reused: dict[str, ExpRecord] = field(default_factory=dict)
    pending: dict[str, ExpRecord] = field(default_factory=dict)


def plan_queue(runs: Sequence[PlannedRun], existing: Mapping[str, Sequence[ExpRecord]],
               resume: bool) -> QueuePlan:
    """Which runs to queue, and (``resume``) which finished or still-queued experiments to keep.

    With ``resume`` an experiment of the same name that has all dev metrics and ran with the same
    overrides is reused, and one still queued or running is waited for instead of queued twice.
    Without it everything runs again (``--force`` replaces a finished experiment of the same name),
    but a queued or running one is an error: it would run twice.
    """
    plan = QueuePlan()
    for run in runs:
        records = list(existing.get(run.name, ()))
        pending = next((r for r in records if r.pending), None)
        complete = next((r for r in records if r.complete), None)
        force = any(r.has_ref for r in records)
        if pending is not None:
            if not resume:
                raise Table3Error(
                    f"experiment {run.name} is already {pending.state} in the DVC queue: rerun with --resume "
                    f"to wait for it, or remove it (`dvc queue kill {run.name}` / `dvc queue remove {run.name}`)")
            plan.pending[run.name] = pending
        elif resume and complete is not None and matches(complete, run):
            plan.reused[run.name] = complete
        else:
            if resume and complete is not None:
                log.info("%s exists but with other settings: running it again", run.name)
            plan.to_queue.append((run, force))
    return plan


def resumed_table_id(plan_existing: Iterable[ExpRecord]) -> str | None:
    """The table id of the newest experiment a resumed table keeps, so the whole table shares one id."""
    records = sorted(plan_existing, key=lambda record: record.timestamp, reverse=True)
    return next((record.table_id for record in records if record.table_id), None)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _dvc(root: Path, args: Sequence[str], capture: bool = False) -> subprocess.CompletedProcess:
    command = ["dvc", *args]
    log.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, cwd=root, text=True, capture_output=capture)
    except FileNotFoundError:
        raise Table3Error("`dvc` is not on PATH: activate the project's environment") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else "see the output above"
        raise Table3Error(f"`{' '.join(command)}` failed (exit {result.returncode}): {detail}")
    return result


def queue_runs(root: Path, plan: QueuePlan) -> None:
    for run, force in plan.to_queue:
        result = _dvc(root, run.queue_command(force=force)[1:], capture=True)
        log.info("queued %s%s", run.name, " (replacing the existing one)" if force else "")
        log.debug("%s", result.stdout.strip())


def run_queue(root: Path, jobs: int) -> None:
    """Run every queued experiment in the foreground, its log streamed to the terminal.

    ``--run-all`` also runs experiments someone else queued in this repository; they are named first.
    Its exit status says nothing about failures: the caller checks the results.
    """
    if jobs < 1:
        raise Table3Error(f"--jobs must be >= 1, got {jobs}")
    _dvc(root, ["exp", "run", "--run-all", "--jobs", str(jobs)])


def check_finished(runs: Sequence[PlannedRun], existing: Mapping[str, Sequence[ExpRecord]]) -> dict[str, ExpRecord]:
    """Each run's finished experiment; a failed or missing one stops here, naming its log."""
    done: dict[str, ExpRecord] = {}
    problems = []
    for run in runs:
        records = list(existing.get(run.name, ()))
        complete = next((r for r in records if r.complete and matches(r, run)), None)
        if complete is not None:
            done[run.name] = complete
            continue
        failed = next((r for r in records if r.state == "failed"), None)
        if failed is not None:
            problems.append(f"{run.name} failed (log: {failed.log_file or f'dvc queue logs {run.name}'})")
        elif records and records[0].pending:
            problems.append(f"{run.name} is still {records[0].state}")
        elif records:
            problems.append(f"{run.name} finished without all of {', '.join(COLUMNS)} in {DEV_METRICS_FILE}")
        else:
            problems.append(f"{run.name} is not among the experiments of this commit")
    if problems:
        raise Table3Error("Table 3 is incomplete: " + "; ".join(problems) +
                          ". Fix the cause and rerun with --resume to run only what is missing.")
    return done


# --------------------------------------------------------------------------------------------
# Dev predictions and labels
# --------------------------------------------------------------------------------------------


@dataclass
class DevLabels:
    ids: dict[str, np.ndarray]  # task -> ids in file order
    labels: dict[str, np.ndarray]  # task -> labels


def read_prediction_csv(text: str, where: str) -> tuple[list[str], np.ndarray]:
    """``id,prediction`` rows (the DESIGN.md contract)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != ["id", "prediction"]:
        raise Table3Error(f"{where}: expected the header 'id,prediction', got {header}")
    ids, values = [], []
    for line, row in enumerate(reader, start=2):
        if len(row) != 2:
            raise Table3Error(f"{where}, line {line}: expected 2 columns, got {len(row)}")
        try:
            values.append(float(row[1]))
        except ValueError:
            raise Table3Error(f"{where}, line {line}: prediction {row[1]!r} is not a number") from None
        ids.append(row[0])
    return ids, np.asarray(values, dtype=np.float64)


def align(ids: Sequence[str], values: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """``values`` reordered to ``wanted``'s ids; every run must predict exactly the labelled dev ids."""
    position = {row_id: i for i, row_id in enumerate(ids)}
    missing = [str(row_id) for row_id in wanted if str(row_id) not in position]
    if missing or len(position) != len(wanted):
        raise Table3Error(f"{where}: predicted ids differ from the dev labels "
                          f"({len(missing)} labelled ids missing, {len(position)} predicted vs {len(wanted)})")
    return values[[position[str(row_id)] for row_id in wanted]]


def load_dev_labels(root: Path, rev: str) -> DevLabels:
    """Dev labels of each task's dataset as the experiment ``rev`` prepared them (from the DVC cache)."""
    import dvc.api

    from palbert.data.prepared import load_prepared

    ids, labels = {}, {}
    with tempfile.TemporaryDirectory(prefix="table3-labels-") as tmp:
        for task in TASKS:
            dataset = TASK_DATASET[task]
            target = Path(tmp) / dataset / "dev.npz"
            target.parent.mkdir(parents=True)
            try:
                with dvc.api.open(f"data/prepared/{dataset}/dev.npz", repo=str(root), rev=rev, mode="rb") as src:
                    target.write_bytes(src.read())
            except Exception as exc:  # a missing cache entry or path: say which
                raise Table3Error(f"cannot read data/prepared/{dataset}/dev.npz of experiment {rev[:7]}: {exc}") from exc
            split = load_prepared(Path(tmp), dataset, "dev")
            if split is None or split.labels is None:
                raise Table3Error(f"data/prepared/{dataset}/dev.npz of {rev[:7]} has no labels")
            ids[task] = np.asarray(split.ids).astype(str)
            labels[task] = np.asarray(split.labels)
    return DevLabels(ids=ids, labels=labels)


def find_mlflow_run(client: Any, experiment_id: str, record: ExpRecord, row: str, seed: int) -> Any:
    """The newest finished MLflow run tagged with this table, row and seed (preferring this DVC experiment)."""
    from palbert.tracking import TAG_DVC_EXP_NAME, TAG_SEED, TAG_TABLE3_ID, TAG_TABLE3_ROW

    query = (f"tags.{TAG_TABLE3_ID} = '{record.table_id}' and tags.{TAG_TABLE3_ROW} = '{row}' "
             f"and tags.{TAG_SEED} = '{seed}' and attributes.status = 'FINISHED'")
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    if not runs:
        raise Table3Error(f"no finished MLflow run with {query!r} for experiment {record.name}")
    named = [run for run in runs if run.data.tags.get(TAG_DVC_EXP_NAME) == record.name]
    return (named or runs)[0]


def load_run_predictions(record: ExpRecord, row: str, seed: int, root: Path,
                         labels: DevLabels) -> dict[str, np.ndarray]:
    """One experiment's dev predictions (task -> array in label order), from its MLflow run's artifacts."""
    from mlflow import MlflowClient

    from palbert.tracking import resolve_tracking_uri

    params = params_from_dict(record.params)
    uri = resolve_tracking_uri(params.tracking, root)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        raise Table3Error(f"MLflow experiment {params.tracking.experiment!r} not found in {uri}")
    run = find_mlflow_run(client, experiment.experiment_id, record, row, seed)
    out = {}
    with tempfile.TemporaryDirectory(prefix="table3-predictions-") as tmp:
        folder = Path(client.download_artifacts(run.info.run_id, "predictions", tmp))
        for task in TASKS:
            path = folder / f"{task}-dev.csv"
            where = f"MLflow run {run.info.run_id} ({record.name}) predictions/{path.name}"
            if not path.is_file():
                raise Table3Error(f"{where} is missing")
            ids, values = read_prediction_csv(path.read_text(encoding="utf-8"), where)
            out[task] = align(ids, values, labels.ids[task], where)
    log.info("%s: predictions from MLflow run %s", record.name, run.info.run_id)
    return out


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for one seed, where spread is unknown."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values")
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return float(array.mean()), std


def _task_scores(task: str, predictions: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The task metric on each resample: ``rows`` is [resamples, n] of example indices (or [n] for one)."""
    if task in ("sst", "para"):
        return (predictions == labels).astype(np.float64)[rows].mean(axis=-1)
    p, y = predictions.astype(np.float64)[rows], labels.astype(np.float64)[rows]
    dp = p - p.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((dp * dp).sum(axis=-1) * (dy * dy).sum(axis=-1))
    numerator = (dp * dy).sum(axis=-1)
    r = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return np.clip(r, -1.0, 1.0)  # same as palbert.metrics.pearson: undefined r counts as 0


def _mean_overall(systems: Sequence[Mapping[str, np.ndarray]], labels: Mapping[str, np.ndarray],
                  rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """Overall score averaged over seeds (one system per seed), on each resample."""
    total = 0.0
    for system in systems:
        sst, para, sts = (_task_scores(task, system[task], labels[task], rows[task]) for task in TASKS)
        total = total + (sst + (sts + 1) / 2 + para) / 3
    return total / len(systems)


def pooled_bootstrap_difference(
    systems_a: Sequence[Mapping[str, np.ndarray]],
    systems_b: Sequence[Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapInterval:
    """Percentile interval of seed-mean overall(a) - seed-mean overall(b) over resampled dev examples.

    One draw of dev example indices per task (tasks independently, as in
    ``palbert.metrics.bootstrap_difference``) is shared by every seed of both rows, so the interval is
    paired over examples and pooled over seeds: it holds example noise and, through the seed mean, seeds.
    """
    if not systems_a or not systems_b:
        raise ValueError("each side needs at least one seed's predictions")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    sizes = {task: len(labels[task]) for task in TASKS}
    for system in (*systems_a, *systems_b):
        for task in TASKS:
            if len(system[task]) != sizes[task]:
                raise ValueError(f"{task}: {len(system[task])} predictions for {sizes[task]} labels")
    everything = {task: np.arange(sizes[task]) for task in TASKS}
    point = float(_mean_overall(systems_a, labels, everything) - _mean_overall(systems_b, labels, everything))

    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // max(sizes.values()))
    draws = []
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        rows = {task: rng.integers(0, sizes[task], (count, sizes[task])) for task in TASKS}
        draws.append(_mean_overall(systems_a, labels, rows) - _mean_overall(systems_b, labels, rows))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(draws), [tail, 100 - tail])
    return BootstrapInterval(difference=point, low=float(low), high=float(high),
                             confidence=confidence, resamples=resamples)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass
class RowResult:
    row: Table3Row
    seeds: list[int]
    experiments: list[str]
    metrics: list[dict[str, float]]  # one dev.json per seed
    predictions: list[dict[str, np.ndarray]]  # one per seed, task -> dev predictions in label order


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


def build_table(results: Sequence[RowResult], labels: DevLabels, table_id: str,
                settings: BootstrapSettings = BootstrapSettings(),
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``metrics/table3.json``: per row seed mean +- std, paper numbers, difference to the previous row."""
    rows = []
    previous: RowResult | None = None
    for result in results:
        entry: dict[str, Any] = {
            "id": result.row.id,
            "name": result.row.name,
            "seeds": result.seeds,
            "experiments": result.experiments,
        }
        for column in COLUMNS:
            values = [float(metrics[column]) for metrics in result.metrics]
            mean, std = mean_std(values)
            entry[column] = {"mean": mean, "std": std, "values": values,
                             "paper": result.row.paper.get(PAPER_KEYS[column])}
        entry["vs_previous"] = None
        if previous is not None:
            interval = pooled_bootstrap_difference(result.predictions, previous.predictions, labels.labels,
                                                   resamples=settings.resamples, seed=settings.seed,
                                                   confidence=settings.confidence)
            entry["vs_previous"] = {
                "row": previous.row.id,
                "difference": interval.difference,
                "low": interval.low,
                "high": interval.high,
                "excludes_zero": bool(interval.low > 0 or interval.high < 0),
                "paper_difference": _paper_difference(result.row, previous.row),
            }
        rows.append(entry)
        previous = result
    return {
        "table3_id": table_id,
        "mlflow_filter": f"tags.table3_id = '{table_id}'",
        "dev_examples": {task: int(len(labels.labels[task])) for task in TASKS},
        "bootstrap": dataclasses.asdict(settings),
        **dict(extra or {}),
        "rows": rows,
    }


def _paper_difference(row: Table3Row, previous: Table3Row) -> float | None:
    a, b = row.paper.get("overall"), previous.paper.get("overall")
    return None if a is None or b is None else round(a - b, 6)


def _cell(stats: Mapping[str, Any]) -> str:
    std = "n/a" if stats["std"] is None else f"{stats['std']:.3f}"
    paper = "" if stats.get("paper") is None else f" ({stats['paper']:.3f})"
    return f"{stats['mean']:.3f} ± {std}{paper}"


def render_markdown(table: Mapping[str, Any]) -> str:
    """``metrics/table3.md``: the table, then one line per row difference saying whether it is more than noise."""
    confidence = table["bootstrap"]["confidence"]
    n_seeds = sorted({len(row["seeds"]) for row in table["rows"]})
    lines = [
        "# Table 3: ablations (dev set)",
        "",
        f"Table id `{table['table3_id']}` (MLflow UI filter: `{table['mlflow_filter']}`). "
        f"Each cell: mean ± standard deviation over {'/'.join(map(str, n_seeds))} seeds, the paper's number "
        f"in parentheses. Δ: overall minus the previous row's, with a {confidence:.0%} bootstrap interval over "
        f"dev examples ({table['bootstrap']['resamples']} resamples, pooled over seeds).",
        "",
        "| row | model | SST acc | Para acc | STS r | overall | Δ overall vs previous row |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        delta = row["vs_previous"]
        if delta is None:
            delta_text = "–"
        else:
            paper = "" if delta["paper_difference"] is None else f" (paper {delta['paper_difference']:+.3f})"
            delta_text = (f"{delta['difference']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]"
                          f"{' *' if delta['excludes_zero'] else ''}{paper}")
        lines.append(f"| {row['id']} | {row['name']} | " + " | ".join(_cell(row[c]) for c in COLUMNS) +
                     f" | {delta_text} |")
    lines.append("")
    if any(row["vs_previous"] and row["vs_previous"]["excludes_zero"] for row in table["rows"]):
        lines += ["\\* the interval excludes 0.", ""]
    for row in table["rows"]:
        delta = row["vs_previous"]
        if delta is None:
            continue
        verdict = ("excludes 0: a real difference on this dev set" if delta["excludes_zero"]
                   else "contains 0: not distinguishable from noise")
        lines.append(f"- {row['id']} vs {delta['row']}: Δ overall {delta['difference']:+.4f}, "
                     f"{confidence:.0%} interval [{delta['low']:+.4f}, {delta['high']:+.4f}] {verdict}.")
    return "\n".join(lines) + "\n"


def write_table(root: Path, table: Mapping[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = root / TABLE_JSON, root / TABLE_MD
    write_json(json_path, table)
    write_text(md_path, render_markdown(table))
    return json_path, md_path


# --------------------------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------------------------


@dataclass
class Table3Request:
    rows: list[str] | None = None
    seeds: list[int] | None = None
    size: RunSize = RunSize()
    resume: bool = False
    jobs: int = 1
    table_id: str | None = None
    bootstrap: BootstrapSettings = BootstrapSettings()


def make_table3(root: Path, params: Params, request: Table3Request) -> dict[str, Any]:
    """Queue what is missing, run it, collect every row x seed, write both table files; returns the table."""
    rows = select_rows(params.table3.rows, request.rows)
    seeds = list(request.seeds or params.table3.seeds)
    existing = read_experiments(root)
    names = {experiment_name(row.id, seed) for row in rows for seed in seeds}
    table_id = request.table_id
    if table_id is None and request.resume:
        kept = [record for name in names for record in existing.get(name, ()) if record.complete or record.pending]
        table_id = resumed_table_id(kept)
        if table_id:
            log.info("resuming table %s", table_id)
    table_id = check_name("table id", table_id or new_table_id())
    runs = plan_runs(rows, seeds, table_id, request.size)
    plan = plan_queue(runs, existing, request.resume)
    for name, record in plan.reused.items():
        log.info("%s: kept (finished, overall %.4f)", name, record.metrics["overall"])
    foreign = [name for name, records in existing.items() if name not in names and records[0].pending]
    if foreign and (plan.to_queue or plan.pending):
        log.warning("the DVC queue also holds %s: `dvc exp run --run-all` runs them too", ", ".join(foreign))
    queue_runs(root, plan)
    if plan.to_queue or plan.pending:
        log.info("running %d experiment(s) with %d job(s); table id %s",
                 len(plan.to_queue) + len(plan.pending), request.jobs, table_id)
        run_queue(root, request.jobs)
    finished = check_finished(runs, read_experiments(root))

    labels = load_dev_labels(root, finished[runs[0].name].rev)
    results = []
    for row in rows:
        mine = [run for run in runs if run.row == row.id]
        records = [finished[run.name] for run in mine]
        results.append(RowResult(
            row=row,
            seeds=[run.seed for run in mine],
            experiments=[run.name for run in mine],
            metrics=[record.metrics for record in records],
            predictions=[load_run_predictions(record, run.row, run.seed, root, labels)
                         for record, run in zip(records, mine)],
        ))
    table = build_table(results, labels, table_id, request.bootstrap,
                        extra={"run_size": {k: v for k, v in dataclasses.asdict(request.size).items()}})
    json_path, md_path = write_table(root, table)
    log.info("wrote %s and %s", json_path, md_path)
    return table
