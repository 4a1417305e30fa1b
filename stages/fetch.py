"""DVC stage ``fetch``: raw CS224N and SNLI files into data/raw/ (mirror first, then download)."""

from palbert import paths
from palbert.config import load_params
from palbert.data.sources import fetch
from palbert.stage import run_stage


def main() -> int:
    report = fetch(load_params(paths.PARAMS), paths.RAW)
    print(f"fetch: {report.summary()}")
    return 0


if __name__ == "__main__":
    run_stage(main)
