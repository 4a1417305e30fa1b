"""What a DVC user sees: `dvc plots show` and `dvc exp show` / `dvc metrics show`, with the real dvc on the
files the stages write (write_plots, the data report), in a committed copy of the project."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT, copy_project, project_env
from palbert.atomic import write_json, write_text
from palbert.config import DATASETS
from palbert.data.report import label_distribution_csv
from palbert.metrics import DEV_METRICS
from palbert.train.loop import write_plots

PLOTS = [
    "Training loss per task (paper Figures 1-3)",
    "Unsupervised SimCSE loss (train.simcse; empty when off)",
    "Learning rate",
    "Task sampling probability",
    "Dev metrics per epoch",
    "Label distribution (paper Figure 4)",
]
DEV = {"sst_acc": 0.466, "para_acc": 0.832, "sts_pearson": 0.862, "overall": 0.743}


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=project, env=project_env(project), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project with the outputs of a 2-epoch run (constant LR 2e-5, SimCSE on) committed."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    steps = [10, 20, 30]
    history = {
        "loss_sst": [[s, 1.6 - s / 100] for s in steps], "loss_para": [[s, 0.7 - s / 1000] for s in steps],
        "loss_sts": [[s, 2.0 - s / 50] for s in steps], "loss_simcse": [[s, 4e-3 / s] for s in steps],
        "lr": [[s, 2e-5] for s in steps],
        "sampling": [[s, {"sst": 0.3, "quora": 0.45, "sts": 0.25}] for s in steps],
        "dev": [{"epoch": 1, **{k: v - 0.05 for k, v in DEV.items()}}, {"epoch": 2, **DEV}],
    }
    write_plots(history, project / "metrics/plots/train")
    report = {"sst": {"train": {"rows": 10, "labels": {"0": 4, "1": 6}}, "dev": {"rows": 5, "labels": {"0": 5}}},
              "quora": {"dev": {"rows": 7, "labels": {"0": 3, "1": 4}, "skipped": {"empty_label": 1}}}}
    write_json(project / "metrics/data.json", report)
    write_text(project / "metrics/plots/label_distribution.csv", label_distribution_csv(report))
    write_json(project / "metrics/train.json", {"steps": 30, "best_epoch": 2, "train_wall_s": 60.0,
                                                "examples_per_s": 9.5, "parameters": {"total": 25_445_971}})
    write_json(project / "metrics/dev.json", DEV)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], cwd=project,
                   check=True)
    return project


def test_each_plot_is_drawn_once_from_its_top_level_definition(project):
    plots = json.loads(dvc(project, "plots", "show", "--json"))["data"]
    # no stage-level plots: they drew the same CSVs again with the default template (x = row index)
    assert list(plots) == PLOTS
    assert all(len(rendered) == 1 for rendered in plots.values())
    assert plots[PLOTS[-1]][0]["content"]["mark"]["type"] == "bar"


def test_series_have_colours_and_small_values_readable_labels(project):
    plots = {name: rendered[0]["content"] for name, rendered in
             json.loads(dvc(project, "plots", "show", "--json"))["data"].items()}
    for name in PLOTS[:-1]:
        # per-step series: one panel per revision (its own step axis); per-epoch scores: one dash per revision
        spec = plots[name].get("spec", plots[name])
        encoding = spec["encoding"]
        split = plots[name]["facet"]["row"] if "facet" in plots[name] else encoding["strokeDash"]
        assert encoding["color"]["field"] == "series" and split["field"] == "rev", name
        assert encoding["y"]["axis"]["format"] == "~g", name  # 2e-5 reads 0.00002, not 0
    # the template's `series` is the loss file's task, or the column: one colour per task / dataset / metric
    losses = plots[PLOTS[0]]["data"]["values"]
    assert {v["filename"] for v in losses} == {"loss_sst.csv", "loss_para.csv", "loss_sts.csv"}
    assert {v["field"] for v in plots["Task sampling probability"]["data"]["values"]} == set(DATASETS)
    assert {v["field"] for v in plots["Dev metrics per epoch"]["data"]["values"]} == set(DEV_METRICS)
    assert [float(v["loss"]) for v in plots[PLOTS[1]]["data"]["values"]] == pytest.approx([4e-4, 2e-4, 4e-3 / 30])


def test_exp_show_leads_with_the_dev_scores(project):
    header = dvc(project, "exp", "show", "--csv").splitlines()[0].split(",")
    assert header[:9] == ["Experiment", "rev", "typ", "Created", "parent", *DEV_METRICS]
    assert not any(column.startswith(("sst.", "quora.", "parameters.", "best_dev.")) for column in header)
    assert json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"] == {"metrics/dev.json": {"data": DEV}}
    # the rest, on request (the README's recipe)
    shown = json.loads(dvc(project, "metrics", "show", "metrics/train.json", "metrics/data.json", "--json"))
    assert shown[""]["data"]["metrics/data.json"]["data"]["quora"]["dev"]["skipped"] == {"empty_label": 1}
    assert shown[""]["data"]["metrics/train.json"]["data"]["examples_per_s"] == 9.5


def test_the_readmes_exp_show_recipe_fits_a_terminal_with_the_scores_and_changed_params(project):
    """params.yaml holds only run knobs (no table3 catalogue cell), and the README's recipe shows
    the four scores beside the params that differ, in 120 columns."""
    header = dvc(project, "exp", "show", "--csv").splitlines()[0].split(",")
    assert not any(column.startswith("table3") for column in header)
    recipe = next(line for line in (PROJECT / "README.md").read_text(encoding="utf-8").splitlines()
                  if line.startswith("dvc exp show --only-changed"))
    args = shlex.split(recipe.split("#")[0])
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["seed"] = 5  # the workspace differs from HEAD in one param, as after an experiment
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    try:
        table = subprocess.run(args + ["--no-pager"], cwd=project, env={**project_env(project), "COLUMNS": "120"},
                               capture_output=True, text=True, timeout=300).stdout
    finally:
        subprocess.run(["git", "checkout", "params.yaml"], cwd=project, check=True)
    lines = [line for line in table.splitlines() if line.strip()]
    assert all(len(line) <= 120 for line in lines), table
    assert "…" not in table, table  # nothing cut
    assert all(name in lines[1] for name in (*DEV_METRICS, "train.seed")), table
    assert not any(name in lines[1] for name in ("model.pals", "palbert/", ".py")), table
