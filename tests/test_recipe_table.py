"""The recipe screen's catalogue (recipes.yaml) read by `palbert table3`, and how its table reads: rows compared
with `best` only, and verdicts with a declared margin; the paper's claims from one precision's runs alone."""

from __future__ import annotations


import numpy as np
import pytest

from palbert.config import OPT_IN_OFF
from palbert.params_file import load_params, load_table3
from palbert.table3 import rebuild_table
from palbert.table3.plan import plan_runs, select_rows
from test_table3 import REPO, fake_predictions, fake_record, labels, params  # noqa: F401 - fixtures

RECIPES = REPO / "recipes.yaml"
REDUCED = {"train.epochs": 3, "train.steps_per_epoch": 300, "train.cap_passes": True, "data.dev_subset": 5000}


@pytest.fixture(scope="module")
def recipes():
    return load_table3(RECIPES, load_params(REPO / "params.yaml"))


def test_every_recipe_row_is_best_plus_its_changes(recipes, params):  # noqa: F811
    rows = {row.id: row for row in recipes.table3.rows}
    best = rows["best"].overrides
    assert best == next(row for row in params.table3.rows if row.id == "best").overrides  # Table 3's best
    assert rows["best"].reference and [row.id for row in recipes.table3.rows if row.reference] == ["best"]
    assert not any(row.compare_previous for row in recipes.table3.rows)
    changes = {row_id: {k: v for k, v in row.overrides.items() if best.get(k) != v}
               for row_id, row in rows.items() if row_id != "best"}
    assert changes == {
        "lr-8e-5": {"train.lr": 8e-5}, "lr-1e-4": {"train.lr": 1e-4},
        "rdrop": {"train.rdrop_weight": 1.0}, "head-lr-x10": {"train.head_lr_multiplier": 10.0},
        "llrd-0.9": {"train.layer_lr_decay": 0.9}, "label-smoothing": {"train.label_smoothing": 0.1},
        "sts-blend": {"evaluate.sts_cosine_blend": 0.3},
        "no-simcse-reduced": {"train.simcse": False, "train.steps_per_epoch": 450},
        "no-simcse-full": {"train.simcse": False, "train.steps_per_epoch": 2700},
        "ema-reduced": {"train.ema_decay": 0.99}, "ema-full": {"train.ema_decay": 0.999},
        # the confirmation's stack: the promoted knobs and the weight average together
        "stack-full": {"train.simcse": False, "train.steps_per_epoch": 2700, "train.head_lr_multiplier": 10.0,
                       "train.ema_decay": 0.999},
    }
    assert recipes.table3.scale("reduced") == REDUCED == params.table3.scale("reduced")  # Table 3's reduced


def test_a_row_keeps_a_scale_key_it_sets_and_knobs_are_added_to_params_yaml(recipes):
    runs = {run.row: run for run in plan_runs(recipes, select_rows(recipes.table3.rows, None), [11711],
                                              "recipes-reduced", REDUCED)}
    assert runs["no-simcse-reduced"].params.train.steps_per_epoch == 450  # the row's, not the scale's 300
    assert runs["best"].params.train.steps_per_epoch == 300 and runs["rdrop"].params.train.epochs == 3
    assert runs["ema-reduced"].params.train.ema_decay == 0.99
    args = runs["rdrop"].exp_run_command()
    # params.yaml has no opt-in keys (its committed run predates them): Hydra's ++ adds one, = would be refused
    assert "++train.rdrop_weight=1.0" in args and "train.lr=5e-05" in args
    assert "++evaluate.sts_cosine_blend=0.3" in runs["sts-blend"].exp_run_command()
    assert all(not arg.startswith("++") for arg in runs["best"].exp_run_command())
    assert set(OPT_IN_OFF["train"]) <= set(runs["best"].params.train.__dataclass_fields__)


def test_a_row_of_one_scale_belongs_to_that_scales_table_only(recipes, tmp_path):
    rows = {row.id: row for row in recipes.table3.rows}
    assert rows["ema-reduced"].runs_at("reduced") and not rows["ema-reduced"].runs_at("full")
    assert rows["ema-full"].runs_at("full") and rows["best"].runs_at("full") and rows["best"].runs_at("reduced")
    assert rows["ema-reduced"].runs_at("reduced+train.epochs=1")  # an ad hoc scale is its base's
    from palbert.errors import ParamsError

    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPES.read_text().replace("scales: [full]", "scales: [fulll]", 1))
    with pytest.raises(ParamsError, match=r"rows 'no-simcse-full': scales: no scale 'fulll' \(known: full, reduced\)"):
        load_table3(bad, load_params(REPO / "params.yaml"))


