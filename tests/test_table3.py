"""``palbert table3``: planning, results records, the table rebuilt from records (runs through Ray: test_table3_ray)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_project
from palbert.cli import build_parser
from palbert.params_file import TABLE3_FILE, load_params, load_table3
from palbert.errors import OutputUnwritable
from palbert.metrics import overall, score
from palbert.table3 import Table3Error, Table3Request, make_table3, rebuild_table
from palbert.table3.plan import PlannedRun, committed_params, hydra_value, plan_runs, select_rows
from palbert.table3.records import RECORD_FORMAT, RecordError, read_record, write_csv_gz, write_record
from palbert.table3.report import (MARGIN, claim_verdict, claims_across_scales, mean_std, progress_line, readme_block,
                                   render_markdown, replace_marked_block, rows_table, verdict)

REPO = Path(__file__).resolve().parents[1]
TASKS = ("sst", "para", "sts")
SCALE = {"train.epochs": 1, "train.steps_per_epoch": 3}


@pytest.fixture(scope="module")
def params():
    return load_table3(REPO / TABLE3_FILE, load_params(REPO / "params.yaml"))


def runs_of(params, rows, seeds, table_id="t3-test", scale=SCALE) -> list[PlannedRun]:
    return plan_runs(params, select_rows(params.table3.rows, rows), seeds, table_id, scale)


# --------------------------------------------------------------------------------------------
# What runs
# --------------------------------------------------------------------------------------------


def test_mean_std_over_seeds():
    mean, std = mean_std([0.70, 0.72, 0.74])
    assert mean == pytest.approx(0.72) and std == pytest.approx(0.02)  # sample std (n - 1)
    assert mean_std([0.5]) == (0.5, None)  # one seed: spread unknown, not 0


def _delta(low, high):
    return {"difference": (low + high) / 2, "low": low, "high": high, "excludes_zero": low > 0 or high < 0}


def test_a_difference_is_a_difference_equivalent_or_inconclusive():
    assert MARGIN == 0.005
    assert verdict(_delta(0.001, 0.004)) == "better"  # excludes 0, however small
    assert verdict(_delta(-0.03, -0.01)) == "worse"
    assert verdict(_delta(-0.004, 0.0049)) == "equivalent"  # inside ±0.005: no difference that matters
    assert verdict(_delta(-0.010, 0.007)) == "inconclusive"  # contains 0 but reaches past the margin
    assert verdict(_delta(-0.002, 0.006)) == "inconclusive"
    assert verdict(_delta(-0.010, 0.007), margin=0.02) == "equivalent"


def test_a_claim_holds_is_reversed_does_not_hold_or_is_inconclusive():
    assert claim_verdict("better", _delta(0.01, 0.03)) == "holds"
    assert claim_verdict("better", _delta(-0.03, -0.01)) == "reversed"
    assert claim_verdict("worse", _delta(-0.03, -0.01)) == "holds"
    assert claim_verdict("worse", _delta(0.01, 0.03)) == "reversed"
    assert claim_verdict("worse", _delta(-0.02, 0.01)) == "inconclusive"
    assert claim_verdict("better", _delta(-0.003, 0.004)) == "does not hold (equivalent)"
    assert claim_verdict("no change", _delta(-0.003, 0.004)) == "holds"
    # STLR's full-scale interval: it contains 0 but does not rule out the paper's +0.006
    assert claim_verdict("no change", _delta(-0.010, 0.007)) == "inconclusive"
    assert claim_verdict("no change", _delta(-0.02, -0.01)) == "does not hold (worse)"
    assert claim_verdict("no change", _delta(0.01, 0.02)) == "does not hold (better)"


def test_hydra_values():
    assert hydra_value(False) == "false"
    assert hydra_value(2e-05) == "2e-05"
    assert hydra_value("0") == "'0'"  # a row id stays a string
    assert hydra_value("it's") == "'it\\'s'"
    assert hydra_value(["snli", "cfimdb"]) == "['snli','cfimdb']"


def test_a_run_is_its_row_its_scale_and_its_seed(params):
    (run,) = runs_of(params, ["BP1"], [2])
    assert (run.name, run.folder) == ("t3-BP1-s2", "BP1-s2")
    args = run.exp_run_command()  # the same run by hand, as one DVC experiment
    assert args[:5] == ["dvc", "exp", "run", "--name", "t3-BP1-s2"]
    pairs = [args[i + 1] for i in range(5, len(args), 2)]
    assert pairs[:7] == ["model.pals=true", "model.pair_encoding='joint'", "train.sampling='annealed'",
                         "train.simcse=false", "data.extra=[]", "train.schedule='constant'",
                         "model.relational_layer=false"]
    assert pairs[7:] == ["train.epochs=1", "train.steps_per_epoch=3", "train.seed=2",
                         "tracking.table3_id='t3-test'", "tracking.table3_row='BP1'"]
    settings = run.settings()
    assert settings["train"]["epochs"] == 1 and settings["train"]["seed"] == 2 and not settings["train"]["simcse"]
    assert "mirror" not in settings["data"] and "checkpoint_every" not in settings["train"]
    (best,) = runs_of(params, ["best"], [1])
    assert best.settings()["train"]["lr"] == pytest.approx(5e-5) and best.settings()["train"]["schedule"] == "stlr"


def test_runs_go_seed_by_seed(params):
    runs = runs_of(params, ["0", "BP1"], [5, 6])
    assert [run.name for run in runs] == ["t3-0-s5", "t3-BP1-s5", "t3-0-s6", "t3-BP1-s6"]


def test_the_reduced_scale_caps_every_sampler(params):
    scale = params.table3.scale("reduced")
    for run in plan_runs(params, params.table3.rows, [1], "reduced", scale):
        train = run.settings()["train"]
        assert (train["epochs"], train["steps_per_epoch"], train["cap_passes"]) == (3, 300, True)
        assert run.settings()["data"]["dev_subset"] == 5000


def test_row_selection_and_bad_plans(params):
    assert [row.id for row in select_rows(params.table3.rows, ["BP1", "0"])] == ["0", "BP1"]
    with pytest.raises(Table3Error, match="unknown Table 3 row"):
        select_rows(params.table3.rows, ["9"])
    with pytest.raises(Table3Error, match="table id"):
        runs_of(params, ["0"], [1], table_id="bad id'")
    with pytest.raises(Table3Error, match="duplicate seeds"):
        runs_of(params, ["0"], [1, 1])


def test_cli_arguments():
    args = build_parser().parse_args(["table3", "--scale", "reduced", "--rows", "0,BP1", "--seeds", "1,2",
                                      "--resume", "--jobs", "2", "--table-id", "mine"])
    assert (args.scale, args.rows, args.seeds, args.resume, args.jobs, args.table_id) == (
        "reduced", ["0", "BP1"], [1, 2], True, 2, "mine")
    assert build_parser().parse_args(["table3", "--rebuild"]).rebuild
    ray_args = build_parser().parse_args(["table3", "--address", "10.0.0.1:6379", "--cpus-per-run", "2",
                                          "--gpus-per-run", "0.125", "--tracking-uri", "http://h:5000"])
    assert (ray_args.address, ray_args.cpus_per_run, ray_args.gpus_per_run, ray_args.tracking_uri) == (
        "10.0.0.1:6379", 2.0, 0.125, "http://h:5000")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["table3", "--gpus-per-run", "-1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["table3", "--seeds", "one"])


# --------------------------------------------------------------------------------------------
# Records: written like the real ones, read back checked
# --------------------------------------------------------------------------------------------


def fake_predictions(rng: np.random.Generator, labels: dict[str, np.ndarray], right: float) -> dict[str, np.ndarray]:
    def hit(task: str) -> np.ndarray:
        return rng.random(len(labels[task])) < right

    return {"sst": np.where(hit("sst"), labels["sst"], (labels["sst"] + 1) % 5),
            "para": np.where(hit("para"), labels["para"], 1 - labels["para"]),
            "sts": np.clip(labels["sts"] + rng.normal(0, 2 * (1 - right), len(labels["sts"])), 0, 5).round(4)}


def fake_record(folder: Path, run: PlannedRun, labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray],
                scale_name: str = "tiny", precision: str = "fp32") -> None:
    """A record as ``collect_record`` writes it, from predictions made up here instead of a training run."""
    ids = {task: np.asarray([f"{task}{i:03d}" for i in range(len(labels[task]))]) for task in TASKS}
    dev = {f"{task}_{'pearson' if task == 'sts' else 'acc'}": score(task, predictions[task], labels[task])
           for task in TASKS}
    dev["overall"] = overall(dev)
    tables = {f"predictions/{task}-dev.csv.gz": (["id", "prediction", "label"],
                                                 [[i, p, y] for i, p, y in zip(ids[task], predictions[task], labels[task])])
              for task in TASKS}
    tables["predictions/sst-test.csv.gz"] = (["id", "prediction"], [["t1", 3]])
    steps = range(10, 31, 10)
    tables["curves.csv.gz"] = (["step", "series", "value"],
                               [[s, f"loss_{t}", 1.0 / s + run.seed * 0.01] for s in steps for t in TASKS])
    write_record(folder / run.folder, {
        "format": RECORD_FORMAT, "table_id": run.table_id, "row": run.row, "seed": run.seed,
        "scale": {"name": scale_name, "overrides": run.scale}, "overrides": run.row_overrides,
        "settings": run.settings(), "code_commit": "c" * 40, "dev": dev, "best_epoch": 1,
        "dev_per_epoch": [{"epoch": 1, **dev}], "train_wall_s": 10.0, "precision": precision,
        "machine": {"cores": 2, "cpu_bf16": False, "gpu": None}}, tables)


@pytest.fixture
def labels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"sst": rng.integers(0, 5, 60), "para": rng.integers(0, 2, 80), "sts": rng.uniform(0, 5, 50).round(4)}


def test_a_record_reads_back_and_every_damage_is_named(tmp_path, params, labels):
    (run,) = runs_of(params, ["BP1"], [1])
    fake_record(tmp_path, run, labels, fake_predictions(np.random.default_rng(1), labels, 0.7))
    folder = tmp_path / run.folder
    record = read_record(folder, run, SCALE)
    dev = record.dev_predictions()
    assert dev.predictions["sst"].shape == (60,) and dev.labels["sts"] == pytest.approx(labels["sts"])
    assert record.dev["overall"] == pytest.approx(overall(record.dev))
    assert [c for c in record.curves() if c[1] == "loss_sst"][0] == (10, "loss_sst", pytest.approx(0.11))

    (best,) = runs_of(params, ["best"], [1])
    with pytest.raises(RecordError, match=r"ran with other settings.*train.lr"):
        read_record(folder, PlannedRun(run.table_id, "BP1", 1, run.row_overrides, run.scale, best.params))
    with pytest.raises(RecordError, match="not this table's"):
        read_record(folder, run, {"train.epochs": 3})
    member = folder / "predictions" / "para-dev.csv.gz"
    member.write_bytes(member.read_bytes()[:-20])  # truncated
    with pytest.raises(RecordError, match=r"para-dev.csv.gz: does not match its checksum"):
        read_record(folder, run)
    member.unlink()
    with pytest.raises(RecordError, match=r"para-dev.csv.gz: missing"):
        read_record(folder, run)
    (folder / "record.json").write_text('{"format": 1, "row": "BP1"', encoding="utf-8")
    with pytest.raises(RecordError, match=r"record.json: not valid JSON"):
        read_record(folder, run)


def test_gzip_csvs_have_reproducible_bytes(tmp_path):
    write_csv_gz(tmp_path / "a.csv.gz", ["id", "prediction"], [["x", 1]])
    write_csv_gz(tmp_path / "b.csv.gz", ["id", "prediction"], [["x", 1]])
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.csv.gz").read_bytes()) == b"id,prediction\nx,1\n"


# --------------------------------------------------------------------------------------------
# The table, from records alone
# --------------------------------------------------------------------------------------------


def write_tiny_table(project: Path, params, labels, table_id="tiny") -> Path:
    """Rows 0, 1, BP1, 3 with 2 seeds each; row 3 clearly better than the others, 1 and BP1 alike."""
    folder = project / "results" / "table3" / table_id
    rng = np.random.default_rng(7)
    quality = {"0": 0.5, "1": 0.6, "BP1": 0.6, "3": 0.95}
    for run in runs_of(params, list(quality), [1, 2], table_id=table_id):
        fake_record(folder, run, labels, fake_predictions(rng, labels, quality[run.row]))
    return folder


def test_the_table_is_rebuilt_from_records(tmp_path, params, labels):
    folder = write_tiny_table(tmp_path, params, labels)
    table = rebuild_table(tmp_path, params, "tiny")
    assert table["records"] == 8 and table["dev_examples"] == {"sst": 60, "para": 80, "sts": 50}
    rows = {row["id"]: row for row in table["rows"]}
    assert [row["id"] for row in table["rows"]] == [row.id for row in params.table3.rows]
    assert not rows["4"]["measured"] and rows["3"]["seeds"] == [1, 2]
    three = rows["3"]
    assert three["overall"]["mean"] == pytest.approx(np.mean(three["overall"]["values"]))
    assert three["overall"]["low"] <= three["overall"]["mean"] <= three["overall"]["high"]
    assert three["overall"]["paper"] == 0.770
    assert three["vs_previous"]["row"] == "BP1" and three["vs_previous"]["excludes_zero"]
    assert three["vs_previous"]["difference"] > 0 and three["vs_reference"] is None
    assert rows["BP1"]["vs_previous"]["row"] == "1" and not rows["BP1"]["vs_previous"]["excludes_zero"]
    assert rows["0"]["vs_previous"] is None and rows["0"]["vs_reference"]["row"] == "3"
    assert table["excluded"] == []
    markdown = (folder / "table.md").read_text(encoding="utf-8")
    assert "| 4 | + extra datasets | 0 | not measured yet |" in markdown
    assert "- row BP1 vs row 3: Δ overall" in markdown and ": worse (paper: -0.009)." in markdown
    assert "- row 3 vs row BP1" not in markdown  # each pair of rows is said once
    verdicts = {item["claim"]: item["verdict"] for item in table["claims"]}
    # rows 4-6 unmeasured: their claims wait; PALs: 0.5 -> 0.6 on 190 dev examples and 2 seeds cannot be told
    assert verdicts == {"PALs help": "inconclusive", "annealed sampling helps": "inconclusive",
                        "unsupervised SimCSE helps": "holds"}
    assert rows["1"]["vs_previous"]["excludes_zero"] is False
    assert "| PALs help | 1 vs 0 | +0.157 |" in markdown and "| STLR changes nothing | 5 vs 4 | | | not measured yet |" in markdown
    assert json.loads((folder / "table.json").read_text(encoding="utf-8")) == json.loads(json.dumps(table))
    figures = sorted(path.name for path in (folder / "figures").iterdir())
    assert figures == ["figure1_loss_1_vs_BP1.png", "rows.png"]  # rows 4 and 5 not measured: no Figures 2-3
    assert all((folder / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in figures)
    assert render_markdown(table) == markdown
    again = rebuild_table(tmp_path, params, "tiny")
    assert again["rows"] == table["rows"]  # the bootstrap is seeded: the same records give the same table


@pytest.mark.parametrize("damage", ["truncated record.json", "emptied curves"])
def test_a_rebuild_refuses_a_damaged_record_unless_told_to_drop_it(tmp_path, params, labels, damage):
    folder = write_tiny_table(tmp_path, params, labels)
    rebuild_table(tmp_path, params, "tiny")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    if damage == "truncated record.json":
        record = folder / "3-s2" / "record.json"
        record.write_bytes(record.read_bytes()[:200])
        reason = "not valid JSON|an interrupted copy"
    else:
        (folder / "3-s2" / "curves.csv.gz").write_bytes(b"")
        reason = "checksum"
    damaged = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(Table3Error, match=rf"1 record\(s\) cannot be read.*3-s2.*({reason}).*--drop-unreadable.*"
                                          r"Nothing was written"):
        rebuild_table(tmp_path, params, "tiny")
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == damaged
    assert len(damaged) == len(before)
    table = rebuild_table(tmp_path, params, "tiny", drop_unreadable=True)
    assert {row["id"]: row["seeds"] for row in table["rows"] if row["measured"]}["3"] == [1]
    (excluded,) = table["excluded"]
    assert excluded["path"] == "results/table3/tiny/3-s2" and re.search(reason, excluded["reason"])
    assert "`results/table3/tiny/3-s2`" in (folder / "table.md").read_text(encoding="utf-8")


def test_a_record_whose_dev_block_was_edited_is_left_out_by_path(tmp_path, params, labels):
    """record.json has no checksum of its own: its dev numbers count only where its checksummed predictions
    score them, so an edited overall never enters the means (nor breaks the figures)."""
    folder = write_tiny_table(tmp_path, params, labels)
    record = folder / "1-s2" / "record.json"
    data = json.loads(record.read_text(encoding="utf-8"))
    data["dev"]["overall"] = 0.990
    record.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(Table3Error, match="1-s2.*its dev block disagrees"):
        rebuild_table(tmp_path, params, "tiny")
    table = rebuild_table(tmp_path, params, "tiny", drop_unreadable=True)
    assert {row["id"]: row["seeds"] for row in table["rows"] if row["measured"]}["1"] == [1]
    (excluded,) = table["excluded"]
    assert excluded["path"] == "results/table3/tiny/1-s2"
    assert "dev block disagrees with its own dev predictions (overall 0.990000 but its predictions score" in \
        excluded["reason"]
    (run,) = runs_of(params, ["1"], [2], table_id="tiny")
    with pytest.raises(RecordError, match=r"1-s2/record.json: its dev block disagrees"):
        read_record(folder / "1-s2", run)


def test_a_rebuild_does_not_depend_on_the_workspace_params(tmp_path, params, labels):
    """After `dvc exp run -S data.subset=200` the workspace's params.yaml gives every row other settings: the
    records still hold their own rows' settings, so the rebuild writes the same table; a run refuses to keep
    them (it would train with the changed params), unless told to run them again."""
    folder = write_tiny_table(tmp_path, params, labels)
    rebuild_table(tmp_path, params, "tiny")
    before = {name: (folder / name).read_bytes() for name in ("table.md", "table.json")}
    changed = dataclasses.replace(params, data=dataclasses.replace(params.data, subset=200))
    rebuild_table(tmp_path, changed, "tiny")
    assert {name: (folder / name).read_bytes() for name in before} == before
    request = Table3Request(scale="tiny", table_id="tiny")
    changed = dataclasses.replace(changed, table3=dataclasses.replace(changed.table3, scales={"tiny": SCALE}))
    with pytest.raises(Table3Error, match=r"8 record\(s\) no longer match their row, so they would run again.*"
                                          r"data.subset: 0 in the record, 200 now.*rerun with --rerun-changed"):
        make_table3(tmp_path, changed, request)


def test_committed_params_are_the_base_of_every_run(tmp_path):
    """`dvc exp run -S` leaves its values in the workspace's params.yaml; runs check out HEAD, so HEAD's file."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(git + ["add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "p"], cwd=tmp_path, check=True)
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("subset: 0 ", "subset: 200 "))
    assert load_params(tmp_path / "params.yaml").data.subset == 200
    assert committed_params(tmp_path).data.subset == 0


