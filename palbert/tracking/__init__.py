"""The MLflow side of a run (layer 5): ``store`` (which store, whether it answers, the local fallback), ``tags`` (what
a run says about itself: tags, params strings, parameter counts, dataset inputs) and ``tracker`` (the run itself,
``open_run`` -> ``Tracker``). The names callers use are re-exported here: ``from palbert.tracking import open_run``.
"""

from palbert.tracking.store import project_relative_uri, resolve_tracking_uri
from palbert.tracking.tags import (
    CONTEXT_TRAINING,
    CONTEXT_VALIDATION,
    TAG_DVC_EXP_BASELINE_REV,
    TAG_DVC_EXP_NAME,
    TAG_FALLBACK_FROM,
    TAG_GIT_COMMIT,
    TAG_RESUMED_FROM,
    TAG_SEED,
    TAG_TABLE3_ID,
    TAG_TABLE3_ROW,
    parameter_counts,
)
from palbert.tracking.tracker import MlflowTracker, NullTracker, Tracker, exit_status, open_run

__all__ = [
    "CONTEXT_TRAINING",
    "CONTEXT_VALIDATION",
    "TAG_DVC_EXP_BASELINE_REV",
    "TAG_DVC_EXP_NAME",
    "TAG_FALLBACK_FROM",
    "TAG_GIT_COMMIT",
    "TAG_RESUMED_FROM",
    "TAG_SEED",
    "TAG_TABLE3_ID",
    "TAG_TABLE3_ROW",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "exit_status",
    "open_run",
    "parameter_counts",
    "project_relative_uri",
    "resolve_tracking_uri",
]
