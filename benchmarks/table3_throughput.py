"""Two Table 3 runs at once on one machine: one ``palbert table3 --jobs 2`` against two clones running one each.

Why: the local executor replaces the hand-made "lanes" (two clones of the project, each running its own
``palbert table3``, the way two cores were used before it); it should train at least as fast. Both ways run the same
two runs (rows ``--rows``, real weights, ``--subset`` rows of each split, one epoch of ``--steps`` steps, one CPU and
one intra-op thread each) from the same commit into the same node cache (data prepared once, by a warm-up
``--jobs 2`` command that is not counted); each repetition takes turns and uses new seeds, so that no record is
kept.
Printed: the wall time of each way (first start to last end) and the runs per hour it makes.

Run it alone on the machine (other work skews both):
    python benchmarks/table3_throughput.py [--repeats 2] [--steps 60] [--subset 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _command(args: argparse.Namespace, node_cache: Path, rows: str, seed: int, table_id: str, jobs: int) -> list[str]:
    return [sys.executable, "-m", "palbert.cli", "table3", "--rows", rows, "--seeds", str(seed), "--epochs", "1",
            "--steps-per-epoch", str(args.steps), "--subset", str(args.subset), "--scale", "reduced",
            "--table-id", table_id, "--jobs", str(jobs), "--cpus-per-run", "1", "--resamples", "50",
            "--node-cache", str(node_cache)]


def _wait_all(started: list[tuple[subprocess.Popen, list[str]]]) -> None:
    for process, command in started:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command[2:8])} … failed (exit {process.returncode}):\n{out[-3000:]}")


def _run_together(commands: list[tuple[list[str], Path]], env: dict[str, str]) -> float:
    """Start every command at once; seconds until the last one ends."""
    began = time.monotonic()
    started = [(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True), command) for command, cwd in commands]
    _wait_all(started)
    return time.monotonic() - began


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="counted repetitions of each way (default: 2)")
    parser.add_argument("--rows", default="BP1,3", help="the two rows (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=400, help="rows of every split (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    if len(rows) != 2:
        raise SystemExit("--rows: give two rows")

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT")}
    env.update(RAY_USAGE_STATS_ENABLED="0", DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    walls: dict[str, list[float]] = {"one command, --jobs 2": [], "two clones, one run each": []}
    with tempfile.TemporaryDirectory(prefix="table3-throughput-") as tmp:
        lanes = [Path(tmp) / f"clone{i}" for i in (1, 2)]
        for lane in lanes:
            subprocess.run(["git", "clone", "-q", str(ROOT), str(lane)], check=True)
        node_cache = Path(tmp) / "node-cache"
        warm = _run_together([(_command(args, node_cache, args.rows, 199, "warm-up", 2), lanes[0])], env)
        print(f"warm-up (--jobs 2, data prepared): {warm:.1f} s", flush=True)
        for repetition in range(1, args.repeats + 1):
            seed = 200 + repetition
            jobs = _run_together([(_command(args, node_cache, args.rows, seed, f"jobs2-s{seed}", 2), lanes[0])], env)
            two = _run_together([(_command(args, node_cache, row, seed, f"lane-s{seed}", 1), lane)
                                 for row, lane in zip(rows, lanes)], env)
            print(f"repetition {repetition}: --jobs 2 {jobs:.1f} s, two clones {two:.1f} s", flush=True)
            walls["one command, --jobs 2"].append(jobs)
            walls["two clones, one run each"].append(two)
    median = {name: statistics.median(values) for name, values in walls.items()}
    runs_per_hour = {name: 2 * 3600 / wall for name, wall in median.items()}
    report = {"repeats": args.repeats, "rows": rows, "steps": args.steps, "subset": args.subset,
              "seconds": walls, "median_s": median, "runs_per_hour": runs_per_hour,
              "jobs2_over_clones": runs_per_hour["one command, --jobs 2"] / runs_per_hour["two clones, one run each"]}
    for name in walls:
        print(f"median {name}: {median[name]:.1f} s for 2 runs, {runs_per_hour[name]:.1f} runs/h")
    print(f"--jobs 2 makes {report['jobs2_over_clones']:.3f}x the runs per hour of two clones")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
