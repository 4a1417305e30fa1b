"""DVC stage ``fetch``: raw CS224N and SNLI files into data/raw/ (mirror first, then download)."""

from palbert import paths
from palbert.data.sources import fetch
from palbert.settings_guard import load_guarded
from palbert.stage import run_stage


def main() -> int:
    params, guard = load_guarded(paths.PARAMS)
    report = fetch(params, paths.RAW)
    guard.check("at the end of the stage")
    print(f"fetch: {report.summary()}")
    return 0


if __name__ == "__main__":
    run_stage(main)
