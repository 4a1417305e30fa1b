"""DVC stage ``evaluate``: dev scores of the best model, predictions, the MLflow Model in the training's run."""

import sys

from palbert.evaluate_stage import evaluate_stage
from palbert.stage import run_stage

if __name__ == "__main__":
    run_stage(evaluate_stage, sys.argv[1:])
