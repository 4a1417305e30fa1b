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
    """Stage name -> definition, a ``foreach`` stage once per item (``prepare@sst``, ``prepare@quora``, ...)."""
    out = {}
    for name, stage in STAGES.items():
        if "foreach" in stage:
            for item in stage["foreach"]:
                text = yaml.safe_dump(stage["do"]).replace("${item}", item)
                out[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            out[name] = stage
    return out


def _paths(entries: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else str(entry) for entry in entries]


#: Code a stage depends on without importing it: MLflow copies pyfunc_script.py into the logged model.
NOT_IMPORTED = {"evaluate": {"palbert/pyfunc_script.py"}}
#: The pin of the embedded encoder's package (its weights and tokenizer are installed, not in the repository).
ENCODER_PIN = "requirements-encoder.txt"


def _stage_module(stage: dict) -> str:
    return stage["cmd"].split("python -m ", 1)[1].split()[0]


def _code_files(dep: str) -> set[str]:
    """The .py files a code dep (a file or a folder) makes DVC hash."""
    path = ROOT / dep
    files = path.rglob("*.py") if path.is_dir() else [path]
    return {str(f.relative_to(ROOT)) for f in files if "__pycache__" not in f.parts}


@pytest.mark.parametrize("name", sorted(stage_definitions()))
def test_code_deps_are_exactly_what_the_stage_imports(name):
    """Both directions: an imported module missing from deps lets `dvc repro` skip a change that alters results;
    a listed module the stage never imports (or a folder holding one) re-runs a long stage for nothing."""
    stage = stage_definitions()[name]
    imported = {str(p.relative_to(ROOT)) for p in closure(_stage_module(stage))}
    allowed = imported | NOT_IMPORTED.get(name.split("@")[0], set())
    code_deps = [d for d in _paths(stage["deps"]) if d.startswith(("palbert/", "stages/"))]
    listed = set().union(*(_code_files(d) for d in code_deps))
    missing, extra = sorted(allowed - listed), sorted(listed - allowed)
    assert not missing and not extra, (
        f"dvc.yaml stage {name}: imported but not a dep: {', '.join(missing) or '-'}; "
        f"a dep but never imported: {', '.join(extra) or '-'}")


def test_the_import_walk_sees_imports_inside_functions():
    found = {str(p.relative_to(ROOT)) for p in closure("stages.evaluate")}
    assert {"palbert/tracking/tracker.py", "palbert/mlflow_model.py", "palbert/predict.py", "stages/__init__.py"} <= found
    assert "palbert/table3/runner.py" not in found and "palbert/cli.py" not in found


def test_data_stages_do_not_pull_in_the_model():
    for name in ("fetch", "prepare@sst", "data_report"):
        module = _stage_module(stage_definitions()[name])
        files = {str(p.relative_to(ROOT)) for p in closure(module)}
        assert not {f for f in files if f.startswith(("palbert/model/", "palbert/train/"))}, name
        assert not {f for f in files if f.startswith("palbert/tracking/")}, name


def test_dvc_yaml_names_the_files_of_palbert_paths():
    stages = stage_definitions()
    outs = {name: set(_paths(stage.get("outs", []))) for name, stage in stages.items()}
    assert str(paths.RAW) in outs["fetch"]
    assert f"{paths.PREPARED}/sst" in outs["prepare@sst"]
    assert {str(paths.DATA_REPORT), str(paths.LABEL_DISTRIBUTION)} <= outs["data_report"]
    assert {str(p) for p in (paths.BEST_MODEL, paths.TRAIN_SUMMARY, paths.TRAIN_PLOTS)} <= outs["train"]
    # scratch state, no out: `dvc exp apply` could not restore it; DVC leaves it for resuming
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


def test_the_encoder_pin_is_a_dependency_and_the_installed_version():
    """The embedded encoder's weights live in an installed package, so its version is what DVC must hash."""
    from importlib.metadata import version

    pin = next(line for line in (ROOT / ENCODER_PIN).read_text(encoding="utf-8").splitlines()
               if line and not line.startswith("#"))
    name, pinned = pin.split("==")
    assert version(name) == pinned, f"installed {name} {version(name)}, {ENCODER_PIN} pins {pinned}: bash scripts/setup.sh"
    assert f'"{pin}"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f"-r {ENCODER_PIN}" in (ROOT / "requirements-lock.txt").read_text(encoding="utf-8").splitlines()
    stages = stage_definitions()
    for name in ("train", *(n for n in stages if n.startswith("prepare@"))):
        assert ENCODER_PIN in _paths(stages[name]["deps"]), name
