"""``palbert table3``: statistics, the experiment commands, resume logic, and one real end-to-end table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from palbert.cli import build_parser
from palbert.config import load_params
from palbert.metrics import bootstrap_difference, overall, score
from palbert.table3 import (
    BootstrapSettings,
    DevLabels,
    ExpRecord,
    PlannedRun,
    RowResult,
    RunSize,
    Table3Error,
    align,
    build_table,
    check_finished,
    hydra_value,
    mean_std,
    parse_exp_show,
    plan_queue,
    plan_runs,
    pooled_bootstrap_difference,
    read_prediction_csv,
    render_markdown,
    resumed_table_id,
    select_rows,
)

REPO = Path(__file__).resolve().parents[1]
TASKS = ("sst", "para", "sts")


@pytest.fixture(scope="module")
def table3_rows():
    return load_params(REPO / "params.yaml").table3.rows


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_mean_std_over_seeds():
    mean, std = mean_std([0.70, 0.72, 0.74])
    assert mean == pytest.approx(0.72)
    assert std == pytest.approx(0.02)  # sample std (n - 1)
    assert mean_std([0.5]) == (0.5, None)  # one seed: spread unknown, not 0
    with pytest.raises(ValueError):
        mean_std([])


def dev_labels(rng: np.random.Generator, n: int = 400) -> dict[str, np.ndarray]:
    return {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n), "sts": rng.uniform(0, 5, n)}


def noisy_system(rng: np.random.Generator, labels: dict[str, np.ndarray], right: float,
                 sts_noise: float) -> dict[str, np.ndarray]:
    """Predictions that hit the label with probability ``right`` (sst, para) and track STS with noise."""
    n = len(labels["sst"])
    sst = np.where(rng.random(n) < right, labels["sst"], rng.integers(0, 5, n))
    para = np.where(rng.random(n) < right, labels["para"], 1 - labels["para"])
    sts = np.clip(labels["sts"] + rng.normal(0, sts_noise, n), 0, 5)
    return {"sst": sst, "para": para, "sts": sts}


def seed_mean_overall(systems, labels) -> float:
    return float(np.mean([overall(*(score(t, s[t], labels[t]) for t in TASKS)) for s in systems]))


def test_identical_rows_give_a_narrow_interval_around_zero():
    rng = np.random.default_rng(1)
    labels = dev_labels(rng)
    seeds = [noisy_system(rng, labels, 0.6, 1.0) for _ in range(3)]
    interval = pooled_bootstrap_difference(seeds, [dict(s) for s in seeds], labels, resamples=300, seed=0)
    assert interval.difference == 0.0
    assert interval.low <= 0.0 <= interval.high
    assert interval.high - interval.low < 1e-12


def same_quality(rng: np.random.Generator, system: dict[str, np.ndarray],
                 labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Another system, right on as many examples as ``system`` but on other ones (errors permuted)."""
    n = len(labels["sst"])
    order = rng.permutation(n)
    sst_right = (system["sst"] == labels["sst"])[order]
    para_right = (system["para"] == labels["para"])[order]
    return {
        "sst": np.where(sst_right, labels["sst"], (labels["sst"] + 1) % 5),
        "para": np.where(para_right, labels["para"], 1 - labels["para"]),
        "sts": labels["sts"] + (system["sts"] - labels["sts"])[order],
    }


def test_rows_of_equal_quality_give_an_interval_containing_zero():
    rng = np.random.default_rng(2)
    labels = dev_labels(rng)
    a = [noisy_system(rng, labels, 0.6, 1.0) for _ in range(2)]
    b = [same_quality(rng, system, labels) for system in a]
    interval = pooled_bootstrap_difference(a, b, labels, resamples=500, seed=0)
    assert abs(interval.difference) < 0.01  # equal accuracies; STS r nearly equal
    assert interval.low < 0.0 < interval.high
    assert interval.high - interval.low < 0.1


