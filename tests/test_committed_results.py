"""The committed results and the README's figures for them: the reference run (DVC's convention: `dvc.lock` and
the `cache: false` metrics live in git, which a fresh clone's `dvc metrics show`, `exp show` and `plots show`
read) and the measured Table 3 (its records, and the table rebuilt from them)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from palbert import paths
from palbert.params_file import TABLE3_FILE, load_params, load_table3
from palbert.metrics import DEV_METRICS, overall
from palbert.table3 import rebuild_table
from palbert.table3.report import TABLE_DECIMALS, claims_across_scales, claims_table, replace_marked_block, rows_table

ROOT = Path(__file__).resolve().parents[1]


def _json(path: Path) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


def _lock_stage(name: str) -> dict:
    return yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"][name]


def test_dev_metrics_have_the_contract_keys():
    dev = _json(paths.DEV_METRICS)
    assert set(DEV_METRICS) <= set(dev), f"{paths.DEV_METRICS} lacks {set(DEV_METRICS) - set(dev)}"
    assert 0 <= dev["sst_acc"] <= 1 and 0 <= dev["para_acc"] <= 1 and -1 <= dev["sts_pearson"] <= 1
    assert dev["overall"] == pytest.approx(overall(dev), abs=1e-9)


@pytest.mark.parametrize("stage, path", [("evaluate", paths.DEV_METRICS), ("train", paths.TRAIN_SUMMARY),
                                         ("data_report", paths.DATA_REPORT)])
def test_the_lock_describes_the_committed_metrics(stage, path):
    """The metrics files and dvc.lock come from the same run: the lock's md5 of each is the file's."""
    recorded = {out["path"]: out for out in _lock_stage(stage)["outs"]}
    assert str(path) in recorded, f"dvc.lock: stage {stage} has no output {path}"
    assert recorded[str(path)]["md5"] == hashlib.md5((ROOT / path).read_bytes()).hexdigest()


def test_the_lock_ran_the_committed_params():
    """The reference run is the default pipeline: every param the lock recorded is params.yaml's value."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        flat[prefix] = value

    walk("", yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")))
    for stage in ("train", "evaluate"):
        for key, value in _lock_stage(stage)["params"]["params.yaml"].items():
            assert _number_aware(flat[key]) == _number_aware(value), \
                f"dvc.lock {stage}: {key}={value!r}, params.yaml has {flat[key]!r}"


def _number_aware(value: object) -> object:
    """DVC writes 2e-5 as the string '2e-05' (YAML 1.1 has no float without a dot): compare numbers as numbers."""
    if isinstance(value, dict):
        return {key: _number_aware(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_number_aware(inner) for inner in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def test_the_readme_quotes_the_committed_run():
    """The README's default row shows the committed dev scores and train time, not an older run's."""
    dev, train = _json(paths.DEV_METRICS), _json(paths.TRAIN_SUMMARY)
    row = next((line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("| **default**")), None)
    assert row is not None, "README.md: no results row starting with '| **default**'"
    numbers = re.findall(r"\b\d\.\d{3}\b", row)
    assert numbers[:4] == [f"{dev[k]:.3f}" for k in ("sst_acc", "para_acc", "sts_pearson", "overall")], row
    assert f"{train['train_wall_s']:.0f} s" in row, row


# The measured Table 3s: committed records, each table rebuilt from them, and the README's copy.
TABLES3 = sorted(path.parent.relative_to(ROOT) for path in (ROOT / "results" / "table3").glob("*/table.json"))
#: One unit in table.json's last kept decimal: two machines' sums that differ in the 16th digit can round apart
#: when they straddle a rounding boundary; any real difference is far larger.
LAST_DECIMAL = 1.5 * 10.0 ** -TABLE_DECIMALS


def differences(have: object, want: object, where: str = "") -> list[str]:
    """Where two JSON values differ: floats beyond LAST_DECIMAL, anything else at all."""
    if isinstance(have, dict) and isinstance(want, dict):
        return [item for key in sorted(set(have) | set(want), key=str)
                for item in (differences(have.get(key, "<absent>"), want.get(key, "<absent>"), f"{where}.{key}")
                             if key in have and key in want else [f"{where}.{key}: present on one side only"])]
    if isinstance(have, list) and isinstance(want, list):
        if len(have) != len(want):
            return [f"{where}: {len(have)} items, committed {len(want)}"]
        return [item for i, (a, b) in enumerate(zip(have, want)) for item in differences(a, b, f"{where}[{i}]")]
    if isinstance(have, float) or isinstance(want, float):
        if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(have, bool) \
                and abs(have - want) <= LAST_DECIMAL:
            return []
    elif have == want and type(have) is type(want):
        return []
    return [f"{where}: rebuilt {have!r}, committed {want!r}"]


def test_differences_is_strict_beyond_the_last_decimal():
    assert differences({"a": [0.1234561, 1]}, {"a": [0.1234569, 1]}) == []
    assert differences({"a": [0.123456]}, {"a": [0.123459]}) == [".a[0]: rebuilt 0.123456, committed 0.123459"]
    assert differences({"a": 1}, {"a": True}) and differences({"a": "x"}, {"b": "x"})
    assert differences([1, 2], [1, 2, 3]) == [": 2 items, committed 3"]


def test_there_are_committed_tables3():
    assert Path("results/table3/reduced") in TABLES3


@pytest.mark.parametrize("table3", TABLES3, ids=str)
def test_the_committed_table3_is_its_records_rebuilt(tmp_path, table3):
    """table.json and table.md are what `palbert table3 --rebuild` makes of the committed records, on any CPU."""
    copy = tmp_path / table3
    shutil.copytree(ROOT / table3, copy)
    catalogue = ROOT / CATALOGUES.get(table3, TABLE3_FILE)
    rebuilt = rebuild_table(tmp_path, load_table3(catalogue, load_params(ROOT / "params.yaml")), table3.name)
    assert differences(json.loads(json.dumps(rebuilt)), _json(table3 / "table.json")) == []
    assert (copy / "table.md").read_text(encoding="utf-8") == (ROOT / table3 / "table.md").read_text(encoding="utf-8")


#: The document that shows each committed Table 3 (the README the paper-scale one, docs/table3.md the reduced one).
TABLE3_DOCUMENTS = {Path("results/table3/full"): "README.md", Path("results/table3/reduced"): "docs/table3.md",
                    Path("results/table3/recipes-reduced"): "docs/recipes.md",
                    Path("results/table3/recipes-full"): "docs/recipes.md"}
#: The catalogue of each table whose rows are not table3.yaml's.
CATALOGUES = {Path("results/table3/recipes-reduced"): "recipes.yaml", Path("results/table3/recipes-full"): "recipes.yaml"}


@pytest.mark.parametrize("table3", TABLES3, ids=str)
def test_the_readme_shows_the_committed_table3(table3):
    """The document that shows a committed Table 3 (README.md or docs/table3.md) quotes the table and its verdicts
    on the paper's claims as the committed table's own lines."""
    assert table3 in TABLE3_DOCUMENTS, f"{table3}: no document shows it; add it to TABLE3_DOCUMENTS"
    document = TABLE3_DOCUMENTS[table3]
    table, text = _json(table3 / "table.json"), (ROOT / document).read_text(encoding="utf-8")
    # the README's claims sit beside the other scale's verdicts (claims_across_scales, the generated block below)
    claims = claims_across_scales(table, _json(Path("results/table3/reduced/table.json"))) \
        if document == "README.md" else claims_table(table)
    shown = [("rows", rows_table(table))] + ([] if table3 in CATALOGUES else [("claims", claims)])  # no paper rows
    for name, lines in shown:
        assert "\n".join(lines) in text, f"{document}: its Table 3 {name} are not {table3 / 'table.md'}'s; copy them"
    assert f"{table['records']} of the" in text, f"{document}: the count of recorded runs is not table.json's"


def test_the_readme_shows_the_recipe_confirmation_as_committed():
    """The README's "beyond the paper" block quotes the full-scale recipe table's rows as its table.md has them."""
    table = _json(Path("results/table3/recipes-full/table.json"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n".join(rows_table(table)) in readme, "README.md: its recipe rows are not recipes-full's; copy them"
    assert f"{table['records']} of the" in readme


def test_the_readme_leads_with_the_paper_scale_table3():
    """The README's headline table is generated from the committed table.json files, never copied by hand."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import readme_table3
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_marked_block(readme, readme_table3.BLOCK, readme_table3.block()) == readme, \
        "README.md: its paper-scale Table 3 is not what `python scripts/readme_table3.py` writes; run it"
    assert "of the 24 runs" in readme_table3.block()


#: An absolute path (``/tmp/x/y.json``, also inside ``sqlite:////...`` and ``file:///...``); not ``.../name``,
#: ``a/b``, ``rows/s`` or a URL's path.
ABSOLUTE_PATH = re.compile(r"(?:(?<![\w.:/~-])|(?<=sqlite:///)|(?<=file://))/(?:[\w.+-]+/)+[\w.+-]+")


def test_committed_results_name_no_absolute_path():
    """A committed result names paths relative to the project (or none): a folder of the machine that wrote it
    means nothing in a clone."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "metrics", "docs/results", "results", "benchmarks/results"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in listed:
        if Path(name).suffix in (".png", ".gz", ".svg") or (ROOT / name).is_symlink():  # a link: its target is listed
            continue
        text = (ROOT / name).read_text(encoding="utf-8")
        found += [f"{name}: {match.group(0)}" for match in ABSOLUTE_PATH.finditer(text)]
    assert listed and not found, found[:10]
