"""``palbert table3``: run what a table is missing, record each run as it finishes, rebuild the table.

The table lives in ``results/table3/<table-id>/`` (committed): one record per row x seed, and
``table.md``, ``table.json`` and ``figures/`` rebuilt from those records alone. Runs are DVC experiments
(``t3-<row>-s<seed>``) logged to MLflow with the tags ``table3_id`` and ``table3_row``; they run
``--jobs`` at a time, and each one's record is written as soon as its batch is done, so a killed command
loses only the runs in progress. ``--resume`` keeps every valid record (and records finished
experiments that have none yet); a record that is damaged, of another scale, or of settings the row
no longer has is named and run again.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from palbert.atomic import check_writable, read_json_object, write_json, write_text
from palbert.config import Params
from palbert.table3.experiments import (
    check_experiments_kept,
    finished_experiment,
    plan_experiments,
    queue_run,
    read_experiments,
    requeue_run,
    run_queue,
    wait_for_workers_to_exit,
)
from palbert.table3.figures import write_figures
from palbert.table3.plan import PlannedRun, Table3Error, check_name, plan_runs, select_rows, threads_per_job
from palbert.table3.records import (RECORD_FILE, RecordError, RunRecord, StaleRecordError, collect_record,
                                    read_record)
from palbert.table3.report import BootstrapSettings, build_table, render_markdown
from palbert.tracking.store import create_local_store, resolve_tracking_uri

log = logging.getLogger(__name__)

RESULTS = Path("results/table3")
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
FIGURES = "figures"


@dataclass
class Table3Request:
    rows: list[str] | None = None
    seeds: list[int] | None = None
    scale: str = "full"
    resume: bool = False
    #: False: only record experiments that already finished (a queue run by hand or still running elsewhere).
    train: bool = True
    jobs: int = 1
    #: Run again the records whose settings the workspace's params no longer give; False: refuse (see _refuse_stale).
    rerun_stale: bool = False
    table_id: str | None = None
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)


def table_folder(root: Path, table_id: str) -> Path:
    return root / RESULTS / check_name("table id", table_id)


def _check_scale(folder: Path, scale_name: str, scale: dict[str, Any]) -> None:
    """Two tables of different scales never mix: a folder keeps the scale of its first table."""
    path = folder / TABLE_JSON
    if not path.is_file():
        return
    try:
        have = read_json_object(path, Table3Error, "").get("scale", {})
    except Table3Error:
        return  # rebuilt below from the records, which carry their own scale
    if have.get("overrides") != scale:
        raise Table3Error(f"{folder} holds a table of scale {have.get('name')!r} {have.get('overrides')}, not "
                          f"{scale_name!r} {scale}: choose another --table-id")


@dataclass
class RecordCheck:
    """A table folder's records for a set of runs: usable, unusable (path, reason), and stale, i.e. sound
    records that the workspace's params (a row's definition, or every key after a ``dvc exp run -S``) no
    longer give (path, reason)."""

    good: dict[str, RunRecord] = field(default_factory=dict)
    bad: list[tuple[str, str]] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)


def check_records(folder: Path, runs: Sequence[PlannedRun]) -> RecordCheck:
    check = RecordCheck()
    for run in runs:
        path = folder / run.folder
        if not path.exists():
            continue
        try:
            check.good[run.name] = read_record(path, run, run.scale)
        except RecordError as exc:
            found = (str(path), str(exc).removeprefix(f"{path}/").removeprefix(str(path)))
            (check.stale if isinstance(exc, StaleRecordError) else check.bad).append(found)
    return check


def _refuse_stale(stale: Sequence[tuple[str, str]], what: str, override: str) -> None:
    """Committed records are hours of compute: params that disown them are far more often a workspace left
    changed (``dvc exp run -S``, ``dvc exp apply``) than a row redefined on purpose."""
    if stale:
        listed = "; ".join(f"{path} ({reason})" for path, reason in stale[:3]) + (
            f"; and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise Table3Error(
            f"{len(stale)} record(s) no longer match the workspace's params.yaml, so {what}: {listed}. If "
            f"params.yaml was changed by an experiment, restore it (`git diff params.yaml`, `git checkout "
            f"params.yaml`); if the rows were redefined on purpose, {override}. Nothing was written.")


def make_table3(root: Path, params: Params, request: Table3Request) -> dict[str, Any]:
    """Run what is missing, write a record per finished run, then rebuild the table from the records."""
    rows = select_rows(params.table3.rows, request.rows)
    seeds = list(request.seeds or params.table3.seeds)
    scale = params.table3.scale(request.scale)
    table_id = request.table_id or request.scale
    folder = table_folder(root, table_id)
    check_writable({"the table's records": folder})  # before any training: a record lost after an hour of it hurts
    _check_scale(folder, request.scale, scale)
    runs = plan_runs(params, rows, seeds, table_id, scale)

    check = check_records(folder, runs) if request.resume or not request.train else RecordCheck()
    if not request.rerun_stale:
        _refuse_stale(check.stale, "they would run again", "rerun with --rerun-changed")
    recorded = check.good
    for path, reason in check.bad + check.stale:
        log.warning("%s: %s; it runs again", path, reason)
    for name in recorded:
        log.info("%s: kept (record of overall %.4f)", name, recorded[name].dev["overall"])
    missing = [run for run in runs if run.name not in recorded]
    if missing and request.train:
        check_experiments_kept(root)
        create_local_store(resolve_tracking_uri(params.tracking, root))  # before several runs open it at once
    if missing:
        plan = plan_experiments(missing, read_experiments(root), request.resume or not request.train)
        for run in missing:
            if run.name in plan.finished:
                log.info("%s: finished experiment without a record: recording it", run.name)
                collect_record(root, folder / run.folder, run, plan.finished[run.name], request.scale)
        if not request.train:
            left = [run.name for run in missing if run.name not in plan.finished]
            if left:
                log.info("no record yet (not trained now): %s", ", ".join(left))
        threads = threads_per_job(request.jobs, os.cpu_count())
        requeue = {run.name: functools.partial(requeue_run, root, run, threads) for run in missing}
        if request.train and plan.pending:
            log.info("waiting for %s, already in the DVC queue", ", ".join(plan.pending))
            run_queue(root, request.jobs, requeue)
            _record_batch(root, folder, [run for run in missing if run.name in plan.pending], request.scale)
        to_run = plan.to_queue if request.train else []
        for start in range(0, len(to_run), request.jobs):
            batch = to_run[start : start + request.jobs]
            wait_for_workers_to_exit(root)
            for run, force in batch:
                queue_run(root, run, force, threads)
            log.info("running %s (%d of %d left)", ", ".join(run.name for run, _ in batch),
                     len(to_run) - start, len(to_run))
            run_queue(root, request.jobs, requeue)
            _record_batch(root, folder, [run for run, _ in batch], request.scale)
    return rebuild_table(root, params, table_id, request.bootstrap)


def _record_batch(root: Path, folder: Path, runs: Sequence[PlannedRun], scale_name: str) -> None:
    """Record every finished run of a batch; then stop on the first that failed, naming its log."""
    experiments = read_experiments(root)
    problems = []
    for run in runs:
        try:
            collect_record(root, folder / run.folder, run, finished_experiment(run, experiments), scale_name)
        except Table3Error as exc:
            problems.append(str(exc))
    if problems:
        raise Table3Error("; ".join(problems) + ". Fix the cause and rerun with --resume: finished runs are kept.")


def rebuild_table(root: Path, params: Params, table_id: str,
                  bootstrap: BootstrapSettings = BootstrapSettings()) -> dict[str, Any]:
    """``table.json``, ``table.md`` and the figures of ``table_id``, from its records alone."""
    folder = table_folder(root, table_id)
    found = sorted(path for path in folder.iterdir()
                   if path.is_dir() and path.name != FIGURES and not path.name.startswith(".")) if folder.is_dir() else []
    if not found:
        raise Table3Error(f"{folder}: no records (run `palbert table3 --scale ...` first)")
    check_writable({"the table": folder, "its figures": folder / FIGURES})
    log.info("%s: reading %d record(s) and their dev predictions", folder, len(found))
    scale_name, scale = _scale_of(found)
    seeds = sorted({int(path.name.rsplit("-s", 1)[1]) for path in found if path.name.rsplit("-s", 1)[-1].isdigit()})
    runs = plan_runs(params, params.table3.rows, seeds, table_id, scale)
    check = check_records(folder, runs)
    known = {str(folder / run.folder) for run in runs}
    check.stale += [(str(path), "not a row x seed of table3.yaml") for path in found
                    if str(path) not in known]
    _refuse_stale(check.stale, "the rebuilt table would leave them out",
                  "delete their folders (or run them again with `palbert table3 --resume --rerun-changed`)")
    records, bad = check.good, check.bad
    for path, reason in bad:
        log.warning("%s: left out of the table: %s", path, reason)
    by_row: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.name in records:
            by_row.setdefault(run.row, []).append(records[run.name])
    table = build_table(params.table3.rows, by_row, table_id, {"name": scale_name, "overrides": scale},
                        bootstrap, excluded=[(str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p, r)
                                             for p, r in bad])
    write_json(folder / TABLE_JSON, table)
    write_text(folder / TABLE_MD, render_markdown(table))
    figures = write_figures(table, by_row, folder / FIGURES)
    log.info("wrote %s, %s and %d figure(s) from %d record(s)", folder / TABLE_JSON, folder / TABLE_MD,
             len(figures), table["records"])
    return table


def _scale_of(found: Sequence[Path]) -> tuple[str, dict[str, Any]]:
    """The table's scale, from its first readable record: every other record must share it."""
    for path in found:
        try:
            data = read_json_object(path / RECORD_FILE, Table3Error, "")
            return str(data["scale"]["name"]), dict(data["scale"]["overrides"])
        except (Table3Error, KeyError, TypeError):
            continue
    raise Table3Error(f"{found[0].parent}: no readable {RECORD_FILE}")
