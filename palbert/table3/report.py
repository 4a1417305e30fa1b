"""The table from records alone: seed mean ± std per metric, the paper's value, intervals, Markdown.

No training, DVC experiment or MLflow store is needed: ``build_table`` reads the record folders of one
table (``records.py``), aligns every run's dev predictions to one set of dev ids and labels, and runs
the two-level bootstrap of ``palbert.metrics.bootstrap_rows`` over dev examples and seeds.

The Markdown tables are joined by hand on purpose: ``DataFrame.to_markdown`` needs ``tabulate``, which
is not in requirements-lock.txt (only a dependency of dvc), and tabulate pads every cell to its
column's width and right-aligns numbers (``|   row |``, ``|------:|``), so the committed table.md
files (``| 1 |``, ``|---|``) would not stay byte-identical (tests/test_committed_results.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from palbert.config import Table3Row
from palbert.tasks import TASK_SPECS, TASKS
from palbert.metrics import DEV_METRICS, RowBootstrap, bootstrap_rows
from palbert.table3.records import RecordError, RunRecord
from palbert.table3.verdicts import (MARGIN, MARKS, PAPER_CLAIMS, PaperClaim, claim_verdict, tests_the_paper, verdict,
                                     verdict_words)

__all__ = ["MARGIN", "PAPER_CLAIMS", "claim_verdict", "verdict", "verdict_words", "build_table", "render_markdown",
           "readme_block", "rows_table", "claims_table", "claims_across_scales"]

log = logging.getLogger(__name__)


def paper_key(metric: str) -> str:
    """The key of a row's ``paper`` mapping for a dev metric: its task, or ``overall``."""
    return next((task for task, spec in TASK_SPECS.items() if spec.metric == metric), metric)


#: Every row is also compared with this one unless a row of the catalogue says ``reference: true``: the paper's
#: best model (BP1 + SimCSE), palbert's default.
REFERENCE_ROW = "3"

#: Decimals kept of every computed number in ``table.json``. Float sums differ in the last digits between CPU
#: kinds (numpy's SIMD width), e.g. a bootstrap bound -0.10201405093227846 on one and ...824 on another; six
#: decimals are far more than any cell shows (3-4) and make the file the same on every machine.
TABLE_DECIMALS = 6


def rounded(value: Any, decimals: int = TABLE_DECIMALS) -> Any:
    """``value`` with every float in it rounded, through dicts and lists."""
    if isinstance(value, float):
        return round(value, decimals)
    if isinstance(value, dict):
        return {key: rounded(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, decimals) for item in value]
    return value


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for one seed, where spread is unknown."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values")
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return float(array.mean()), std


def aligned_systems(records: Mapping[str, Sequence[RunRecord]]) -> tuple[dict[str, list[dict[str, np.ndarray]]],
                                                                           dict[str, np.ndarray]]:
    """Every run's dev predictions in one id order, and the labels; a record scored on other ids raises."""
    systems: dict[str, list[dict[str, np.ndarray]]] = {}
    reference = None
    for row, runs in records.items():
        for record in runs:
            dev = record.dev_predictions()
            if reference is None:
                reference = dev
            system = {}
            for task in TASKS:
                if (len(dev.ids[task]) != len(reference.ids[task]) or not np.array_equal(dev.ids[task], reference.ids[task])
                        or not np.allclose(dev.labels[task], reference.labels[task])):
                    raise RecordError(f"{record.folder}: its {task} dev ids or labels differ from "
                                      f"{reference_folder(records)}'s (another dev sample?)")
                system[task] = dev.predictions[task]
            systems.setdefault(row, []).append(system)
    if reference is None:
        raise ValueError("no records")
    return systems, reference.labels


def reference_folder(records: Mapping[str, Sequence[RunRecord]]) -> str:
    return str(next(record.folder for runs in records.values() for record in runs))


def _paper_difference(paper: Mapping[str, float], other: Mapping[str, float]) -> float | None:
    """The paper's overall difference between two rows, where it has both."""
    a, b = paper.get("overall"), other.get("overall")
    return None if a is None or b is None else round(a - b, 6)


def _comparison(boot: RowBootstrap, row: Table3Row, other: Table3Row) -> dict[str, Any]:
    interval = boot.difference(row.id, other.id)
    delta = {"row": other.id, "difference": interval.difference, "low": interval.low, "high": interval.high,
             "excludes_zero": interval.excludes_zero, "paper_difference": _paper_difference(row.paper, other.paper)}
    return {**delta, "verdict": verdict(delta)}


