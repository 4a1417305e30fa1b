"""dvc.yaml against the code: every stage depends on every palbert module it imports (else `dvc repro` says
"up to date" after a change that alters results), and names the same files as ``palbert.paths``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from palbert import paths

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, at any depth (also imports inside functions)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parts + ([module] if module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from palbert import paths`
    return names


def closure(module: str) -> set[Path]:
    """What ``python -m module`` runs of the project: the module, its packages' ``__init__`` and every
    project file they import, transitively."""
    parts = module.split(".")
    seen: set[Path] = set()
    todo = [f for f in (module_file(".".join(parts[: i + 1])) for i in range(len(parts))) if f]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            if name.split(".")[0] not in ("palbert", "stages"):
                continue
            parts = name.split(".")
            todo += [f for f in (module_file(".".join(parts[: i + 1])) for i in range(len(parts))) if f]
    return seen


def stage_definitions() -> dict[str, dict]:
    """Stage name -> definition, a ``foreach`` stage taken with its first item."""
    out = {}
    for name, stage in STAGES.items():
        if "foreach" in stage:
            item = stage["foreach"][0]
            text = yaml.safe_dump(stage["do"]).replace("${item}", item)
            out[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            out[name] = stage
    return out


def _paths(entries: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else str(entry) for entry in entries]


@pytest.mark.parametrize("name", sorted(stage_definitions()))
def test_every_imported_module_is_a_dependency_of_its_stage(name):
    stage = stage_definitions()[name]
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [ROOT / dep for dep in _paths(stage["deps"])]
    missing = sorted(str(path.relative_to(ROOT)) for path in closure(module)
                     if not any(path == dep or dep in path.parents for dep in deps))
    assert not missing, f"dvc.yaml stage {name} imports but does not depend on: {', '.join(missing)}"


def test_the_import_walk_sees_imports_inside_functions():
    found = {str(p.relative_to(ROOT)) for p in closure("stages.evaluate")}
    assert {"palbert/tracking.py", "palbert/mlflow_model.py", "palbert/predict.py", "stages/__init__.py"} <= found
    assert "palbert/table3/runner.py" not in found and "palbert/cli.py" not in found


def test_data_stages_do_not_pull_in_the_model():
    for name in ("fetch", "prepare@sst", "data_report"):
        module = stage_definitions()[name]["cmd"].split("python -m ", 1)[1].split()[0]
        files = {str(p.relative_to(ROOT)) for p in closure(module)}
        assert not {f for f in files if f.startswith(("palbert/model/", "palbert/train/"))}, name
        assert "palbert/tracking.py" not in files, name


def test_dvc_yaml_names_the_files_of_palbert_paths():
    stages = stage_definitions()
    outs = {name: set(_paths(stage.get("outs", []))) for name, stage in stages.items()}
    assert str(paths.RAW) in outs["fetch"]
    assert f"{paths.PREPARED}/sst" in outs["prepare@sst"]
    assert {str(paths.DATA_REPORT), str(paths.LABEL_DISTRIBUTION)} <= outs["data_report"]
    assert {str(p) for p in (paths.BEST_MODEL, paths.TRAIN_SUMMARY, paths.TRAIN_PLOTS)} <= outs["train"]
    # scratch state, no out: `dvc exp apply` could not restore it (issue 21 item 6); DVC leaves it for resuming
    assert str(paths.CHECKPOINTS) not in {out for stage_outs in outs.values() for out in stage_outs}
    assert str(paths.PREDICTIONS) in outs["evaluate"]
    metrics = {m for stage in stages.values() for m in _paths(stage.get("metrics", []))}
    assert str(paths.DEV_METRICS) in metrics


def test_bytecode_stays_out_of_the_dependency_hashes():
    """Folder deps (palbert/data, ...) hold __pycache__ wherever Python ran; its .pyc files differ per machine,
    so were they hashed, no clone would ever find the committed dvc.lock up to date."""
    dvc = Path(sys.executable).with_name("dvc")
    ignored = subprocess.run([str(dvc), "check-ignore", "palbert/data/__pycache__/prepare.cpython-311.pyc",
                              "palbert/stray.pyc", "palbert/data/prepare.py"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["palbert/data/__pycache__/prepare.cpython-311.pyc", "palbert/stray.pyc"]
