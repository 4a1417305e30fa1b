"""DVC stage ``prepare@<dataset>``: validate, relabel and tokenize one dataset into data/prepared/<dataset>/."""

import sys

from palbert import paths
from palbert.data.prepare import prepare_dataset
from palbert.settings_guard import load_guarded
from palbert.stage import run_stage


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m stages.prepare <dataset>", file=sys.stderr)
        return 2
    dataset = sys.argv[1]
    params, guard = load_guarded(paths.PARAMS)
    stats = prepare_dataset(dataset, paths.RAW, paths.PREPARED, params)
    guard.check("at the end of the stage")
    rows = ", ".join(f"{split} {s['rows']} rows" for split, s in stats.items()) or "absent (no raw files)"
    print(f"prepare@{dataset}: {rows}")
    return 0


if __name__ == "__main__":
    run_stage(main)
