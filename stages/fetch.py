"""DVC stage ``fetch``: raw CS224N and SNLI files into data/raw/ (mirror first, then download)."""

import sys

from palbert.data.sources import fetch_stage
from palbert.stage import run_stage

if __name__ == "__main__":
    run_stage(fetch_stage, sys.argv[1:])