def reference_row(rows: Sequence[Table3Row]) -> str:
    """The row every other is compared with: the one marked ``reference: true``, else row 3."""
    marked = [row.id for row in rows if row.reference]
    if len(marked) > 1:
        raise ValueError(f"rows {', '.join(marked)} each say reference: true; mark one")
    return marked[0] if marked else REFERENCE_ROW


def _bootstrap(records: Mapping[str, Sequence[RunRecord]],
               settings: BootstrapSettings) -> tuple[RowBootstrap, dict[str, np.ndarray]]:
    systems, labels = aligned_systems(records)
    log.info("bootstrap intervals: %d resamples over the dev examples and seeds of %d row(s)",
             settings.resamples, len(records))
    return bootstrap_rows(systems, labels, resamples=settings.resamples, seed=settings.seed,
                          confidence=settings.confidence), labels


def claims_of_one_precision(rows: Sequence[Table3Row], measured: Mapping[str, Sequence[RunRecord]],
                            settings: BootstrapSettings) -> dict[str, Any] | None:
    """Where the runs mix precisions (bf16 on a GPU, fp32 on CPUs): the paper's claims again from the runs of the
    commonest precision alone, so that a reader sees whether the mix moves a verdict. None for one precision."""
    precision = lambda record: str(record.data.get("precision"))  # noqa: E731
    counts = Counter(precision(record) for runs in measured.values() for record in runs)
    if len(counts) < 2:
        return None
    kept, _ = counts.most_common(1)[0]
    subset = {row: [r for r in runs if precision(r) == kept] for row, runs in measured.items()}
    subset = {row: runs for row, runs in subset.items() if runs}
    boot, _ = _bootstrap(subset, settings)
    by_id = {row.id: row for row in rows}
    return {"precision": kept, "records": sum(map(len, subset.values())),
            "seeds": sorted({r.seed for runs in subset.values() for r in runs}),
            "claims": [_claim(boot, claim, by_id) for claim in PAPER_CLAIMS
                       if claim.row in subset and claim.other in subset]}


