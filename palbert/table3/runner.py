"""``palbert table3``: run what a table is missing, record each run as it finishes, rebuild the table.

The table lives in ``results/table3/<table-id>/`` (committed): one record per row x seed, and
``table.md``, ``table.json`` and ``figures/`` rebuilt from those records alone. Every missing run is a Ray task
(``palbert.table3.executor``) that returns its record's files; this module alone writes the table's folder: it
checks each returned record (checksums, settings, dev block rescored from its predictions) and moves it in with
one rename, so a killed command loses only the runs in progress, and the same command again keeps every valid
record and runs the rest. A record that is damaged or of another scale is named and run again; one whose
settings the row no longer gives is refused unless ``rerun_stale``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from palbert.atomic import atomic_dir, check_writable, read_json_object, write_json, write_text
from palbert.config import Params
from palbert.table3.executor import ExecutorSettings, connected, execute
from palbert.table3.figures import write_figures
from palbert.table3.plan import PlannedRun, Table3Error, check_name, plan_runs, select_rows
from palbert.table3.records import RECORD_FILE, RecordError, RunRecord, StaleRecordError, read_record
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
    #: Run again the records whose settings the params no longer give; False: refuse (see _refuse_stale).
    rerun_stale: bool = False
    #: A rebuild may leave out records that cannot be read (damaged, another scale); False: it refuses.
    drop_unreadable: bool = False
    table_id: str | None = None
    #: "" : ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the project's local store.
    tracking_uri: str = ""
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
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


def check_records(folder: Path, runs: Sequence[PlannedRun], row_only: bool = False) -> RecordCheck:
    check = RecordCheck()
    for run in runs:
        path = folder / run.folder
        if not path.exists():
            continue
        try:
            check.good[run.name] = read_record(path, run, run.scale, row_only=row_only)
        except RecordError as exc:
            found = (str(path), str(exc).removeprefix(f"{path}/").removeprefix(str(path)))
            (check.stale if isinstance(exc, StaleRecordError) else check.bad).append(found)
    return check


def _refuse_stale(stale: Sequence[tuple[str, str]], what: str, override: str) -> None:
    """Committed records are hours of compute: a row that disowns them is more often an edit by mistake than a
    row redefined on purpose."""
    if stale:
        listed = "; ".join(f"{path} ({reason})" for path, reason in stale[:3]) + (
            f"; and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise Table3Error(
            f"{len(stale)} record(s) no longer match their row, so {what}: {listed}. If the params or the catalogue "
            f"were changed by mistake, restore them (`git diff`, `git checkout params.yaml table3.yaml`); if the rows "
            f"were redefined on purpose, {override}. Nothing was written.")


def make_table3(root: Path, params: Params, request: Table3Request) -> dict[str, Any]:
    """Run what is missing (valid records are kept), record each finished run, then rebuild the table."""
    rows = select_rows(params.table3.rows, request.rows)
    elsewhere = [row.id for row in rows if not row.runs_at(request.scale)]
    if elsewhere and request.rows:
        raise Table3Error(f"row(s) {', '.join(elsewhere)} run at other scales than {request.scale!r} (their "
                          "`scales` in the catalogue)")
    rows = [row for row in rows if row.runs_at(request.scale)]
    seeds = list(request.seeds or params.table3.seeds)
    seedless = [f"{row.id} ({', '.join(map(str, row.seeds))})" for row in rows
                if not any(row.runs_seed(seed) for seed in seeds)]
    if seedless and request.rows:
        raise Table3Error(f"row(s) {', '.join(seedless)} run only the seeds named beside them (their `seeds` in "
                          f"the catalogue), none of {', '.join(map(str, seeds))}")
    scale = params.table3.scale(request.scale)
    table_id = request.table_id or request.scale
    folder = table_folder(root, table_id)
    check_writable({"the table's records": folder})  # before any training: a record lost after an hour of it hurts
    _check_scale(folder, request.scale, scale)
    runs = plan_runs(params, rows, seeds, table_id, scale)
    check = check_records(folder, runs)
    if not request.rerun_stale:
        _refuse_stale(check.stale, "they would run again", "rerun with --rerun-changed")
    for path, reason in check.bad + check.stale:
        log.warning("%s: %s; it runs again", path, reason)
    for name, record in check.good.items():
        log.info("%s: kept (record of overall %.4f)", name, record.dev["overall"])
    missing = [run for run in runs if run.name not in check.good]
    if missing:
        uri = request.tracking_uri or resolve_tracking_uri(params.tracking, root)
        with connected(request.executor):
            create_local_store(uri)  # before several runs open it at once
            outcome = execute(missing, request.scale, root, uri, request.executor,
                              lambda run, files, _: accept_record(folder, run, files, scale), total=len(runs))
        if outcome.failed:
            raise Table3Error(f"{len(outcome.failed)} of {len(missing)} run(s) failed: {'; '.join(outcome.failed)}. "
                              "Fix the cause and run the same command again: finished records are kept.")
    return rebuild_table(root, params, table_id, request.bootstrap)


def accept_record(folder: Path, run: PlannedRun, files: Mapping[str, bytes], scale: Mapping[str, Any]) -> RunRecord:
    """Check a run's returned record files in a hidden folder beside the table, then move them in with one rename:
    a record in the table's folder is always whole and checked."""
    final = folder / run.folder
    with atomic_dir(final) as tmp:  # a refused record raises here: nothing replaces what was there
        for name, data in files.items():
            target = (tmp / name).resolve()
            if not target.is_relative_to(tmp.resolve()):
                raise Table3Error(f"{run.name}: returned a file outside its record ({name})")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        read_record(tmp, run, scale)
    return read_record(final, run, scale)


