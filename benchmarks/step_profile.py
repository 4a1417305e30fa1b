"""Where a training step's time goes, and a scoring pass's: a per-op profile against the matmul ceiling.

Why: ``speed.py`` gives a whole step's rate as a fraction of the machine's plain matmul peak; where that fraction
is low, this profile says why, by splitting the step. Every aten operator's own (self) time
is put in one category (matrix products, fused attention, layer norm, activation and dropout, other
elementwise and copies, the optimizer, embeddings), the time outside any operator (Python, the autograd
engine, the profiler itself) is what is left of the wall time, and the matrix products' own rate is set
beside two ceilings: the same shapes timed alone as plain ``torch.mm`` calls, and the plain 2048^3 matmul
``speed.py`` divides by. Together they bound what any amount of work on the non-matmul ops could give:
``bound`` is the fraction of the 2048^3 peak a step would reach if everything but its matrix products took
no time and those ran at their shapes' ceiling.

The batches, weights and setup are ``speed.py``'s (the same rows of the mirror's files, palbert's own
``train_step`` and ``predict_split``), so the two benchmarks describe the same work.

Run:  OMP_WAIT_POLICY=PASSIVE python benchmarks/step_profile.py [--threads 1] [--steps 30] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py, the sibling benchmark

import speed  # noqa: E402

from palbert.params_file import load_params  # noqa: E402
from palbert.data.batching import SpecialTokens  # noqa: E402
from palbert.model import load_tokenizer  # noqa: E402
from palbert.model.attention import set_fused_qkv  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
#: (category, test on the aten op name), first match wins; ops that match none are "other elementwise and copies".
CATEGORY_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("matrix products", lambda name: name in MATMUL_OPS),
    ("fused attention", lambda name: "scaled_dot_product" in name or "flash_attention" in name),
    ("layer norm", lambda name: "layer_norm" in name),
    ("activation and dropout", lambda name: any(k in name for k in ("gelu", "dropout", "tanh", "softmax"))),
    ("optimizer", lambda name: "adam" in name),
    ("embeddings", lambda name: "embedding" in name),
)
OTHER_OPS = "other elementwise and copies"
FRAMEWORK = "framework ranges (autograd engine, optimizer wrapper)"
OUTSIDE = "outside any op (Python, profiler)"


def category(name: str) -> str:
    if not name.startswith("aten::"):
        return FRAMEWORK  # record_function ranges and autograd's evaluate_function nodes: their self time is bookkeeping
    return next((label for label, rule in CATEGORY_RULES if rule(name)), OTHER_OPS)


def matmul_dims(name: str, shapes: list[list[int]]) -> tuple[int, int, int, int] | None:
    """(batch, M, K, N) of a matrix product from its profiled input shapes (None when they are not recorded)."""
    operands = [s for s in shapes if len(s) >= 2]
    if name in ("aten::addmm", "aten::baddbmm"):
        operands = operands[-2:]  # the first input is the added bias / matrix
    if len(operands) != 2:
        return None
    a, b = operands
    batch = a[0] if len(a) == 3 else 1
    return batch, a[-2], a[-1], b[-1]


def plain_mm_seconds(dims: tuple[int, int, int, int], dtype: torch.dtype, budget_s: float = 0.05) -> float:
    """Seconds per call of a plain contiguous product of these dims, timed alone (warm caches)."""
    batch, m, k, n = dims
    a = torch.randn(batch, m, k).to(dtype).squeeze(0)
    b = torch.randn(batch, k, n).to(dtype).squeeze(0)
    product = torch.bmm if batch > 1 else torch.mm
    product(a, b)
    calls, started = 0, time.perf_counter()
    while True:
        product(a, b)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= budget_s and calls >= 3:
            return elapsed / calls


@dataclasses.dataclass
class Profiled:
    """One profiled phase: its wall time, analytic FLOPs and the profiler's per-op averages."""

    name: str
    wall_s: float
    units: int  # steps (training) or rows (scoring)
    analytic_flops: float
    averages: Any  # torch.autograd.profiler_util.EventList grouped by input shape

    def report(self, dtype: torch.dtype, peak_flops: float) -> dict[str, Any]:
        by_category: dict[str, float] = defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        matmul_flops = matmul_s = ceiling_s = 0.0
        shapes: list[dict[str, Any]] = []
        for event in self.averages:
            seconds = event.self_cpu_time_total / 1e6
            by_category[category(event.key)] += seconds
            by_op[event.key] += seconds
            if event.key in MATMUL_OPS:
                dims = matmul_dims(event.key, event.input_shapes)
                if dims is None:
                    continue
                batch, m, k, n = dims
                flops = 2.0 * batch * m * k * n * event.count
                alone = plain_mm_seconds(dims, dtype) * event.count
                matmul_flops += flops
                matmul_s += seconds
                ceiling_s += alone
                shapes.append({"op": event.key, "batch_m_k_n": list(dims), "calls": event.count, "self_s": seconds,
                               "gflops": flops / max(seconds, 1e-12) / 1e9, "alone_gflops": flops / alone / 1e9})
        by_category[OUTSIDE] = max(0.0, self.wall_s - sum(by_category.values()))
        shapes.sort(key=lambda s: -s["self_s"])
        return {
            "wall_s": self.wall_s,
            "units": self.units,
            "wall_s_per_unit": self.wall_s / self.units,
            "analytic_gflops": self.analytic_flops / self.wall_s / 1e9,
            "fraction_of_peak": self.analytic_flops / self.wall_s / peak_flops,
            "seconds_by_category": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_ops_s": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:15]),
            "matmul": {"flops": matmul_flops, "self_s": matmul_s, "gflops": matmul_flops / max(matmul_s, 1e-12) / 1e9,
                       "alone_s": ceiling_s, "alone_gflops": matmul_flops / max(ceiling_s, 1e-12) / 1e9,
                       "share_of_wall": matmul_s / self.wall_s},
            # Everything but the products free, the products at their shapes' ceiling: the most this path can reach.
            "bound_fraction_of_peak": self.analytic_flops / max(ceiling_s, 1e-12) / peak_flops,
            "matmul_shapes": shapes[:12],
        }