def test_a_clearly_better_row_gives_an_interval_above_zero():
    rng = np.random.default_rng(3)
    labels = dev_labels(rng)
    better = [noisy_system(rng, labels, 0.9, 0.3) for _ in range(2)]
    worse = [noisy_system(rng, labels, 0.5, 1.5) for _ in range(3)]  # seed counts may differ
    interval = pooled_bootstrap_difference(better, worse, labels, resamples=500, seed=0)
    assert interval.difference == pytest.approx(seed_mean_overall(better, labels) - seed_mean_overall(worse, labels))
    assert 0.0 < interval.low <= interval.difference <= interval.high
    again = pooled_bootstrap_difference(better, worse, labels, resamples=500, seed=0)
    assert (again.low, again.high) == (interval.low, interval.high)  # seeded


def test_one_seed_each_agrees_with_the_metrics_module():
    """With one seed per row the pooled interval is the paired bootstrap of palbert.metrics."""
    rng = np.random.default_rng(4)
    labels = dev_labels(rng, 200)
    a, b = noisy_system(rng, labels, 0.8, 0.5), noisy_system(rng, labels, 0.6, 1.0)
    ours = pooled_bootstrap_difference([a], [b], labels, resamples=400, seed=7)
    reference = bootstrap_difference(a, b, labels, resamples=400, seed=7)
    assert ours.difference == pytest.approx(reference.difference)
    assert ours.low == pytest.approx(reference.low, abs=0.02)
    assert ours.high == pytest.approx(reference.high, abs=0.02)


def test_constant_sts_predictions_score_zero_like_metrics():
    rng = np.random.default_rng(5)
    labels = dev_labels(rng, 50)
    flat = {**noisy_system(rng, labels, 0.7, 0.5), "sts": np.full(50, 2.5)}
    interval = pooled_bootstrap_difference([flat], [flat], labels, resamples=20)
    assert np.isfinite([interval.low, interval.high]).all()


# --------------------------------------------------------------------------------------------
# What gets queued
# --------------------------------------------------------------------------------------------


def test_hydra_values():
    assert hydra_value(False) == "false"
    assert hydra_value(3) == "3"
    assert hydra_value(2e-05) == "2e-05"
    assert hydra_value("0") == "'0'"  # a row id stays a string
    assert hydra_value("it's") == "'it\\'s'"
    assert hydra_value([]) == "[]"
    assert hydra_value(["snli", "cfimdb"]) == "['snli','cfimdb']"


def test_command_for_one_row_and_seed(table3_rows):
    (row,) = select_rows(table3_rows, ["BP1"])
    (run,) = plan_runs([row], [2], "t3-test", RunSize(epochs=1, steps_per_epoch=3, subset=64))
    assert run.name == "t3-BP1-s2"
    assert run.queue_command() == [
        "dvc", "exp", "run", "--queue", "--name", "t3-BP1-s2",
        "-S", "model.pals=true",
        "-S", "model.pair_encoding='joint'",
        "-S", "train.sampling='annealed'",
        "-S", "train.simcse=false",
        "-S", "data.extra=[]",
        "-S", "train.schedule='constant'",
        "-S", "model.relational_layer=false",
        "-S", "train.epochs=1",
        "-S", "train.steps_per_epoch=3",
        "-S", "data.subset=64",
        "-S", "train.seed=2",
        "-S", "tracking.table3_id='t3-test'",
        "-S", "tracking.table3_row='BP1'",
    ]
    assert run.queue_command(force=True)[:7] == ["dvc", "exp", "run", "--queue", "--name", "t3-BP1-s2", "--force"]
    (extra,) = plan_runs(select_rows(table3_rows, ["4"]), [1], "t3-test")
    assert "data.extra=['snli','cfimdb']" in extra.set_param_args()
    assert not any(arg.startswith(("train.epochs", "data.subset")) for arg in extra.set_param_args())


def test_row_selection_keeps_the_table_order(table3_rows):
    assert [row.id for row in select_rows(table3_rows, ["BP1", "0"])] == ["0", "BP1"]
    assert len(select_rows(table3_rows, None)) == len(table3_rows)
    with pytest.raises(Table3Error, match="unknown Table 3 row"):
        select_rows(table3_rows, ["9"])
    with pytest.raises(Table3Error, match="table id"):
        plan_runs(table3_rows[:1], [1], "bad id'")
    with pytest.raises(Table3Error, match="duplicate seeds"):
        plan_runs(table3_rows[:1], [1, 1], "t3-x")