def rebuild_table(root: Path, params: Params, table_id: str,
                  bootstrap: BootstrapSettings = BootstrapSettings(), drop_unreadable: bool = False) -> dict[str, Any]:
    """``table.json``, ``table.md`` and the figures of ``table_id``, from its records alone.

    Each record is checked against its own row (the catalogue's overrides, the table's scale, its seed), not the
    rest of ``params.yaml``, which an experiment may have changed. A record that cannot be read (truncated, edited,
    of another scale) stops the rebuild before anything is written, unless ``drop_unreadable``."""
    folder = table_folder(root, table_id)
    found = sorted(path for path in folder.iterdir()
                   if path.is_dir() and path.name != FIGURES and not path.name.startswith(".")) if folder.is_dir() else []
    if not found:
        raise Table3Error(f"{folder}: no records (run `palbert table3 --scale ...` first)")
    check_writable({"the table": folder, "its figures": folder / FIGURES})
    log.info("%s: reading %d record(s) and their dev predictions", folder, len(found))
    scale_name, scale = _scale_of(found)
    seeds = sorted({int(path.name.rsplit("-s", 1)[1]) for path in found if path.name.rsplit("-s", 1)[-1].isdigit()})
    rows = [row for row in params.table3.rows if row.runs_at(scale_name)]
    runs = plan_runs(params, rows, seeds, table_id, scale)
    check = check_records(folder, runs, row_only=True)
    known = {str(folder / run.folder) for run in runs}
    outside = "not a row x seed of the catalogue (its rows, their scales and seeds)"
    check.stale += [(str(path), outside) for path in found if str(path) not in known]
    _refuse_stale(check.stale, "the rebuilt table would leave them out",
                  "delete their folders (or run them again with `palbert table3 --rerun-changed`)")
    records, bad = check.good, check.bad
    if bad and not drop_unreadable:
        listed = "; ".join(f"{path}: {reason}" for path, reason in bad[:3]) + (
            f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise Table3Error(f"{len(bad)} record(s) cannot be read, so the rebuilt table would leave them out: {listed}. "
                          "Restore them (`git checkout results/`), or rebuild with --drop-unreadable to leave them "
                          "out on purpose. Nothing was written.")
    for path, reason in bad:
        log.warning("%s: left out of the table: %s", path, reason)
    by_row: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.name in records:
            by_row.setdefault(run.row, []).append(records[run.name])
    table = build_table(rows, by_row, table_id, {"name": scale_name, "overrides": scale},
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