def profiled(name: str, units: int, work: Iterable[Callable[[], float]]) -> Profiled:
    """Run every job of ``work`` under the CPU profiler; each returns its analytic FLOPs."""
    flops = 0.0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        for job in work:
            flops += job()
        wall = time.perf_counter() - started
    return Profiled(name, wall, units, flops, prof.key_averages(group_by_input_shape=True))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="profiled training steps (datasets in turn)")
    parser.add_argument("--warmup", type=int, default=6, help="unprofiled training steps first")
    parser.add_argument("--eval-rows", type=int, default=256, help="dev rows per task in the profiled scoring")
    parser.add_argument("--precision", default="", help="fp32 | bf16 (default: params.yaml's train.precision)")
    parser.add_argument("--no-simcse", action="store_true", help="profile training with SimCSE off")
    parser.add_argument("--fused-qkv", action="store_true", help="one Q, K, V product instead of three")
    speed.add_common_arguments(parser, "step_profile.json")
    args = parser.parse_args(argv)
    mirror = speed.apply_common_arguments(args)
    device = torch.device("cpu")
    params = load_params(args.params)
    train_params = params.train
    if args.precision:
        train_params = dataclasses.replace(train_params, precision=args.precision)
    if args.no_simcse:
        train_params = dataclasses.replace(train_params, simcse=False)
    params = dataclasses.replace(params, train=train_params)
    max_length = params.data.max_length

    tokenizer = load_tokenizer(params.model.pretrained)
    special = SpecialTokens.from_tokenizer(tokenizer)
    train = {ds: speed.load_dataset(mirror, ds, "train", tokenizer, max_length) for ds in speed.DATASETS}
    dev = {ds: speed.load_dataset(mirror, ds, "dev", tokenizer, max_length, rows=args.eval_rows) for ds in speed.DATASETS}
    plan = speed.training_plan(train, args.warmup + args.steps, params.train.batch_size, params.train.seed)
    setup = speed.palbert_setup("palbert", params, device, params.train.seed)
    if args.fused_qkv:
        set_fused_qkv(setup.model, True)
    dtype = speed.MATMUL_DTYPES[setup.precision]

    def train_job(ds: str, rows: list[int]) -> Callable[[], float]:
        return lambda: speed.palbert_train_flops(setup, train[ds], rows, special, device)

    def score_job(ds: str) -> Callable[[], float]:
        return lambda: speed.palbert_score_flops(setup, dev[ds], special, device)

    for ds, rows in plan[: args.warmup]:
        train_job(ds, rows)()
    score_job(speed.DATASETS[0])()  # first scoring call's one-time costs out of the profile
    phases = [
        profiled("train", args.steps, [train_job(ds, rows) for ds, rows in plan[args.warmup:]]),
        profiled("score", sum(len(d.prepared) for d in dev.values()), [score_job(ds) for ds in speed.DATASETS]),
    ]
    peak = speed.matmul_rate(dtype, device)
    report = {
        **speed.run_facts(argv),
        "precision": setup.precision,
        "simcse": params.train.simcse,
        "qkv": "fused" if args.fused_qkv else "separate",
        "peak_gflops": peak / 1e9,
        "phases": {phase.name: phase.report(dtype, peak) for phase in phases},
    }
    print_report(report)
    speed.write_report(report, args.out)
    return report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n{m['processor']}, {m['cpus']} CPUs, torch {m['torch']} ({m['cpu_capability']}), {m['threads']} threads, "
          f"OMP_WAIT_POLICY {m['omp_wait_policy']}; {report['precision']}, SimCSE {'on' if report['simcse'] else 'off'}, "
          f"{report['qkv']} Q/K/V products; "
          f"plain {speed.MATMUL_SIZE}^3 matmul {report['peak_gflops']:.0f} GFLOP/s")
    for name, phase in report["phases"].items():
        unit = "step" if name == "train" else "row"
        mm = phase["matmul"]
        print(f"\n== {name}: {phase['units']} {unit}s in {phase['wall_s']:.2f} s ({1000 * phase['wall_s_per_unit']:.1f} ms/{unit}), "
              f"{phase['analytic_gflops']:.0f} GFLOP/s = {phase['fraction_of_peak']:.2f} of the matmul peak")
        print(f"   {'where the time goes':<56}{'s':>8}{'share':>8}")
        for label, seconds in phase["seconds_by_category"].items():
            print(f"   {label:<56}{seconds:>8.2f}{seconds / phase['wall_s']:>8.1%}")
        print(f"   matrix products run at {mm['gflops']:.0f} GFLOP/s; the same shapes alone {mm['alone_gflops']:.0f}; "
              f"the {speed.MATMUL_SIZE}^3 peak {report['peak_gflops']:.0f}")
        print(f"   bound (all else free, products at their shapes' ceiling): {phase['bound_fraction_of_peak']:.2f} of the peak")
        print(f"   largest products: " + "; ".join(
            f"{s['op'][6:]} {'x'.join(map(str, s['batch_m_k_n']))} {s['gflops']:.0f} (alone {s['alone_gflops']:.0f}) GFLOP/s"
            for s in phase["matmul_shapes"][:5]))
        print("   top ops (self s): " + ", ".join(f"{k} {v:.2f}" for k, v in list(phase["top_ops_s"].items())[:8]))


if __name__ == "__main__":
    main()