def build_table(rows: Sequence[Table3Row], records: Mapping[str, Sequence[RunRecord]], table_id: str,
                scale: Mapping[str, Any], settings: BootstrapSettings = BootstrapSettings(),
                excluded: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """``table.json``: per row the seed mean ± std of each metric with its interval, the paper's number,
    and the overall difference to the previous measured row and to row 3, each with its interval."""
    measured = {row.id: list(records.get(row.id, ())) for row in rows if records.get(row.id)}
    boot, labels = _bootstrap(measured, settings) if measured else (None, {})
    by_id = {row.id: row for row in rows}
    reference = by_id.get(reference_row(rows))
    out_rows, previous = [], None
    for row in rows:
        runs = sorted(measured.get(row.id, []), key=lambda record: record.seed)
        entry: dict[str, Any] = {"id": row.id, "name": row.name, "overrides": row.overrides, "paper": dict(row.paper),
                                 "seeds": [record.seed for record in runs],
                                 "records": [record.folder.name for record in runs]}
        if row.seeds:  # a row that runs fewer seeds than the table, by its catalogue row
            entry["planned_seeds"] = list(row.seeds)
        if not runs:
            out_rows.append({**entry, "measured": False})
            continue
        assert boot is not None
        entry["measured"] = True
        for metric in DEV_METRICS:
            values = [record.dev[metric] for record in runs]
            mean, std = mean_std(values)
            low, high = boot.interval(row.id, metric)
            entry[metric] = {"mean": mean, "std": std, "values": values, "low": low, "high": high,
                             "paper": row.paper.get(paper_key(metric))}
        entry["vs_previous"] = (None if previous is None or not row.compare_previous
                                else _comparison(boot, row, previous))
        entry["vs_reference"] = (_comparison(boot, row, reference)
                                 if reference is not None and reference.id in measured and row.id != reference.id else None)
        entry["precision"] = dict(Counter(str(record.data.get("precision")) for record in runs))
        entry["train_wall_s"] = [record.data.get("train_wall_s") for record in runs]
        entry["note"] = row.note
        out_rows.append(entry)
        previous = row
    claims = [_claim(boot, claim, by_id) for claim in PAPER_CLAIMS
              if boot is not None and claim.row in measured and claim.other in measured]
    all_records = [record for runs in measured.values() for record in runs]
    return rounded({
        "table3_id": table_id,
        "reference": None if reference is None else reference.id,
        "margin": MARGIN,
        "mlflow_filter": f"tags.table3_id = '{table_id}'",
        "scale": dict(scale),
        "records": len(all_records),
        "dev_examples": ({task: int(len(labels[task])) for task in TASKS} if measured else {}),
        "bootstrap": {**asdict(settings), "over": "dev examples (paired across rows) and seeds"},
        "precision": dict(Counter(str(record.data.get("precision")) for record in all_records)),
        "machines": dict(Counter(_machine_kind(record) for record in all_records)),
        "code_commits": sorted({str(record.data.get("code_commit", ""))[:10] for record in all_records}),
        "train_wall_s_total": round(sum(float(record.data.get("train_wall_s") or 0) for record in all_records), 1),
        "excluded": [{"path": path, "reason": reason} for path, reason in excluded],
        "rows": out_rows,
        "claims": claims,
        "claims_one_precision": claims_of_one_precision(rows, measured, settings) if claims else None,
    })


def _claim(boot: RowBootstrap, claim: PaperClaim, by_id: Mapping[str, Table3Row]) -> dict[str, Any]:
    comparison = _comparison(boot, by_id[claim.row], by_id[claim.other])
    return {"claim": claim.claim, "expects": claim.expects, **comparison, "row": claim.row, "other": claim.other,
            "verdict": claim_verdict(claim.expects, comparison)}


def _machine_kind(record: RunRecord) -> str:
    machine = record.data.get("machine") or {}
    if machine.get("gpu"):
        return str(machine["gpu"])
    cores = f"{machine.get('cores', '?')}-core CPU"
    if not machine.get("cpu_bf16"):
        return f"{cores} without AVX512-BF16"
    amx = {True: ", AMX", False: ", no AMX"}.get(machine.get("cpu_amx"), "")  # records before the AMX field: unknown
    return f"{cores} with AVX512-BF16{amx}"


def _cell(stats: Mapping[str, Any]) -> str:
    std = "–" if stats["std"] is None else f"{stats['std']:.3f}"
    paper = "" if stats.get("paper") is None else f" ({stats['paper']:.3f})"
    return f"{stats['mean']:.3f} ± {std}{paper}"


def _interval(delta: Mapping[str, Any], places: int = 3) -> str:
    """A difference with its interval, e.g. ``+0.114 [+0.099, +0.129]``."""
    return f"{delta['difference']:+.{places}f} [{delta['low']:+.{places}f}, {delta['high']:+.{places}f}]"


def _delta(delta: Mapping[str, Any] | None) -> str:
    if delta is None:
        return "–"
    paper = "" if delta["paper_difference"] is None else f" (paper {delta['paper_difference']:+.3f})"
    return f"{_interval(delta)}{MARKS[verdict(delta)]}{paper}"


def rows_table(table: Mapping[str, Any]) -> list[str]:
    """The table itself, one line per row of table3.yaml; the README (or docs/table3.md) shows these same lines."""
    columns = ["row", "model", "seeds", *(TASK_SPECS[task].column for task in TASKS), "overall",
               "Δ overall vs previous row", f"Δ overall vs row {table.get('reference') or REFERENCE_ROW}"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table["rows"]:
        if not row["measured"]:
            lines.append(f"| {row['id']} | {row['name']} | 0 | not measured yet |" + " |" * (len(columns) - 4))
            continue
        lines.append(f"| {row['id']} | {row['name']} | {len(row['seeds'])} | "
                     + " | ".join(_cell(row[metric]) for metric in DEV_METRICS)
                     + f" | {_delta(row['vs_previous'])} | {_delta(row['vs_reference'])} |")
    return lines


def claims_table(table: Mapping[str, Any]) -> list[str]:
    """The paper's six claims, each with the rows that test it and this table's verdict, as table.md shows them."""
    confidence = table["bootstrap"]["confidence"]
    lines = [f"| the paper's claim | rows | paper Δ overall | measured Δ overall, {confidence:.0%} interval | verdict |",
             "|---|---|---|---|---|"]
    tested = {item["claim"]: item for item in table.get("claims", [])}
    for claim in PAPER_CLAIMS:
        item = tested.get(claim.claim)
        if item is None:
            lines.append(f"| {claim.claim} | {claim.row} vs {claim.other} | | | not measured yet |")
            continue
        paper = "–" if item["paper_difference"] is None else f"{item['paper_difference']:+.3f}"
        lines.append(f"| {claim.claim} | {claim.row} vs {claim.other} | {paper} | {_interval(item)} "
                     f"| **{item['verdict']}** |")
    return lines


def notes(table: Mapping[str, Any]) -> list[str]:
    """The rows' caveats, one line each."""
    return [f"- Row {row['id']}: {row['note']}" for row in table["rows"] if row.get("note")]


def render_markdown(table: Mapping[str, Any]) -> str:
    """``table.md``: the table, the paper's claims with verdicts, then each difference in words."""
    confidence = table["bootstrap"]["confidence"]
    scale = table["scale"]
    measured = [row for row in table["rows"] if row["measured"]]
    seeds = sorted({len(row["seeds"]) for row in measured})
    paper = tests_the_paper(table)
    paper_numbers = ", the paper's number (BERT-base) in parentheses" if paper else ""
    lines = [
        f"# Table 3 ({scale.get('name', '?')} scale): ablations on the dev sets" if paper else
        f"# Table `{table.get('table3_id')}` ({scale.get('name', '?')} scale): rows on the dev sets",
        "",
        f"Scale `{scale.get('name')}`: every row with {', '.join(f'`{k}={v}`' for k, v in scale.get('overrides', {}).items()) or 'params.yaml as it is'}. "
        f"Dev examples: {', '.join(f'{task} {n}' for task, n in table['dev_examples'].items())}. "
        f"{table['records']} run(s) ({', '.join(f'{n} {p}' for p, n in table['precision'].items())}; "
        f"{', '.join(f'{n} on {m}' for m, n in table['machines'].items())}), "
        f"{table['train_wall_s_total'] / 3600:.1f} h of training in all; code {', '.join(table['code_commits'])}.",
        "",
        f"Each cell: mean ± standard deviation over {'/'.join(map(str, seeds)) or 'no'} seed(s){paper_numbers}. "
        f"Δ: overall minus the other row's, with a {confidence:.0%} bootstrap interval "
        f"({table['bootstrap']['resamples']} resamples over dev examples and seeds). {verdict_words(table)}",
        "",
    ]
    lines += rows_table(table) + [""] + (notes(table) + [""] if notes(table) else [])
    lines += claims_table(table) + [""] if paper else []
    if table.get("claims_one_precision"):
        lines += [one_precision_words(table), "", *claims_of_one_precision_table(table), ""]
    said: set[frozenset[str]] = set()  # each pair of rows once: "BP1 vs 3" is also "3 vs its previous row"
    for row in measured:
        for key in ("vs_previous", "vs_reference"):
            delta = row[key]
            if delta is None or frozenset((row["id"], delta["row"])) in said:
                continue
            said.add(frozenset((row["id"], delta["row"])))
            lines.append(f"- row {row['id']} vs row {delta['row']}: Δ overall {delta['difference']:+.4f}, "
                         f"{confidence:.0%} interval [{delta['low']:+.4f}, {delta['high']:+.4f}]: {verdict(delta)}"
                         + ("" if delta["paper_difference"] is None else f" (paper: {delta['paper_difference']:+.3f})")
                         + ".")
    if table["excluded"]:
        lines += ["", "Left out of this table (`palbert table3 --resume` runs the rows' own again):"]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in table["excluded"]]
    return "\n".join(lines) + "\n"


def progress_line(table: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """How much of the table is measured: the README says so while a table is still being run."""
    rows = table["rows"]
    # how many runs each row is planned for: the table's seeds, or those of them its catalogue row names
    planned = {row["id"]: sum(seed in row.get("planned_seeds", seeds) for seed in seeds) for row in rows}
    fewer: dict[int, list[str]] = {}
    for row in rows:
        if planned[row["id"]] < len(seeds):
            fewer.setdefault(planned[row["id"]], []).append(row["id"])
    shape = f"{len(rows)} rows × {len(seeds)} seeds" + "".join(
        f", {count} seed{'s' if count != 1 else ''} for {_and(ids)}" for count, ids in sorted(fewer.items()))
    short = [f"{row['id']} ({len(row['seeds'])})" for row in rows if len(row["seeds"]) < planned[row["id"]]]
    line = f"**{table['records']} of the {sum(planned.values())} runs** ({shape}) are recorded"
    than = "their planned seeds" if fewer else f"{len(seeds)} seeds"
    return line + (f"; rows with fewer than {than} (seeds so far): {', '.join(short)}." if short else ".")


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def claims_across_scales(table: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The paper's claims in ``table`` beside their verdicts in ``other`` (another scale of the same rows)."""
    name, other_name = table["scale"].get("name", "?"), other["scale"].get("name", "?")
    lines = [f"| the paper's claim | rows | paper Δ overall | {name}: Δ overall, "
             f"{table['bootstrap']['confidence']:.0%} interval | {name}: verdict | {other_name}: verdict | changed |",
             "|---|---|---|---|---|---|---|"]
    here = {item["claim"]: item for item in table.get("claims", [])}
    there = {item["claim"]: item for item in other.get("claims", [])}
    rows = {row["id"]: row for row in table["rows"]}
    for claim in PAPER_CLAIMS:
        item, before = here.get(claim.claim), there.get(claim.claim)
        before_verdict = before["verdict"] if before else "not measured"
        paper = _paper_difference(rows[claim.row]["paper"], rows[claim.other]["paper"])
        paper = "–" if paper is None else f"{paper:+.3f}"
        if item is None:
            lines.append(f"| {claim.claim} | {claim.row} vs {claim.other} | {paper} | not measured yet | | "
                         f"{before_verdict} | |")
            continue
        changed = "–" if before is None else ("no" if item["verdict"] == before_verdict else "**yes**")
        lines.append(f"| {claim.claim} | {claim.row} vs {claim.other} | {paper} | {_interval(item)} | "
                     f"**{item['verdict']}** | {before_verdict} | {changed} |")
    return lines


def readme_block(table: Mapping[str, Any], other: Mapping[str, Any], seeds: Sequence[int], folder: str,
                 other_doc: str) -> str:
    """The README's headline Table 3, generated from ``table.json`` files so that it cannot drift from them."""
    scale = table["scale"]
    overrides = ", ".join(f"`{k}={v}`" for k, v in scale.get("overrides", {}).items()) or "params.yaml as it is"
    lines = [
        f"{progress_line(table, seeds)} Scale `{scale.get('name')}`: {overrides}. Records, `table.md` and figures: "
        f"[`{folder}/`]({folder}/table.md); the same rows at the reduced scale (1/6 of the training, an equal-cost "
        f"comparison): [{other_doc}]({other_doc}).",
        "",
        f"{mix_line(table)}Mean ± standard deviation over the seeds, the paper's BERT-base number in parentheses; Δ: "
        f"overall minus the other row's, with its {table['bootstrap']['confidence']:.0%} bootstrap interval "
        f"({table['bootstrap']['resamples']} resamples over dev examples and seeds). {verdict_words(table)}",
        "",
        *rows_table(table),
        "",
        *(notes(table) + [""] if notes(table) else []),
        "The paper's six claims, each a pair of rows: **holds** when the interval lies on the claim's side of 0 "
        "(for \"STLR changes nothing\": inside the margin), **reversed** on the other side, **does not hold** when "
        "the interval rules out the claimed effect (inside the margin) or, for \"no change\", shows one, "
        f"**inconclusive** otherwise; beside it the verdict at the {other['scale'].get('name')} scale:",
        "",
        *claims_across_scales(table, other),
    ]
    alone = table.get("claims_one_precision")
    if alone:
        lines += ["", one_precision_words(table), "", *claims_of_one_precision_table(table)]
    return "\n".join(lines) + "\n"


def mix_line(table: Mapping[str, Any]) -> str:
    """A sentence saying that the table mixes machines or precisions, when it does (empty otherwise)."""
    if len(table["precision"]) < 2 and len(table["machines"]) < 2:
        return ""
    kinds, precisions = len(table["machines"]), len(table["precision"])
    return (f"The runs mix {kinds} machine kind{'s' * (kinds != 1)} and {precisions} "
            f"precision{'s' * (precisions != 1)}: "
            f"{', '.join(f'{n} {p}' for p, n in table['precision'].items())} "
            f"({', '.join(f'{n} on {m}' for m, n in table['machines'].items())}). ")


def one_precision_words(table: Mapping[str, Any]) -> str:
    alone = table["claims_one_precision"]
    return (f"The same claims from the {alone['records']} {alone['precision']} runs alone (seeds "
            f"{', '.join(map(str, alone['seeds']))}), the runs of the other precision left out:")


def claims_of_one_precision_table(table: Mapping[str, Any]) -> list[str]:
    """The paper's claims from one precision's runs beside their verdicts from all runs."""
    alone = table["claims_one_precision"]
    lines = [f"| the paper's claim | rows | {alone['precision']} runs: Δ overall, "
             f"{table['bootstrap']['confidence']:.0%} interval | {alone['precision']} runs: verdict | "
             "all runs: verdict | changed |", "|---|---|---|---|---|---|"]
    everything = {item["claim"]: item for item in table.get("claims", [])}
    for item in alone["claims"]:
        before = everything.get(item["claim"])
        before_verdict = before["verdict"] if before else "not measured"
        changed = "no" if item["verdict"] == before_verdict else "**yes**"
        lines.append(f"| {item['claim']} | {item['row']} vs {item['other']} | {_interval(item)} | "
                     f"**{item['verdict']}** | {before_verdict} | {changed} |")
    return lines


def replace_marked_block(text: str, name: str, content: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced by ``content``."""
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one '{start.strip()}' ... '{end}' block")
    before, rest = text.split(start)
    return before + start + content + end + rest.split(end, 1)[1]