def test_cli_arguments():
    args = build_parser().parse_args(["table3", "--rows", "0,BP1", "--seeds", "1,2", "--epochs", "1",
                                      "--steps-per-epoch", "3", "--subset", "64", "--resume", "--jobs", "2",
                                      "--table-id", "mine"])
    assert (args.rows, args.seeds, args.epochs, args.steps_per_epoch, args.subset) == (["0", "BP1"], [1, 2], 1, 3, 64)
    assert (args.resume, args.jobs, args.table_id) == (True, 2, "mine")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["table3", "--seeds", "one"])


# --------------------------------------------------------------------------------------------
# What DVC already has, and resume
# --------------------------------------------------------------------------------------------


def record(run: PlannedRun, state: str | None = "success", metrics: bool = True, stamp: str = "2026-01-01T00:00:00",
           **changes) -> ExpRecord:
    """The ExpRecord ``dvc exp show`` would give for ``run`` (with ``changes`` to its params)."""
    params: dict = {}
    for key, value in {**run.overrides, **changes}.items():
        section, name = key.split(".")
        params.setdefault(section, {})[name] = value
    dev = {"sst_acc": 0.3, "para_acc": 0.6, "sts_pearson": 0.1, "overall": 0.5} if metrics else None
    return ExpRecord(name=run.name, rev="a" * 40, state=state, params=params, metrics=dev, timestamp=stamp)


def test_parse_exp_show():
    show = [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {"rev": "b" * 40, "name": "main", "data": {}, "experiments": [
            {"name": "t3-0-s1", "executor": {"state": "success", "local": {"log": "/x.out"}}, "revs": [
                {"rev": "c" * 40, "name": "t3-0-s1", "error": None, "data": {
                    "timestamp": "2026-01-01T10:00:00",
                    "params": {"params.yaml": {"data": {"tracking": {"table3_id": "t3-a", "table3_row": "0"}}}},
                    "metrics": {"metrics/dev.json": {"data": {"sst_acc": 0.3, "para_acc": 0.6,
                                                              "sts_pearson": 0.1, "overall": 0.5}}}}}]},
            {"name": "t3-0-s2", "executor": {"state": "failed", "local": {"log": "/y.out"}}, "revs": [
                {"rev": "d" * 40, "name": "t3-0-s2", "error": {"msg": "Experiment run failed"}, "data": {
                    "params": {"params.yaml": {"data": {}}},
                    "metrics": {"metrics/dev.json": {"error": {"type": "FileNotFoundError"}}}}}]},
        ]},
    ]
    found = parse_exp_show(show)
    assert set(found) == {"t3-0-s1", "t3-0-s2"}
    ok, failed = found["t3-0-s1"][0], found["t3-0-s2"][0]
    assert ok.complete and ok.table_id == "t3-a" and ok.param("tracking.table3_row") == "0"
    assert not failed.complete and failed.state == "failed" and failed.metrics is None and failed.log_file == "/y.out"


def test_resume_keeps_finished_runs_with_the_same_settings(table3_rows):
    runs = plan_runs(select_rows(table3_rows, ["0"]), [1, 2, 3, 4, 5], "t3-new", RunSize(epochs=1))
    same, other_epochs, failed, queued, unfinished = runs
    existing = {
        same.name: [record(same, **{"tracking.table3_id": "t3-old"})],  # another table id: still the same run
        other_epochs.name: [record(other_epochs, **{"train.epochs": 3})],
        failed.name: [record(failed, state="failed", metrics=False)],
        queued.name: [record(queued, state="queued", metrics=False)],
        # unfinished: never queued
    }
    plan = plan_queue(runs, existing, resume=True)
    assert set(plan.reused) == {same.name}
    assert set(plan.pending) == {queued.name}
    assert [(run.name, force) for run, force in plan.to_queue] == [
        (other_epochs.name, True),  # replaces the finished experiment of that name
        (failed.name, False),  # a failed queue entry does not block the name
        (unfinished.name, False),
    ]
    assert resumed_table_id([*plan.reused.values(), *plan.pending.values()]) == "t3-old"


