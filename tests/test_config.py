"""params.yaml is read into typed dataclasses; every mistake names its key."""

from pathlib import Path

import pytest
import yaml

from palbert.config import ParamsError, apply_overrides, params_from_dict, params_to_dict
from palbert.params_file import TABLE3_FILE, load_params, load_table3

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_load_and_are_the_papers_best_configuration():
    params = load_params(ROOT / "params.yaml")
    assert params.model.pals and params.train.sampling == "annealed" and params.train.simcse
    assert params.train.lr == pytest.approx(2e-5)
    assert (params.train.batch_size, params.train.epochs, params.train.steps_per_epoch) == (16, 3, 1800)
    assert (params.model.pal_size, params.model.pal_heads) == (204, 12)
    assert not params.table3.rows  # the Table 3 catalogue is not a run knob: table3.yaml holds it
    catalogue = load_table3(ROOT / TABLE3_FILE, params).table3
    assert [row.id for row in catalogue.rows] == ["0", "1", "BP1", "3", "4", "5", "6", "best"]
    assert catalogue.scale("full") == {} and catalogue.scale("reduced")["train.cap_passes"] is True


def test_yaml_1_2_float_written_by_dvc_exp_run_is_accepted(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["lr"] = "2e-05"  # what PyYAML makes of `dvc exp run -S train.lr=2e-5`
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path).train.lr == pytest.approx(2e-5)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "lrr", 1e-3, "train.lrr: unknown key"),
        ("train", "lr", "fast", "train.lr: expected a number"),
        ("train", "lr", -1.0, "train.lr: must be > 0"),
        ("train", "batch_size", 0, "train.batch_size: must be >= 1"),
        ("train", "epochs", 2.5, "train.epochs: expected an integer"),
        ("model", "pals", "yes", "model.pals: expected true or false"),
        ("train", "sampling", "random", "train.sampling: must be one of"),
        ("data", "extra", ["snli", "imdb"], "data.extra[1]: must be one of"),
        ("model", "hidden_dropout", 1.5, "model.hidden_dropout: must be < 1"),
    ],
)
def test_bad_values_name_the_key(section, key, value, message):
    raw = params_to_dict(load_params(ROOT / "params.yaml"))
    raw[section][key] = value
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        params_from_dict(raw)


def test_unknown_section_and_cross_field_checks():
    with pytest.raises(ParamsError, match="trian: unknown key"):
        params_from_dict({"trian": {}})
    with pytest.raises(ParamsError, match="model.pal_heads: 5 heads must divide model.pal_size 204"):
        params_from_dict({"model": {"pal_heads": 5}})


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {lr: [1, 2]}\n")
    with pytest.raises(ParamsError, match=r"params.yaml: train.lr: expected a number"):
        load_params(path)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_table3_overrides_are_validated(tmp_path):
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / TABLE3_FILE).read_text())
    raw["table3"]["rows"][0]["overrides"]["train.sampling"] = "bogus"
    (tmp_path / TABLE3_FILE).write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"table3.yaml: table3.rows\[0\] \(0\).overrides: train.sampling: must be one"):
        load_table3(tmp_path / TABLE3_FILE, params)
    (tmp_path / TABLE3_FILE).write_text(yaml.safe_dump(raw["table3"]))
    with pytest.raises(ParamsError, match=r"table3.yaml: expected one top-level key, table3"):
        load_table3(tmp_path / TABLE3_FILE, params)
    old_layout = yaml.safe_load((ROOT / "params.yaml").read_text()) | raw  # params.yaml with the catalogue in it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old_layout))
    with pytest.raises(ParamsError, match=r"params.yaml: table3: the Table 3 catalogue lives in table3.yaml"):
        load_params(tmp_path / "params.yaml")
    out = apply_overrides(params_to_dict(load_params(ROOT / "params.yaml"), include_table3=False),
                          {"model.pals": False})
    assert out["model"]["pals"] is False


def test_flat_params_for_mlflow():
    flat = load_params(ROOT / "params.yaml").flat()
    assert flat["model.pals"] is True and flat["train.sampling"] == "annealed"
    assert not any(k.startswith("table3") for k in flat)


@pytest.mark.parametrize(("raw", "hint"), [
    ({"train": {"lrr": 1e-3}}, "train.lrr: unknown key; did you mean 'train.lr'?"),
    ({"train": {"pals": False}}, "train.pals: unknown key; did you mean 'model.pals'?"),
    ({"trian": {}}, "trian: unknown key; did you mean 'train'?"),
    ({"table3": {"rows": [{"id": "0", "name": "x", "overide": {}}]}},
     "table3.rows[0].overide: unknown key; did you mean 'table3.rows[0].overrides'?"),
])
def test_an_unknown_key_names_the_closest_known_one(raw, hint):
    with pytest.raises(ParamsError) as error:
        params_from_dict(raw)
    assert str(error.value).startswith(hint) and "\n" not in str(error.value)


def test_an_unknown_override_key_names_the_closest_and_nothing_close_guesses_nothing():
    with pytest.raises(ParamsError, match=r"train.lrr: unknown key; did you mean 'train.lr'\?"):
        apply_overrides(params_to_dict(params_from_dict({}), include_table3=False), {"train.lrr": 1e-3})
    with pytest.raises(ParamsError, match=r"trian.lr: unknown key; did you mean 'train.lr'\?"):
        apply_overrides(params_to_dict(params_from_dict({}), include_table3=False), {"trian.lr": 1e-3})
    with pytest.raises(ParamsError, match=r"^train.zzz: unknown key \(known keys under train: seed, "):
        params_from_dict({"train": {"zzz": 1}})  # nothing close: no guess


def test_an_older_params_file_keeps_the_defaults_and_scalars_read_as_written():
    """A key a params file lacks (written before the key existed) keeps its default; numbers and booleans in
    quotes read as numbers and booleans, empty values as empty, and a bad one names its key."""
    params = params_from_dict({"train": {"lr": " 3e-4 ", "epochs": "2", "steps_per_epoch": 4.0, "simcse": "False"},
                               "data": {"extra": None, "mirror": None}, "evaluate": None})
    assert (params.train.lr, params.train.epochs, params.train.steps_per_epoch) == (3e-4, 2, 4)
    assert params.train.simcse is False and params.train.batch_size == 16 and params.evaluate.batch_size == 128
    assert params.data.extra == [] and params.data.mirror == ""
    for raw, message in [({"train": {"epochs": True}}, "train.epochs: expected an integer, got the boolean True"),
                         ({"train": {"lr": float("nan")}}, "train.lr: expected a finite number, got nan"),
                         ({"train": {"epochs": "2.5"}}, "train.epochs: expected an integer, got '2.5'"),
                         ({"model": {"pals": 1}}, "model.pals: expected true or false, got 1"),
                         ({"data": {"extra": ["snli", "snli"]}}, "data.extra: duplicate entries in ['snli', 'snli']"),
                         ({"data": {"max_length": 1000}}, "data.max_length: must be <= 512, got 1000"),
                         ({"train": 3}, "train: expected a mapping, got 3"),
                         ({"table3": {"rows": [{"name": "x"}]}}, "table3.rows[0].id: required key is missing")]:
        with pytest.raises(ParamsError) as error:
            params_from_dict(raw)
        assert str(error.value) == message
