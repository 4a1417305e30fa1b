"""What running a Table 3 run through Ray costs on one machine: the same tiny run as a Ray task and by hand.

Why: `palbert table3` runs every row x seed as a Ray task that checks out the driver's commit from a git bundle,
restores the prepared data from a per-node DVC cache and runs the pipeline's stages there. A user comparing it
with `dvc exp run` of the same overrides needs the seconds this adds per run, and once per table (Ray's start).

In a clone of HEAD it runs, taking turns, the same tiny run (row 0, real weights, ``--subset`` rows, a few steps)
as ``palbert table3 --jobs 1`` (one run per command: Ray's start included) and as ``dvc exp run -S ...`` with the
overrides and thread count the task sets, a new seed each repetition so that no cache answers. The first of each
is a warm-up (data prepared, caches filled) and is not counted. Medians over repetitions:
- ``table3 command``: the whole `palbert table3` command (Ray's start, the run, the table's rebuild);
- ``table3 task``: the task's own wall time as the command prints it (checkout, data, stages, record);
- ``dvc exp run``: the run by hand.

Run it alone on the machine (other work skews both):
    python benchmarks/table3_overhead.py [--repeats 3] [--steps 3] [--subset 64] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from palbert.params_file import TABLE3_FILE, load_table3  # noqa: E402
from palbert.table3.plan import committed_params, plan_runs  # noqa: E402

ROW = "0"


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} … failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return wall, done.stdout + done.stderr


def _table3(project: Path, env: dict[str, str], seed: int, args: argparse.Namespace) -> tuple[float, float]:
    command = [sys.executable, "-m", "palbert.cli", "table3", "--rows", ROW, "--seeds", str(seed),
               "--epochs", "1", "--steps-per-epoch", str(args.steps), "--subset", str(args.subset),
               "--table-id", f"overhead-s{seed}", "--cpus-per-run", str(args.threads), "--resamples", "50",
               "--node-cache", str(project.parent / "node-cache")]
    wall, out = _timed(command, project, env)
    task = re.search(r"finished on \S+, dev overall \S+ \((\d+) s\)", out)
    if not task:
        raise SystemExit(f"no 'finished' line in the table3 output:\n{out[-3000:]}")
    return wall, float(task.group(1))


def _by_hand(project: Path, env: dict[str, str], seed: int, args: argparse.Namespace) -> float:
    params = load_table3(project / TABLE3_FILE, committed_params(project))
    scale = {"train.epochs": 1, "train.steps_per_epoch": args.steps, "data.subset": args.subset}
    (run,) = plan_runs(params, [row for row in params.table3.rows if row.id == ROW], [seed], "by-hand", scale)
    command = [*run.exp_run_command(), "-S", f"train.threads={args.threads}"]
    command[command.index("--name") + 1] = f"by-hand-s{seed}"
    wall, _ = _timed(command, project, env)
    return wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="counted repetitions of each path (default: 3)")
    parser.add_argument("--steps", type=int, default=3, help="training steps of the tiny run (default: 3)")
    parser.add_argument("--subset", type=int, default=64, help="rows of every split (default: 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPUs and intra-op threads of the run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT")}
    env.update(RAY_USAGE_STATS_ENABLED="0", DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    times: dict[str, list[float]] = {"table3 command": [], "table3 task": [], "dvc exp run": []}
    with tempfile.TemporaryDirectory(prefix="table3-overhead-") as tmp:
        project = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
        for repetition in range(args.repeats + 1):
            seed = 100 + repetition
            command, task = _table3(project, env, seed, args)
            hand = _by_hand(project, env, seed, args)
            print(f"{'warm-up' if repetition == 0 else f'repetition {repetition}'}: table3 command {command:.1f} s "
                  f"(task {task:.0f} s), dvc exp run {hand:.1f} s", flush=True)
            if repetition:
                times["table3 command"].append(command)
                times["table3 task"].append(task)
                times["dvc exp run"].append(hand)
    median = {name: statistics.median(values) for name, values in times.items()}
    report = {"repeats": args.repeats, "steps": args.steps, "subset": args.subset, "threads": args.threads,
              "seconds": times, "median_s": median,
              "overhead_per_table3_command_s": median["table3 command"] - median["dvc exp run"],
              "overhead_per_run_in_a_table_s": median["table3 task"] - median["dvc exp run"]}
    print(f"median: table3 command {median['table3 command']:.1f} s, its task {median['table3 task']:.0f} s, "
          f"dvc exp run {median['dvc exp run']:.1f} s")
    print(f"overhead: {report['overhead_per_table3_command_s']:+.1f} s per table3 command (Ray's start once per "
          f"table), {report['overhead_per_run_in_a_table_s']:+.0f} s per run inside a table (the task's checkout, "
          f"data restore and record)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