def test_without_resume_everything_runs_again(table3_rows):
    runs = plan_runs(select_rows(table3_rows, ["0"]), [1, 2], "t3-new")
    existing = {runs[0].name: [record(runs[0])]}
    plan = plan_queue(runs, existing, resume=False)
    assert not plan.reused and [(r.name, f) for r, f in plan.to_queue] == [(runs[0].name, True), (runs[1].name, False)]
    existing[runs[1].name] = [record(runs[1], state="running", metrics=False)]
    with pytest.raises(Table3Error, match="already running"):
        plan_queue(runs, existing, resume=False)


def test_a_failed_experiment_stops_the_table_naming_its_log(table3_rows):
    runs = plan_runs(select_rows(table3_rows, ["0"]), [1, 2], "t3-new")
    done, failed = runs
    broken = record(failed, state="failed", metrics=False)
    broken.log_file = "/repo/.dvc/tmp/exps/run/abc/abc.out"
    assert set(check_finished([done], {done.name: [record(done)]})) == {done.name}
    with pytest.raises(Table3Error, match=r"t3-0-s2 failed \(log: /repo/.dvc/tmp/exps/run/abc/abc.out\).*--resume"):
        check_finished(runs, {done.name: [record(done)], failed.name: [broken]})
    with pytest.raises(Table3Error, match="not among the experiments"):
        check_finished(runs, {done.name: [record(done)]})


# --------------------------------------------------------------------------------------------
# Predictions and the written table
# --------------------------------------------------------------------------------------------


def test_prediction_files_are_aligned_to_the_labels():
    ids, values = read_prediction_csv("id,prediction\nb,1\na,0\nc,4\n", "sst-dev.csv")
    assert align(ids, values, np.array(["a", "b", "c"]), "x").tolist() == [0.0, 1.0, 4.0]
    with pytest.raises(Table3Error, match="differ"):
        align(ids, values, np.array(["a", "b"]), "x")
    with pytest.raises(Table3Error, match="header"):
        read_prediction_csv("x,y\n", "sst-dev.csv")
    with pytest.raises(Table3Error, match="line 2"):
        read_prediction_csv("id,prediction\na,many\n", "sst-dev.csv")


def test_table_json_and_markdown(table3_rows):
    rng = np.random.default_rng(6)
    labels = dev_labels(rng, 300)
    row0, row1 = select_rows(table3_rows, ["0", "BP1"])
    weak = [noisy_system(rng, labels, 0.4, 2.0) for _ in range(2)]
    strong = [noisy_system(rng, labels, 0.9, 0.3) for _ in range(2)]

    def metrics_of(system):
        scores = {t: score(t, system[t], labels[t]) for t in TASKS}
        return {"sst_acc": scores["sst"], "para_acc": scores["para"], "sts_pearson": scores["sts"],
                "overall": overall(scores["sst"], scores["para"], scores["sts"])}

    results = [RowResult(row, [1, 2], [f"t3-{row.id}-s1", f"t3-{row.id}-s2"], [metrics_of(s) for s in systems],
                         systems) for row, systems in ((row0, weak), (row1, strong))]
    ids = {t: np.arange(300).astype(str) for t in TASKS}
    table = build_table(results, DevLabels(ids=ids, labels=labels), "t3-unit", BootstrapSettings(resamples=200))
    first, second = table["rows"]
    assert [first["id"], second["id"]] == ["0", "BP1"] and first["vs_previous"] is None
    assert second["overall"]["mean"] == pytest.approx(np.mean([metrics_of(s)["overall"] for s in strong]))
    assert second["overall"]["paper"] == 0.761 and second["sst_acc"]["paper"] == 0.490
    assert second["vs_previous"]["row"] == "0" and second["vs_previous"]["excludes_zero"]
    assert second["vs_previous"]["paper_difference"] == pytest.approx(0.761 - 0.579)
    assert table["mlflow_filter"] == "tags.table3_id = 't3-unit'"
    json.dumps(table)  # valid JSON content
    text = render_markdown(table)
    assert "| BP1 | + annealed sampling |" in text and "(0.761)" in text
    assert "BP1 vs 0" in text and "excludes 0" in text


