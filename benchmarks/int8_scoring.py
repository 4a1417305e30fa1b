"""What ``palbert predict --precision int8`` buys and costs: dev rows scored per second and dev scores, against fp32.

Why: int8 is opt-in for scoring new text only, so a user choosing it needs both numbers side by side, measured on
the same trained model and the same dev rows in one process. The two precisions take turns every repetition, so
load from other users of a shared machine hits both alike; speed is the median over repetitions, scores come from
the first (they do not change between repetitions).

Run (after `dvc repro`, which writes models/best and data/prepared/):
    python benchmarks/int8_scoring.py [--model models/best] [--rows 2000] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from palbert.data.prepared import PreparedSplit, TokenizedTexts  # noqa: E402
from palbert.scoring import dev_metrics, load_eval_splits, predict_split  # noqa: E402
from palbert.paths import shown_path  # noqa: E402
from palbert.predict import Predictor  # noqa: E402

PRECISIONS = ("fp32", "int8")


def head(split: PreparedSplit, rows: int) -> PreparedSplit:
    """The first ``rows`` rows (all when 0): the same rows for both precisions."""
    if not rows or rows >= len(split):
        return split

    def cut(texts: TokenizedTexts | None) -> TokenizedTexts | None:
        return None if texts is None else TokenizedTexts.from_lists([texts.get(i) for i in range(rows)])

    return PreparedSplit(split.dataset, split.split, split.ids[:rows], cut(split.first), cut(split.second),
                         None if split.labels is None else split.labels[:rows])


def score_all(predictor: Predictor, splits: dict[str, PreparedSplit]) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    results = [predict_split(predictor.model, split, task, predictor.settings, progress=False)
               for task, split in splits.items()]
    return time.perf_counter() - start, dev_metrics(results)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "best", help="a trained model folder")
    parser.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared", help="prepared data folder")
    parser.add_argument("--rows", type=int, default=0, help="dev rows per task (0: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per precision")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = {task: head(split, args.rows) for task, split in load_eval_splits(args.prepared, "dev").items()}
    if not splits:
        parser.error(f"no dev splits in {args.prepared}: run `dvc repro` (or the prepare stages) first")
    predictors = {p: Predictor.load(args.model, precision=p, device="cpu") for p in PRECISIONS}
    rows = sum(len(split) for split in splits.values())
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    scores: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for precision in PRECISIONS[repeat % 2:] + PRECISIONS[:repeat % 2]:
            elapsed, metrics = score_all(predictors[precision], splits)
            seconds[precision].append(elapsed)
            scores.setdefault(precision, metrics)
    report = {
        "model": shown_path(args.model, ROOT), "rows": {task: len(split) for task, split in splits.items()},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "rows_per_s": {p: rows / statistics.median(s) for p, s in seconds.items()},
        "seconds": seconds, "dev": scores,
        "dev_change": {k: scores["int8"][k] - scores["fp32"][k] for k in scores["fp32"]},
    }
    speedup = report["rows_per_s"]["int8"] / report["rows_per_s"]["fp32"]
    print(f"{rows} dev rows, {report['threads']} thread(s), median of {args.repeats} passes")
    print(f"{'precision':<10}{'rows/s':>10}" + "".join(f"{k:>14}" for k in scores["fp32"]))
    for p in PRECISIONS:
        print(f"{p:<10}{report['rows_per_s'][p]:>10.1f}" + "".join(f"{v:>14.4f}" for v in scores[p].values()))
    print(f"{'int8-fp32':<10}{speedup:>9.2f}x" + "".join(f"{v:>+14.4f}" for v in report["dev_change"].values()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=lambda v: np.asarray(v).tolist()) + "\n")
    return report


if __name__ == "__main__":
    main()
