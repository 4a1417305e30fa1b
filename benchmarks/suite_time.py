"""How long CI's test suite takes on this machine: `.ci/run` on a fresh clone of HEAD, alone, timed.

It clones the repository's HEAD into a temporary folder with ``shared/`` beside it (a link to this checkout's
``../shared``, as CI lays it), runs ``CI=true bash .ci/run`` with pytest-xdist's ``-n WORKERS`` and a junit file,
reads the kernel's CPU time counters (``/proc/stat``) every 5 s meanwhile, and prints CI's wall time, pytest's,
the tests' own times summed per file, and the CPU's idle share while pytest ran (how much a further xdist
worker could find to use). Run it with nothing else on the machine:

    python benchmarks/suite_time.py [--workers 2] [--out docs/results/test-suite-xdist-<kind>.txt]

``--pytest-args`` adds to pytest's command line (e.g. ``-k docs`` for a quick look at the plumbing).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_S = 5.0


def cpu_kind() -> str:
    """The CPU's model name and the instruction sets that decide palbert's precision and speed."""
    text = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else (
        "AVX512, no BF16" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2")
    return f"{os.cpu_count()}-core {model}, {isa}"


class CpuSampler(threading.Thread):
    """(time, idle jiffies, total jiffies) of the whole machine over each ``SAMPLE_S`` interval."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int]] = []
        self._done = threading.Event()

    @staticmethod
    def _read() -> list[int]:
        return [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]

    def run(self) -> None:
        before = self._read()
        while not self._done.wait(SAMPLE_S):
            now = self._read()
            delta = [a - b for a, b in zip(now, before)]
            # idle and iowait (fields 4 and 5 of the cpu line) against all of user .. steal
            self.samples.append((time.time(), delta[3] + delta[4], sum(delta[:8])))
            before = now

    def stop(self) -> None:
        self._done.set()
        self.join()

    def idle_share(self, begin: float, end: float) -> float | None:
        inside = [(idle, total) for when, idle, total in self.samples if begin < when <= end + SAMPLE_S]
        total = sum(t for _, t in inside)
        return sum(i for i, _ in inside) / total if total else None


def junit_summary(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    per_file: collections.Counter[str] = collections.Counter()
    for case in suite.iter("testcase"):
        per_file[case.get("classname", "").rsplit(".", 1)[-1] or "?"] += float(case.get("time", 0))
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    begin = datetime.fromisoformat(suite.get("timestamp")).timestamp()
    return {"pytest_s": float(suite.get("time")), "begin": begin, "per_file": per_file, **counts}


def slowest_tests(output: str) -> list[str]:
    """pytest's own list of the slowest tests (``--durations``, which .ci/run asks for), from CI's output."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip() or lines[i].startswith("=")),
               len(lines))
    return lines[start:end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (-n), as CI's 2 cores")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. '-k docs'")
    parser.add_argument("--out", type=Path, help="also write the report (and pytest's slowest tests) here")
    args = parser.parse_args()
    shared = (REPO.parent / "shared").resolve()
    if not (shared / "data").is_dir():
        sys.exit(f"{shared / 'data'}: no data mirror beside the repository (CI lays shared/ there)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="palbert-suite-") as tmp:
        root = Path(tmp)
        (root / "shared").symlink_to(shared, target_is_directory=True)
        subprocess.run(["git", "clone", "-q", str(REPO), str(root / "palbert")], check=True)
        junit = root / "junit.xml"
        env = {**os.environ, "CI": "true",
               "PYTEST_ADDOPTS": f"-n {args.workers} --junitxml={junit} {args.pytest_args}".strip()}
        env.pop("PALBERT_DATA_MIRROR", None)  # .ci/run finds ../shared/data, as in CI
        env.pop("VIRTUAL_ENV", None)
        sampler = CpuSampler()
        sampler.start()
        start = time.time()
        with open(root / "ci.log", "w") as log:
            rc = subprocess.run(["bash", ".ci/run"], cwd=root / "palbert", env=env, stdout=log,
                                stderr=subprocess.STDOUT).returncode
        ci_s = time.time() - start
        sampler.stop()
        output = (root / "ci.log").read_text(errors="replace")
        if not junit.is_file():
            sys.exit(f".ci/run exited {rc} before pytest wrote its junit file; its last lines:\n{output[-3000:]}")
        summary = junit_summary(junit)
    idle = sampler.idle_share(summary["begin"], summary["begin"] + summary["pytest_s"])
    passed = summary["tests"] - summary["failures"] - summary["errors"] - summary["skipped"]
    lines = [
        f"# python benchmarks/suite_time.py --workers {args.workers}"
        + (f" --pytest-args {shlex.quote(args.pytest_args)}" if args.pytest_args else ""),
        f"# at {commit} on a {cpu_kind()}, {datetime.now():%Y-%m-%d}: .ci/run exited {rc}",
        f"CI {ci_s:.0f} s (setup.sh, Debian packages where missing, pytest); pytest {summary['pytest_s']:.1f} s "
        f"({summary['pytest_s'] / 60:.1f} min) on {args.workers} workers: {passed} passed, {summary['failures']} "
        f"failed, {summary['errors']} errors, {summary['skipped']} skipped",
        f"the tests' own times add up to {sum(summary['per_file'].values()):.0f} s; the CPU was idle "
        + (f"{idle:.1%}" if idle is not None else "(not sampled)") + " of pytest's time",
        "per file (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in summary["per_file"].most_common(12)),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join([*lines, "", *slowest_tests(output)]) + "\n")
        print(f"wrote {args.out}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