@pytest.mark.parametrize("change", ["row redefined", "row removed"])
def test_a_rebuild_refuses_records_that_disagree_with_their_row(tmp_path, params, labels, change):
    folder = write_tiny_table(tmp_path, params, labels)
    rebuild_table(tmp_path, params, "tiny")
    before = {name: (folder / name).read_bytes() for name in ("table.md", "table.json")}
    if change == "row redefined":
        rows = [dataclasses.replace(row, overrides={**row.overrides, "train.lr": 1e-4}) if row.id == "BP1" else row
                for row in params.table3.rows]
        changed = dataclasses.replace(params, table3=dataclasses.replace(params.table3, rows=rows))
        expected = r"2 record\(s\) no longer match their row.*BP1-s1 .*disagree with row BP1.*train.lr"
    else:
        rows = [row for row in params.table3.rows if row.id != "0"]
        changed = dataclasses.replace(params, table3=dataclasses.replace(params.table3, rows=rows))
        expected = (r"2 record\(s\) no longer match their row.*0-s1 \(not a row x seed of the catalogue \(its rows, "
                    r"their scales and seeds\)\)")
    with pytest.raises(Table3Error, match=expected + r".*git checkout params.yaml table3.yaml.*Nothing was written"):
        rebuild_table(tmp_path, changed, "tiny")
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_records_of_another_scale_never_mix(tmp_path, params, labels):
    folder = write_tiny_table(tmp_path, params, labels)
    (run,) = runs_of(params, ["4"], [1], table_id="tiny", scale={"train.epochs": 2})
    fake_record(folder, run, labels, fake_predictions(np.random.default_rng(3), labels, 0.8), scale_name="other")
    with pytest.raises(Table3Error, match="4-s1.*not this table's"):
        rebuild_table(tmp_path, params, "tiny")
    table = rebuild_table(tmp_path, params, "tiny", drop_unreadable=True)
    assert not {row["id"]: row for row in table["rows"]}["4"]["measured"]
    assert any(item["path"].endswith("4-s1") and "not this table's" in item["reason"] for item in table["excluded"])


