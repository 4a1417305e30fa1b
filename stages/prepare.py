"""DVC stage ``prepare@<dataset>``: validate, relabel and tokenize one dataset into data/prepared/<dataset>/."""

import sys
from pathlib import Path

from palbert.config import ParamsError, load_params
from palbert.data.prepare import prepare_dataset
from palbert.data.readers import DataError
from palbert.logs import setup_logging


def main(argv: list[str]) -> int:
    setup_logging()
    if len(argv) != 2:
        print("usage: python stages/prepare.py <dataset>", file=sys.stderr)
        return 2
    dataset = argv[1]
    try:
        stats = prepare_dataset(dataset, Path("data/raw"), Path("data/prepared"), load_params("params.yaml"))
    except (DataError, ParamsError) as exc:
        print(f"prepare@{dataset} failed: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{split} {s['rows']} rows" for split, s in stats.items()) or "absent (no raw files)"
    print(f"prepare@{dataset}: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
