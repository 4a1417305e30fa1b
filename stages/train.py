"""DVC stage `train`: multi-task fine-tuning (under torchrun when more than one process is asked for)."""

from palbert import paths
from palbert.settings_guard import load_guarded
from palbert.stage import run_stage
from palbert.distributed import launch, needs_launch, shutdown_distributed
from palbert.train.loop import TrainPaths, train


def main() -> int:
    params, guard = load_guarded(paths.PARAMS)
    if needs_launch(params):
        return launch(params, "stages.train")
    try:
        train(params, TrainPaths(), guard=guard)
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    run_stage(main)
