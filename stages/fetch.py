"""DVC stage ``fetch``: raw CS224N and SNLI files into data/raw/ (mirror first, then download)."""

import sys
from pathlib import Path

from palbert.config import ParamsError, load_params
from palbert.data.readers import DataError
from palbert.data.sources import fetch
from palbert.logs import setup_logging


def main() -> int:
    setup_logging()
    try:
        report = fetch(load_params("params.yaml"), Path("data/raw"))
    except (DataError, ParamsError) as exc:
        print(f"fetch failed: {exc}", file=sys.stderr)
        return 1
    print(f"fetch: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
