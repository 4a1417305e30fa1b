"""The layers of palbert: a module imports only from its own layer or the ones below (docs/ARCHITECTURE.md).

Imports inside functions count too: a lazy import is still a dependency. A new module must be given a
layer here, which is the moment to decide where it belongs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_dvc_stages import ROOT, imported_modules, module_file

#: Lowest first. Same-layer imports are allowed.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 foundation: no palbert imports
    ("palbert", "palbert.errors", "palbert.paths", "palbert.atomic", "palbert.logs", "palbert.tasks",
     "palbert.precision", "palbert.stop_signals"),
    # 1 settings: params, where the pretrained BERT comes from, what machine this is
    ("palbert.encoder_source", "palbert.validation", "palbert.config", "palbert.params_file", "palbert.machine",
     "palbert.settings_guard"),
    # 2 data, metrics, the process runtime
    ("palbert.data", "palbert.data.prepared", "palbert.data.readers", "palbert.data.sources", "palbert.data.prepare",
     "palbert.data.report", "palbert.data.batching", "palbert.metrics", "palbert.distributed"),
    # 3 the model, scoring a model, figures of a run
    ("palbert.model", "palbert.model.attention", "palbert.model.pal", "palbert.model.encoder", "palbert.model.heads",
     "palbert.model.pretrained_weights", "palbert.model.multitask", "palbert.model.io", "palbert.scoring", "palbert.plots",
     "palbert.quantize", "palbert.cosine_blend"),
    # 4 a trained model on new text, as the CLI and as an MLflow Model
    ("palbert.predict", "palbert.mlflow_model", "palbert.pyfunc_script", "palbert.model_card", "palbert.registry"),
    # 5 experiment tracking: the store, what a run says about itself, the run
    ("palbert.tracking", "palbert.tracking.store", "palbert.tracking.tags", "palbert.tracking.tracker"),
    # 6 training, evaluating a trained run (the stages' recipes), the Table 3 runner, the stage runner
    ("palbert.evaluate_stage", "palbert.train", "palbert.train.streams", "palbert.train.schedule", "palbert.train.sampling",
     "palbert.train.losses", "palbert.train.checkpoint", "palbert.train.divergence", "palbert.train.run", "palbert.train.loop",
     "palbert.train.averaging",
     "palbert.table3", "palbert.table3.plan", "palbert.table3.records", "palbert.table3.task",
     "palbert.table3.executor", "palbert.table3.report", "palbert.table3.verdicts", "palbert.table3.figures",
     "palbert.table3.runner", "palbert.stage"),
    # 7 the command line
    ("palbert.cli",),
)
LAYER = {module: level for level, modules in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def palbert_imports(path: Path) -> set[str]:
    """The palbert modules ``path`` imports (``from palbert.x import y`` is module x unless y is a module)."""
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] != "palbert":
            continue
        for end in range(len(parts), 0, -1):
            target = module_file(".".join(parts[:end]))
            if target is not None:
                found.add(module_name(target))
                break
    return found - {module_name(path)}


MODULES = sorted(ROOT.joinpath("palbert").rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted(module_name(path) for path in MODULES if module_name(path) not in LAYER)
    assert not missing, f"give these modules a layer in tests/test_layers.py: {', '.join(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_import_from_a_layer_above(path):
    mine = LAYER[module_name(path)]
    upward = sorted(f"{target} (layer {LAYER[target]})" for target in palbert_imports(path)
                    if target in LAYER and LAYER[target] > mine and target != "palbert")
    assert not upward, f"{module_name(path)} (layer {mine}) imports from above: {', '.join(upward)}"
