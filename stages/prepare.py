"""DVC stage ``prepare@<dataset>``: validate, relabel and tokenize one dataset into data/prepared/<dataset>/."""

import sys

from palbert.data.prepare import prepare_stage
from palbert.stage import run_stage

if __name__ == "__main__":
    run_stage(prepare_stage, sys.argv[1:])
