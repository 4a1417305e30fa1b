"""DVC stage `evaluate`: dev scores of the trained model and predictions for every dev/test file present."""

from palbert.config import load_params
from palbert.evaluate import EvaluationPaths, evaluate_trained_model
from palbert.stage import run_stage


def main() -> int:
    evaluate_trained_model(load_params("params.yaml"), EvaluationPaths())
    return 0


if __name__ == "__main__":
    run_stage(main)