def test_a_fresh_clone_rebuilds_the_table_without_training_dvc_or_mlflow(tmp_path, params, labels):
    """What a user gets from `git clone`: committed records; `palbert table3 --rebuild` needs nothing else."""
    clone = copy_project(tmp_path / "clone")
    shutil.rmtree(clone / "results/table3/reduced")  # the committed reduced table, of another scale than these
    write_tiny_table(clone, params, labels, table_id="reduced")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"  # the venv: python, no training
    result = subprocess.run([sys.executable, "-m", "palbert.cli", "table3", "--rebuild", "--scale", "reduced",
                             "--resamples", "200"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 3 | + unsupervised SimCSE | 2 |" in result.stdout
    assert "results/table3/reduced/table.md" in result.stdout
    assert (clone / "results/table3/reduced/figures/rows.png").is_file()
    assert not (clone / "mlflow.db").exists() and not (clone / ".dvc" / "tmp" / "exps").exists()
    shutil.rmtree(clone / "results/table3/reduced")
    missing = subprocess.run([sys.executable, "-m", "palbert.cli", "table3", "--rebuild", "--scale", "reduced"],
                             cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "results/table3/reduced: no records" in missing.stderr


def test_the_readme_block_says_how_much_is_measured_and_which_verdicts_changed(tmp_path, params, labels):
    folder = write_tiny_table(tmp_path, params, labels)
    table = rebuild_table(tmp_path, params, "tiny")
    shutil.rmtree(folder / "1-s2")
    shutil.rmtree(folder / "0-s2")
    fewer = rebuild_table(tmp_path, params, "tiny")
    assert progress_line(fewer, [1, 2]) == ("**6 of the 16 runs** (8 rows × 2 seeds) are recorded; rows with fewer "
                                            "than 2 seeds (seeds so far): 0 (1), 1 (1), 4 (0), 5 (0), 6 (0), best (0).")
    other = json.loads(json.dumps(table))
    other["scale"]["name"] = "other"
    other["claims"][0]["verdict"] = "reversed"
    lines = claims_across_scales(fewer, other)
    assert lines[0].startswith("| the paper's claim | rows | paper Δ overall | tiny: Δ overall, 95% interval | tiny: verdict")
    assert lines[2].startswith("| PALs help | 1 vs 0 | +0.157 | ") and lines[2].endswith("| reversed | **yes** |")
    assert lines[4].endswith("| **holds** | holds | no |")  # SimCSE 3 vs BP1: the same verdict at both scales
    assert lines[5] == "| extra datasets hurt | 4 vs 3 | -0.024 | not measured yet | | not measured | |"
    block = readme_block(fewer, other, [1, 2], "results/table3/tiny", "docs/other.md")
    assert block.startswith("**6 of the 16 runs**") and "\n".join(rows_table(fewer)) in block
    assert "[docs/other.md](docs/other.md)" in block
    text = "intro\n<!-- t:start -->\nold\n<!-- t:end -->\nrest\n"
    assert replace_marked_block(text, "t", "new\n") == "intro\n<!-- t:start -->\nnew\n<!-- t:end -->\nrest\n"
    with pytest.raises(ValueError, match="expected one"):
        replace_marked_block("no markers", "t", "x")


def test_a_table_folder_that_cannot_be_written_is_one_line_before_any_work(tmp_path, params, labels):
    """Found before training or rebuilding, not as a traceback at the first record."""
    folder = write_tiny_table(tmp_path, params, labels)
    shutil.rmtree(folder / "figures", ignore_errors=True)
    (folder / "figures").write_text("not a folder", encoding="utf-8")
    before = (folder / "table.md").read_bytes() if (folder / "table.md").exists() else None
    with pytest.raises(OutputUnwritable, match=r"tiny/figures \(its figures\): .*figures is a file, not a folder"):
        rebuild_table(tmp_path, params, "tiny")
    assert ((folder / "table.md").read_bytes() if (folder / "table.md").exists() else None) == before
    blocked = tmp_path / "results" / "table3" / "blocked"
    blocked.write_text("a file where the table's folder goes", encoding="utf-8")
    scaled = dataclasses.replace(params, table3=dataclasses.replace(params.table3, scales={"tiny": SCALE}))
    with pytest.raises(OutputUnwritable, match=r"blocked \(the table's records\): .*is a file, not a folder"):
        make_table3(tmp_path, scaled, Table3Request(scale="tiny", table_id="blocked"))


def test_a_task_names_its_mlflow_run_and_tags_its_node_and_attempt(params, monkeypatch):
    """The training run of a Table 3 task is called t3-<row>-s<seed> and tagged with its node and attempt."""
    from palbert.table3.task import run_params
    from palbert.tracking.tags import RUN_TAGS_ENV, default_run_name, run_tags

    (run,) = runs_of(params, ["BP1"], [2])
    written = run_params(run, threads=2)
    assert written["train"]["threads"] == 2 and written["train"]["seed"] == 2
    assert (written["tracking"]["table3_id"], written["tracking"]["table3_row"]) == ("t3-test", "BP1")
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps({"table3_run": run.name, "node": "host:ab12", "attempt": 2}))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = run_tags(run.params, REPO)
    assert (tags["node"], tags["attempt"], tags["seed"]) == ("host:ab12", "2", "2")
    assert default_run_name(tags) == "t3-BP1-s2"


def test_a_returned_record_is_checked_before_it_moves_into_the_table(tmp_path, params, labels):
    """The driver is the only writer of the table's folder: a run's files land there whole and checked, or not at
    all (what was there stays)."""
    from palbert.table3.runner import accept_record

    (run,) = runs_of(params, ["BP1"], [1], table_id="tiny")
    fake_record(tmp_path / "made", run, labels, fake_predictions(np.random.default_rng(1), labels, 0.7))
    made = tmp_path / "made" / run.folder
    files = {str(path.relative_to(made)): path.read_bytes() for path in made.rglob("*") if path.is_file()}
    folder = tmp_path / "table"
    record = accept_record(folder, run, files, SCALE)
    assert record.folder == folder / "BP1-s1" and (folder / "BP1-s1" / "curves.csv.gz").read_bytes() == files["curves.csv.gz"]
    edited = json.loads(files["record.json"])
    edited["dev"]["overall"] = 0.99
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(RecordError, match="its dev block disagrees"):
        accept_record(folder, run, {**files, "record.json": json.dumps(edited).encode()}, SCALE)
    with pytest.raises(Table3Error, match="outside its record"):
        accept_record(folder, run, {**files, "../escape": b"x"}, SCALE)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
