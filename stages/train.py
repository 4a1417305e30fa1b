"""DVC stage ``train``: multi-task fine-tuning (under torchrun when more than one process is asked for)."""

import sys

from palbert.train.loop import train_stage
from palbert.stage import run_stage

if __name__ == "__main__":
    run_stage(train_stage, sys.argv[1:])
