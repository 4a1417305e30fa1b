"""What an MLflow run says about itself: tags (commit, DVC experiment, Table 3 row, seed), its params as MLflow
strings, the model's parameter counts and the prepared splits it read (dataset inputs).

Plain strings and MLflow entities, no store: ``palbert.tracking.tracker`` sends them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from palbert.config import Params
from palbert.metrics import DEV_METRICS
from palbert.registry import champion_bar_reason, comparable_dev

if TYPE_CHECKING:
    from palbert.data.prepared import PreparedSplit

log = logging.getLogger("palbert.tracking")

#: Tag names other parts of palbert (Table 3, the README's UI queries) rely on.
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_DVC_EXP_NAME = "dvc_exp_name"
TAG_DVC_EXP_BASELINE_REV = "dvc_exp_baseline_rev"
TAG_TABLE3_ID = "table3_id"
TAG_TABLE3_ROW = "table3_row"
TAG_TABLE3_RUN = "table3_run"
TAG_SEED = "seed"
#: Extra tags (a JSON object) for the runs of this process: a Table 3 task's run name, node and attempt.
RUN_TAGS_ENV = "PALBERT_RUN_TAGS"
TAG_FALLBACK_FROM = "palbert.fallback_from"
TAG_RESUMED_FROM = "palbert.resumed_from"
#: MLflow's run description (the run page's Description box and the runs table's tooltip).
TAG_NOTE = "mlflow.note.content"

#: Param-name prefix of the model's parameter counts (``MultitaskBert.parameter_report``).
PARAMETER_COUNT_PREFIX = "parameters."
#: Run name of a run outside any DVC experiment (a plain ``dvc repro``): DVC calls it the workspace.
WORKSPACE_RUN_NAME = "workspace"
#: ``mlflow.data.context`` input tag values (MLflow's own key), as in ``mlflow.log_input(..., context=)``.
CONTEXT_TRAINING = "training"
CONTEXT_VALIDATION = "validation"

#: MLflow refuses longer param values.
PARAM_VALUE_LIMIT = 6000


def param_strings(params: Params) -> dict[str, str]:
    """``params.flat()`` as MLflow param strings: lists and mappings as JSON, capped at 6000 chars."""
    out: dict[str, str] = {}
    for key, value in params.flat().items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        if len(text) > PARAM_VALUE_LIMIT:
            log.warning("param %s is %d chars long; MLflow keeps %d", key, len(text), PARAM_VALUE_LIMIT)
            text = text[: PARAM_VALUE_LIMIT - 3] + "..."
        out[key] = text
    return out


def git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def run_tags(params: Params, project_root: Path) -> dict[str, str]:
    """Tags that say where a run came from: commit, DVC experiment, Table 3 row, seed."""
    tags = {TAG_SEED: str(params.train.seed)}
    # The working folder's HEAD: in a DVC temp workspace that is the experiment's baseline commit.
    commit = git_commit(Path.cwd()) or git_commit(project_root)
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    for env, tag in (("DVC_EXP_NAME", TAG_DVC_EXP_NAME), ("DVC_EXP_BASELINE_REV", TAG_DVC_EXP_BASELINE_REV)):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if params.tracking.table3_id:
        tags[TAG_TABLE3_ID] = params.tracking.table3_id
    if params.tracking.table3_row:
        tags[TAG_TABLE3_ROW] = params.tracking.table3_row
    tags[TAG_NOTE] = run_description(params)
    extra = os.environ.get(RUN_TAGS_ENV, "")
    if extra:  # set by a Table 3 task: its run name, node and attempt
        try:
            tags.update({str(key): str(value) for key, value in json.loads(extra).items()})
        except (ValueError, AttributeError):
            log.warning("$%s is not a JSON object of tags: ignored", RUN_TAGS_ENV)
    return tags


def run_description(params: Params) -> str:
    """What the run is, in words (MLflow's run description): the recipe, the budget, the data, where its
    dev scores are and whether it may be registered and served."""
    model, train, data = params.model, params.train, params.data
    recipe = ", ".join([
        f"PALs {model.pal_size} wide" if model.pals else "no PALs", f"{train.sampling} sampling",
        "SimCSE" if train.simcse else "no SimCSE", f"{train.schedule} lr {train.lr:g}",
        *([f"extra data {'+'.join(data.extra)}"] if data.extra else []),
        *(["relational layer"] if model.relational_layer else []), f"seed {train.seed}"])
    epochs = f"{train.epochs} epoch" if train.epochs == 1 else f"{train.epochs} epochs"
    whole_passes = train.sampling in ("sequential", "round_robin") and not train.cap_passes
    steps = None if whole_passes else train.epochs * train.steps_per_epoch
    what = (f"Table 3 row {params.tracking.table3_row} ({params.tracking.table3_id})"
            if params.tracking.table3_row else "palbert training run")
    budget = f"{epochs} of whole passes" if whole_passes else f"{epochs} of {train.steps_per_epoch} steps"
    lines = [f"**{what}**: {recipe}; {budget}, batch {train.batch_size}, "
             f"on {'the full data' if comparable_dev(params) else f'a sample (data.subset={data.subset}, data.dev_subset={data.dev_subset})'}.",
             "",
             f"Dev scores: {', '.join(f'`{name}`' for name in DEV_METRICS)} (the keys of metrics/dev.json): one value "
             "per epoch, then the kept model's at the last step."]
    reason = champion_bar_reason(params, steps) if steps is not None else None
    if not comparable_dev(params):
        lines += ["", "Not registered: scored on a sample of dev, not comparable with full runs."]
    elif reason:
        lines += ["", f"Registered, never @champion: {reason}."]
    return "\n".join(lines)


def default_run_name(tags: Mapping[str, str]) -> str:
    """The DVC experiment's name, else ``workspace@<commit>``: what ``dvc exp show`` calls a plain
    ``dvc repro`` run (the workspace, on top of that commit), instead of a random MLflow name."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    if tags.get(TAG_TABLE3_RUN):
        return tags[TAG_TABLE3_RUN]
    commit = tags.get(TAG_GIT_COMMIT)
    return f"{WORKSPACE_RUN_NAME}@{commit[:7]}" if commit else WORKSPACE_RUN_NAME


def parameter_counts(report: Mapping[str, Any]) -> dict[str, str]:
    """``MultitaskBert.parameter_report()`` as params ``parameters.<name>`` (nested names joined by dots).

    Facts about the model, not time series: logged as metrics they made one chart panel each and took
    over the compare view's parallel-coordinates plot.
    """
    out: dict[str, str] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                add(f"{name}.{key}", inner)
        else:
            out[PARAMETER_COUNT_PREFIX + name] = f"{value:.2f}" if isinstance(value, float) else str(value)

    for key, value in report.items():
        add(key, value)
    return out


def _file_md5(path: Path) -> str:
    """The file's md5, as DVC computes it, so ``md5sum`` or ``dvc.lock`` can be compared with the run."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_input(split: "PreparedSplit", prepared_root: Path, context: str) -> Any:
    """One prepared split as an MLflow ``DatasetInput`` (what ``mlflow.log_input`` logs): name
    ``<dataset>-<split>``, the prepared file as source, its md5 as digest and the rows used as profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from palbert.data.prepared import split_path

    path = split_path(prepared_root, split.dataset, split.split)
    dataset = Dataset(
        name=f"{split.dataset}-{split.split}",
        digest=_file_md5(path),
        source_type="local",
        source=json.dumps({"uri": str(path)}),
        profile=json.dumps({"num_rows": len(split)}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """MLflow's usual source/user tags (what ``mlflow.start_run`` adds), ours winning."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {**resolve_tags({}), **tags}
    except Exception:  # an internal MLflow helper: its absence must not stop a run
        log.debug("MLflow context tags unavailable", exc_info=True)
        return tags
