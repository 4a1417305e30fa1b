"""The model registry: which runs become a version of the registered model, what a version says about itself,
which version may be served as ``@champion``, and how ``palbert serve`` finds what to serve.

Only runs scored on the full dev splits register (``comparable_dev``): a sample run's scores are on other rows,
and a quick look is no candidate for serving. A registered version may become ``@champion`` only when it
passes the bar (``champion_bar``): the full data, at least the default training budget (``train.epochs`` x
``train.steps_per_epoch`` of ``TrainParams``' defaults) and a dev ``overall`` above the majority baseline of the
same dev labels; the alias then moves only when it beats the champion's ``overall``. ``models:/palbert/latest``
is whichever run finished last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from palbert.metrics import overall as overall_score
from palbert.tasks import TASK_SPECS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from palbert.config import Params

log = logging.getLogger(__name__)

CHAMPION = "champion"
#: The version tag holding the dev score the champion is chosen by: ``metrics/dev.json``'s and the run's name.
SCORE_TAG = "overall"
#: The version tag that says why a version may not become ``@champion`` (absent: it may).
NOT_CHAMPION_TAG = "not_champion"
#: Run tag -> version tag: the run's name (its DVC experiment) and commit, to find and rebuild it.
_RUN_TAGS = {"mlflow.runName": "run_name", "mlflow.source.git.commit": "git_commit"}
MODEL_DESCRIPTION = ("PAL BERT multi-task model (sst: sentiment class 0..4, para: paraphrase 0/1, sts: similarity "
                     "0..5). `palbert serve` serves `models:/{name}@" + CHAMPION + "`: the version with the best dev "
                     "overall among those trained on the full data with at least the default budget and above the "
                     "majority baseline; each version's description is its model card.")


class NotServable(ValueError):
    """What ``palbert serve`` was asked for is not in the registry; the message says why and what to run."""


def comparable_dev(params: "Params") -> bool:
    """Whether the dev scores are on the full dev splits (a subset run's scores are on fewer, other rows)."""
    return params.data.subset == 0 and params.data.dev_subset == 0


def default_budget() -> tuple[int, int]:
    """``(train.epochs, train.steps_per_epoch)`` of ``TrainParams``' defaults (params.yaml's as shipped)."""
    from palbert.config import TrainParams

    defaults = TrainParams()
    return defaults.epochs, defaults.steps_per_epoch


def champion_bar_reason(params: "Params", steps: int | None) -> str | None:
    """Why a run of ``steps`` training steps may not become ``@champion`` from its settings alone, or None."""
    if not comparable_dev(params):
        return (f"trained and scored on a sample (data.subset={params.data.subset}, "
                f"data.dev_subset={params.data.dev_subset}) and {_epochs(params.train.epochs)}")
    epochs, per_epoch = default_budget()
    if steps is None or steps < epochs * per_epoch:
        return (f"{steps if steps is not None else 'an unknown number of'} training steps "
                f"({_epochs(params.train.epochs)}), below the default budget of {epochs * per_epoch} "
                f"({epochs} x {per_epoch})")
    return None


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def majority_baseline(labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The dev metrics of always predicting the most frequent label, per task, and their ``overall``.

    A score task's constant prediction has Pearson r 0 (``palbert.metrics.pearson`` reports r = 0 there).
    """
    scores = {}
    for task, values in labels.items():
        spec = TASK_SPECS[task]
        values = np.asarray(values)
        scores[spec.metric] = float(np.bincount(values.astype(np.int64)).max() / len(values)) if spec.classes else 0.0
    return {**scores, "overall": float(overall_score(scores))}


def champion_bar(params: "Params", steps: int | None, dev: Mapping[str, float],
                 labels: Mapping[str, np.ndarray]) -> str | None:
    """Why this run's model may not become ``@champion`` (settings, budget, or no better than the majority
    baseline of the dev ``labels`` per task), or None when it may."""
    reason = champion_bar_reason(params, steps)
    if reason is None and labels and "overall" in dev:
        baseline = majority_baseline(labels)["overall"]
        if not dev["overall"] > baseline:
            reason = f"dev overall {dev['overall']:.4f} is not above the majority baseline's {baseline:.4f}"
    return reason


@dataclass(frozen=True)
class Registration:
    """A new version of the registered model ``name``: its dev scores, model card and tags, and why it may
    not become ``@champion`` (``not_champion``; None: it may)."""

    name: str
    dev: Mapping[str, float]
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    not_champion: str | None = None

    def version_tags(self) -> dict[str, str]:
        tags = {**{k: f"{v:.6f}" for k, v in self.dev.items()}, **self.tags}
        if self.not_champion:
            tags[NOT_CHAMPION_TAG] = self.not_champion
        return tags


def _score(version: "ModelVersion") -> float | None:
    try:
        return float(version.tags[SCORE_TAG])
    except (KeyError, TypeError, ValueError):
        return None


def champion(client: "MlflowClient", name: str) -> "ModelVersion | None":
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such alias (or model) yet
        return None


def register(client: "MlflowClient", model_uri: str, registration: Registration) -> "ModelVersion":
    """Register ``model_uri`` with its card and tags; move ``@champion`` to it when it passes the bar and
    beats the champion."""
    import mlflow

    version = mlflow.register_model(model_uri, registration.name, tags=registration.version_tags())
    client.update_model_version(registration.name, version.version, description=registration.description)
    model = client.get_registered_model(registration.name)
    if not model.description:
        client.update_registered_model(registration.name, description=MODEL_DESCRIPTION.format(name=registration.name))
    current = champion(client, registration.name)
    score = registration.dev.get("overall")
    best = _score(current) if current is not None else None
    stays = f"@{CHAMPION} stays " + (f"version {current.version} ({best:.4f})" if current and best is not None
                                     else "unset")
    if registration.not_champion:
        log.info("registered %s version %s, not a @%s candidate: %s; %s", registration.name, version.version,
                 CHAMPION, registration.not_champion, stays)
    elif score is not None and (best is None or score > best):
        client.set_registered_model_alias(registration.name, CHAMPION, version.version)
        log.info("registered %s version %s (dev overall %.4f): now @%s%s", registration.name, version.version,
                 score, CHAMPION, f" (was version {current.version}, {best:.4f})" if best is not None else "")
    else:
        log.info("registered %s version %s (dev overall %s); %s", registration.name, version.version,
                 f"{score:.4f}" if score is not None else "?", stays)
    return version


def run_tags_for_version(run_tags: Mapping[str, Any]) -> dict[str, str]:
    """The run's provenance tags worth repeating on its version (its name, its commit)."""
    return {new: str(run_tags[old]) for old, new in _RUN_TAGS.items() if run_tags.get(old)}


def servable_uri(client: "MlflowClient", name: str, model: str | None, where: str) -> str:
    """``model`` as given, else ``models:/<name>@champion`` when that alias is set; else ``NotServable`` with
    one line that says why (no version, or none passed the bar) and what to run."""
    if model:
        return model
    if champion(client, name) is not None:
        return f"models:/{name}@{CHAMPION}"
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    epochs, per_epoch = default_budget()
    bar = (f"a run becomes @{CHAMPION} with the full data (data.subset: 0, data.dev_subset: 0), at least "
           f"{epochs} x {per_epoch} training steps and a dev overall above the majority baseline")
    fix = "train one (`dvc exp run`) or serve one run's model: palbert serve --model runs:/<run id>/model"
    if not versions:
        raise NotServable(f"model '{name}' has no registered version in {where} (quick-look and sample runs are "
                          f"not registered): {bar}; {fix}")
    newest = max(versions, key=lambda v: int(v.version))
    why = newest.tags.get(NOT_CHAMPION_TAG, "no score")
    raise NotServable(f"none of the {len(versions)} version(s) of model '{name}' in {where} is @{CHAMPION} "
                      f"(version {newest.version}: {why}): {bar}; {fix}")
