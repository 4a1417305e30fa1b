"""The model registry: which runs become a version of the registered model, what a version says about itself,
and the ``champion`` alias that points at the best version by dev overall.

``models:/palbert/latest`` is whichever run finished last (a worse queued run included); serving
``models:/palbert@champion`` gets the best model measured so far. The alias moves only when a new version
beats the champion's ``dev.overall``. Only runs scored on the full dev splits register (``comparable_dev``):
a sample run's scores are on other rows, and a quick look is no candidate for serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
#: The version tag holding the dev score the champion is chosen by.
SCORE_TAG = "dev.overall"
#: Run tag -> version tag (``palbert.tracking.tags.run_tags`` and MLflow's run name).
_RUN_TAGS = {"mlflow.runName": "run_name", "mlflow.source.git.commit": "git_commit", "dvc_exp_name": "dvc_exp_name",
             "table3_id": "table3_id", "table3_row": "table3_row"}
MODEL_DESCRIPTION = ("PAL BERT multi-task model (sst: sentiment class 0..4, para: paraphrase 0/1, sts: similarity "
                     "0..5). Serve `models:/{name}@" + CHAMPION + "`: the version with the best dev overall; "
                     "each version's description is its model card.")


@dataclass(frozen=True)
class Registration:
    """A new version of the registered model ``name``: its dev scores, model card and tags."""

    name: str
    dev: Mapping[str, float]
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def version_tags(self) -> dict[str, str]:
        return {**{f"dev.{k}": f"{v:.6f}" for k, v in self.dev.items()}, **self.tags}


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
    """Register ``model_uri`` with its card and tags; move ``@champion`` to it when it beats the champion."""
    import mlflow

    version = mlflow.register_model(model_uri, registration.name, tags=registration.version_tags())
    client.update_model_version(registration.name, version.version, description=registration.description)
    model = client.get_registered_model(registration.name)
    if not model.description:
        client.update_registered_model(registration.name, description=MODEL_DESCRIPTION.format(name=registration.name))
    current = champion(client, registration.name)
    score = registration.dev.get("overall")
    best = _score(current) if current is not None else None
    if score is not None and (best is None or score > best):
        client.set_registered_model_alias(registration.name, CHAMPION, version.version)
        log.info("registered %s version %s (dev overall %.4f): now @%s%s", registration.name, version.version,
                 score, CHAMPION, f" (was version {current.version}, {best:.4f})" if best is not None else "")
    else:
        log.info("registered %s version %s (dev overall %s); @%s stays version %s (%.4f)", registration.name,
                 version.version, f"{score:.4f}" if score is not None else "?", CHAMPION,
                 current.version if current else "?", best if best is not None else float("nan"))
    return version


def run_tags_for_version(run_tags: Mapping[str, Any]) -> dict[str, str]:
    """The run's provenance tags worth repeating on its version (name, commit, DVC experiment, Table 3 row)."""
    return {new: str(run_tags[old]) for old, new in _RUN_TAGS.items() if run_tags.get(old)}