# --------------------------------------------------------------------------------------------
# The project store, seen from DVC's temp workspaces
# --------------------------------------------------------------------------------------------


def test_a_stage_in_a_dvc_temp_workspace_logs_to_the_project_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Stages pass ``Path(".")`` as the project root; in a queued experiment that is DVC's temp copy."""
    from mlflow import MlflowClient

    from palbert.config import Params
    from palbert.tracking import RunTracker

    for name in ("MLFLOW_TRACKING_URI", "PALBERT_PROJECT_ROOT", "DVC_ROOT", "DVC_EXP_NAME", "RANK"):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    tracker = RunTracker.start(Params(), Path("."), system_metrics=False)
    tracker.end()
    assert tracker.tracking_uri == f"sqlite:///{repo.resolve()}/mlflow.db"
    run = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((repo.resolve() / "mlruns").as_uri())
    assert not (workspace / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------
# End to end: a real tiny table in a temporary clone
# --------------------------------------------------------------------------------------------


def _clean_env(clone: Path, mirror: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PALBERT_PROJECT_ROOT", "DVC_ROOT", "DVC_EXP_NAME",
                        "DVC_EXP_BASELINE_REV", "RANK", "WORLD_SIZE")}
    env["PALBERT_DATA_MIRROR"] = str(mirror)
    env.pop("PYTHONPATH", None)  # stages run as `python -m stages.<name>`: each workspace imports its own palbert
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.e2e
def test_table3_end_to_end_in_a_clone(tmp_path: Path):
    mirror = (REPO / ".." / "shared" / "data").resolve()
    if not mirror.is_dir():
        pytest.skip(f"no data mirror at {mirror}")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = _clean_env(clone, mirror)
    command = [sys.executable, "-m", "palbert.cli", "table3", "--rows", "0,BP1", "--seeds", "1,2",
               "--epochs", "1", "--steps-per-epoch", "3", "--subset", "64", "--table-id", "t3-e2e",
               "--resamples", "200"]
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
        first_run_s = time.monotonic() - started

        table = json.loads((clone / "metrics" / "table3.json").read_text())
        assert table["table3_id"] == "t3-e2e"
        assert [row["id"] for row in table["rows"]] == ["0", "BP1"]
        for row in table["rows"]:
            assert row["seeds"] == [1, 2] and len(row["overall"]["values"]) == 2
            assert 0.0 <= row["overall"]["mean"] <= 1.0 and row["overall"]["std"] is not None
        delta = table["rows"][1]["vs_previous"]
        assert delta["row"] == "0" and delta["low"] <= delta["difference"] <= delta["high"]
        markdown = (clone / "metrics" / "table3.md").read_text()
        assert "| 0 | Baseline BERT |" in markdown and "| BP1 | + annealed sampling |" in markdown

        # The queued runs (in .dvc/tmp/exps) logged to the clone's own store, with the table's tags.
        from mlflow import MlflowClient

        assert not list((clone / ".dvc" / "tmp").rglob("mlflow.db"))
        client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("palbert")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.table3_id = 't3-e2e'")
        assert len(runs) == 4
        assert sorted((r.data.tags["table3_row"], r.data.tags["seed"], r.data.tags.get("dvc_exp_name"))
                      for r in runs) == [("0", "1", "t3-0-s1"), ("0", "2", "t3-0-s2"),
                                         ("BP1", "1", "t3-BP1-s1"), ("BP1", "2", "t3-BP1-s2")]
        assert all(r.info.status == "FINISHED" for r in runs)
        assert all(Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(clone) for r in runs)

        # --resume keeps all four finished experiments: nothing is queued or trained again.
        resumed = subprocess.run([*command[:-4], "--resume"], cwd=clone, env=env, capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert "queued t3-" not in resumed.stderr and resumed.stderr.count(": kept (finished") == 4
        assert json.loads((clone / "metrics" / "table3.json").read_text())["table3_id"] == "t3-e2e"
        assert len(client.search_runs([experiment.experiment_id], "tags.table3_id = 't3-e2e'")) == 4
        print(f"table3 e2e: first run {first_run_s:.0f}s")
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=clone, env=env, capture_output=True, timeout=120)
        shutil.rmtree(clone, ignore_errors=True)