def test_the_recipe_table_compares_every_row_with_best(tmp_path, recipes, labels):  # noqa: F811
    folder = tmp_path / "results" / "table3" / "recipes-tiny"
    rng = np.random.default_rng(3)
    quality = {"best": 0.8, "lr-8e-5": 0.8, "head-lr-x10": 0.95}
    for run in plan_runs(recipes, select_rows(recipes.table3.rows, list(quality)), [1, 2], "recipes-tiny",
                         {"train.epochs": 1, "train.steps_per_epoch": 3}):
        # an ad hoc reduced scale: the screen's single knobs are reduced-scale rows
        fake_record(folder, run, labels, fake_predictions(rng, labels, quality[run.row]), scale_name="reduced+tiny")
    table = rebuild_table(tmp_path, recipes, "recipes-tiny")
    rows = {row["id"]: row for row in table["rows"]}
    assert table["reference"] == "best" and table["margin"] == 0.005
    assert all(row.get("vs_previous") is None for row in table["rows"])
    higher = rows["head-lr-x10"]["vs_reference"]
    assert higher["row"] == "best" and higher["verdict"] == "better"
    assert rows["best"]["vs_reference"] is None and rows["best"]["note"].startswith("its recipe was chosen")
    assert table["claims"] == [] and table["claims_one_precision"] is None
    markdown = (folder / "table.md").read_text(encoding="utf-8")
    assert "| Δ overall vs previous row | Δ overall vs row best |" in markdown
    assert "smallest difference in overall that matters is declared as 0.005" in markdown
    assert "- Row best: its recipe was chosen" in markdown
    line = next(text for text in markdown.splitlines() if text.startswith("| head-lr-x10 |"))
    assert line.endswith(" * |") and "| – |" in line  # no comparison with the row above; a difference with best


def test_claims_are_also_given_from_the_commonest_precision_alone(tmp_path, params, labels):  # noqa: F811
    folder = tmp_path / "results" / "table3" / "mixed"
    rng = np.random.default_rng(5)
    quality = {"0": 0.5, "1": 0.9, "BP1": 0.9, "3": 0.9}
    for run in plan_runs(params, select_rows(params.table3.rows, list(quality)), [1, 2, 3], "mixed",
                         {"train.epochs": 1, "train.steps_per_epoch": 3}):
        fake_record(folder, run, labels, fake_predictions(rng, labels, quality[run.row]),
                    precision="bf16" if run.seed == 1 else "fp32")
    table = rebuild_table(tmp_path, params, "mixed")
    alone = table["claims_one_precision"]
    assert alone["precision"] == "fp32" and alone["records"] == 8 and alone["seeds"] == [2, 3]
    assert [item["claim"] for item in alone["claims"]] == [item["claim"] for item in table["claims"]]
    assert alone["claims"][0]["verdict"] == "holds"  # PALs: 0.5 -> 0.9, with or without seed 1
    assert alone["claims"][0]["difference"] != table["claims"][0]["difference"]
    markdown = (folder / "table.md").read_text(encoding="utf-8")
    assert "The same claims from the 8 fp32 runs alone (seeds 2, 3)" in markdown
    assert "| the paper's claim | rows | fp32 runs: Δ overall, 95% interval | fp32 runs: verdict | all runs: verdict " \
           "| changed |" in markdown


def test_a_row_stopped_after_a_first_look_runs_only_its_own_seeds(tmp_path, recipes, labels):  # noqa: F811
    from palbert.errors import ParamsError
    from palbert.table3 import Table3Error, Table3Request, make_table3
    from palbert.table3.report import progress_line

    stopped = {row.id: row for row in recipes.table3.rows if row.seeds}
    assert sorted(stopped) == ["ema-reduced", "label-smoothing", "llrd-0.9", "rdrop"]
    assert all(row.seeds == [11711] and row.note.startswith("stopped after a first look") for row in stopped.values())
    tiny = {"train.epochs": 1, "train.steps_per_epoch": 3}
    runs = plan_runs(recipes, select_rows(recipes.table3.rows, ["best", "rdrop"]), [11711, 1], "recipes-tiny", tiny)
    assert [(run.row, run.seed) for run in runs] == [("best", 11711), ("rdrop", 11711), ("best", 1)]

    folder = tmp_path / "results" / "table3" / "recipes-tiny"
    rng = np.random.default_rng(4)
    for run in runs:
        fake_record(folder, run, labels, fake_predictions(rng, labels, 0.8), scale_name="reduced+tiny")
    table = rebuild_table(tmp_path, recipes, "recipes-tiny")
    rows = {row["id"]: row for row in table["rows"]}
    assert rows["rdrop"]["planned_seeds"] == [11711] and "planned_seeds" not in rows["best"]
    line = progress_line(table, [11711, 1, 2])
    assert line.startswith("**3 of the 22 runs** (10 rows × 3 seeds, 1 seed for rdrop, llrd-0.9, label-smoothing "
                           "and ema-reduced) are recorded; rows with fewer than their planned seeds (seeds so far): "
                           "best (2), lr-8e-5 (0), ")
    assert "rdrop" not in line.split("seeds so far")[1]  # its one seed is all it runs

    with pytest.raises(Table3Error, match=r"row\(s\) rdrop \(11711\) run only the seeds named beside them .* none "
                                          r"of 1, 2"):
        make_table3(tmp_path, recipes, Table3Request(rows=["rdrop"], seeds=[1, 2], scale="reduced"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPES.read_text().replace("seeds: [11711]", "seeds: [7]", 1))
    with pytest.raises(ParamsError, match=r"rows 'rdrop': seeds: \[7\] must be distinct seeds of table3.seeds "
                                          r"\(11711, 1, 2\)"):
        load_table3(bad, load_params(REPO / "params.yaml"))
