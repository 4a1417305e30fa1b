"""Speed benchmark: palbert's training step and evaluation path against the straightforward reference.

Why this exists: the default pipeline runs on laptop CPUs, so the per-step cost decides how many
ablations a user can afford. The numbers only mean something side by side, so everything runs in ONE
process on the same weights (embedded MiniLM) and the same real batches (rows of the mirror's SST,
Quora and STS files), and repetitions of the paths are interleaved (their order rotates every
repetition) so that load from other users of a shared machine hits all paths alike.

Paths measured
  reference      transformers.BertModel + a linear head per task, every input padded to 128 tokens,
                 float32, torch.optim.AdamW(params, lr=2e-5), tokenizing inside the loop (as the CS224N
                 starter code does). Pairs are encoded jointly ([CLS] a [SEP] b [SEP]), one forward per
                 example, which is cheaper than the starter code's two separate encodings.
                 Evaluation: no_grad, batches of 16, file order.
  palbert_*      the project's own ``train_step`` on ``make_batch`` batches whose rows come from a
                 length-bucketed ``IndexStream``; evaluation is ``predict_split`` (inference_mode,
                 length-sorted, batch ``evaluate.batch_size``). Variants: the defaults of params.yaml
                 (bf16 where the CPU has native bf16, SimCSE on), fp32 (only where the default is not
                 already fp32), and SimCSE off (SimCSE runs the encoder twice per batch).

FLOPs are estimated analytically from the padded shapes actually run (see ``forward_flops``) and
reported as a fraction of a plain square matmul of the same dtype timed in the same repetitions (only the
dtypes some path runs are timed).

Run:  python benchmarks/speed.py [--repeats 5] [--warmup 2] [--steps 10] [--out benchmarks/results/speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # predict_split's progress bars would flood the table

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from palbert.config import Params  # noqa: E402
from palbert.params_file import load_params  # noqa: E402
from palbert.data.batching import SpecialTokens, TaskBatch, encoded_lengths, make_batch  # noqa: E402
from palbert.data.prepare import tokenize  # noqa: E402
from palbert.data.prepared import PreparedSplit  # noqa: E402
from palbert.data.readers import RawSplit, read_split  # noqa: E402
from palbert.data.sources import raw_file  # noqa: E402
from palbert.scoring import EvalSettings, predict_split  # noqa: E402
from palbert.model import MultitaskBert, load_tokenizer, resolve_pretrained  # noqa: E402
from palbert.model.attention import set_fused_qkv  # noqa: E402
from palbert.paths import shown_path  # noqa: E402
from palbert.precision import resolve_precision  # noqa: E402
from palbert.tasks import DATASET_TASK, TASK_DATASET, TASK_SPECS, dataset_spec  # noqa: E402
from palbert.train.loop import train_step  # noqa: E402
from palbert.train.run import make_optimizer  # noqa: E402
from palbert.train.losses import task_loss  # noqa: E402
from palbert.train.schedule import make_scheduler  # noqa: E402
from palbert.train.streams import IndexStream  # noqa: E402

DATASETS = tuple(TASK_DATASET.values())  # each task's main dataset
REFERENCE_LENGTH = 128
REFERENCE_EVAL_BATCH = 16
DEFAULT_RUN_STEPS = 5400  # 3 epochs x 1800 steps: the default run, for torch.compile's payback
MATMUL_SIZE = 2048
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- data ------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """One split both as raw text (for the reference, which tokenizes in the loop) and prepared ids."""

    raw: RawSplit
    prepared: PreparedSplit

    def real_tokens(self, rows: list[int], max_length: int) -> int:
        """Non-padding tokens of ``rows`` as the model sees them."""
        return int(encoded_lengths(self.prepared, max_length)[rows].sum())


def load_dataset(mirror: Path, dataset: str, split: str, tokenizer, max_length: int, rows: int = 0) -> Dataset:
    """Read the raw file with the project's reader and tokenize it with the project's tokenizer."""
    raw = read_split(dataset, split, mirror / raw_file(dataset, split).name, "skip")
    if rows:
        raw = raw.sample(rows, seed=0)  # a seeded random sample in file order (the files are not shuffled)
    prepared = PreparedSplit(
        dataset=dataset,
        split=split,
        ids=np.asarray(raw.ids, dtype=str),
        first=tokenize(tokenizer, raw.first, max_length - 2, dataset),
        second=None if raw.second is None else tokenize(tokenizer, raw.second, max_length - 2, dataset),
        labels=None if raw.labels is None else np.asarray(raw.labels, dtype=dataset_spec(dataset).label_dtype),
    )
    return Dataset(raw, prepared)


def training_plan(train: dict[str, Dataset], steps: int, batch_size: int, seed: int) -> list[tuple[str, list[int]]]:
    """``steps`` (dataset, rows) batches, datasets in turn, rows from the loop's length-bucketed streams."""
    streams = {
        ds: IndexStream(len(train[ds].prepared), batch_size, seed=seed + i, lengths=train[ds].prepared.token_lengths())
        for i, ds in enumerate(DATASETS)
    }
    return [(DATASETS[s % len(DATASETS)], streams[DATASETS[s % len(DATASETS)]].next_batch()) for s in range(steps)]


# ---- FLOPs ---------------------------------------------------------------------------------------


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    pal_size: int  # 0 without PALs

    def matmul_macs_per_token(self) -> int:
        """Multiply-adds per token of every weight matmul (embeddings are lookups, not matmuls)."""
        h, i, p = self.hidden, self.intermediate, self.pal_size
        per_layer = 4 * h * h + 2 * h * i  # Q, K, V, attention output; FFN in and out
        if p:
            per_layer += 2 * h * p + 3 * p * p  # PAL V^E, V^D (applied in every layer) and its Q, K, V
        return self.layers * per_layer


def forward_flops(shape: Shape, batch: int, length: int) -> float:
    """FLOPs of one encoder forward over a [batch, length] padded input.

    2 x weight multiply-adds per token, plus attention scores and weighted sum (QK^T and AV:
    4 x length x width FLOPs per token per layer, in BERT's width and the PAL's), plus the pooler.
    Training is counted as 3 x forward (backward ~ 2 x forward); SimCSE runs it twice.
    """
    tokens = batch * length
    attention = 4 * length * (shape.hidden + shape.pal_size) * shape.layers
    return tokens * (2 * shape.matmul_macs_per_token() + attention) + batch * 2 * shape.hidden * shape.hidden


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """FLOP/s of a plain square matmul of ``dtype`` right now (the ceiling the model runs against)."""
    if device.type == "cuda":
        size, repeats = 8192, 10
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return repeats * 2 * size**3 / (time.perf_counter() - started)


# ---- the reference ---------------------------------------------------------------------------------


class ReferenceModel(nn.Module):
    """transformers.BertModel and one linear head per task on the pooled [CLS] output."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(path, dtype=torch.float32)
        hidden = self.bert.config.hidden_size
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, spec.outputs) for task, spec in TASK_SPECS.items()})

    def forward(self, encoded: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        prediction = self.heads[task](self.bert(**encoded).pooler_output)
        return prediction.squeeze(-1) if TASK_SPECS[task].outputs == 1 else prediction


def reference_encode(tokenizer, data: Dataset, rows: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize the raw texts now, every input padded to 128 tokens (the starter code's way)."""
    first = [data.raw.first[i] for i in rows]
    second = None if data.raw.second is None else [data.raw.second[i] for i in rows]
    encoded = tokenizer(first, second, padding="max_length", max_length=REFERENCE_LENGTH, truncation=True,
                        return_tensors="pt")
    return {key: value.to(device) for key, value in encoded.items()}


def reference_train_step(model: ReferenceModel, optimizer: torch.optim.Optimizer, tokenizer, data: Dataset,
                         rows: list[int]) -> float:
    task = DATASET_TASK[data.prepared.dataset]
    device = next(model.parameters()).device
    encoded = reference_encode(tokenizer, data, rows, device)
    labels = torch.tensor([data.raw.labels[i] for i in rows]).to(device)
    loss = task_loss(task, model(encoded, task), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@torch.no_grad()
def reference_evaluate(model: ReferenceModel, tokenizer, data: Dataset) -> np.ndarray:
    task = DATASET_TASK[data.prepared.dataset]
    model.eval()
    out = []
    for start in range(0, len(data.prepared), REFERENCE_EVAL_BATCH):
        rows = list(range(start, min(start + REFERENCE_EVAL_BATCH, len(data.prepared))))
        prediction = model(reference_encode(tokenizer, data, rows, next(model.parameters()).device), task)
        out.append(TASK_SPECS[task].predict(prediction))
    model.train()
    return torch.cat(out).cpu().numpy()


# ---- palbert -----------------------------------------------------------------------------------------


@dataclass
class PalbertSetup:
    """One palbert configuration: its model, optimizer and LR schedule, as train() builds them."""

    name: str
    params: Params
    precision: str
    model: MultitaskBert
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    compiled: Callable | None = None  # torch.compile'd model, when measured


def palbert_setup(name: str, params: Params, device: torch.device, seed: int) -> PalbertSetup:
    """The setup's precision is its params' (``train.precision``), so training and scoring it agree."""
    torch.manual_seed(seed)
    model = MultitaskBert.from_pretrained(params.model).to(device)
    model.train()
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params.train.schedule, DEFAULT_RUN_STEPS, params.train.warmup_fraction)
    return PalbertSetup(name, params, resolve_precision(params.train.precision, device), model, optimizer, scheduler)


def palbert_batch(setup: PalbertSetup, data: Dataset, rows: list[int], special: SpecialTokens,
                  device: torch.device) -> TaskBatch:
    return make_batch(data.prepared, rows, task=DATASET_TASK[data.prepared.dataset],
                      pair_encoding=setup.params.model.pair_encoding, special=special,
                      max_length=setup.params.data.max_length).to(device, non_blocking=True)


def palbert_train_step(setup: PalbertSetup, data: Dataset, rows: list[int], special: SpecialTokens,
                       device: torch.device) -> tuple[float, tuple[int, int]]:
    """Batch building + the loop's ``train_step``; returns the loss and the padded batch shape."""
    batch = palbert_batch(setup, data, rows, special, device)
    model = setup.model if setup.compiled is None else setup.compiled  # a Module has no truth value: len() raises
    loss = train_step(model, batch, setup.optimizer, setup.scheduler, setup.params.train, setup.precision, device)
    return loss.total.item(), tuple(batch.inputs.input_ids.shape)


def palbert_eval_settings(setup: PalbertSetup, special: SpecialTokens, device: torch.device) -> EvalSettings:
    return EvalSettings.for_params(setup.params, special, setup.params.data.max_length, device)


def palbert_shape(setup: PalbertSetup) -> Shape:
    """The FLOP shape of a setup's model: its BERT's sizes, and the PAL size where PALs are on."""
    config = setup.model.bert_config
    return Shape(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                 setup.params.model.pal_size if setup.params.model.pals else 0)


def palbert_train_flops(setup: PalbertSetup, data: Dataset, rows: list[int], special: SpecialTokens,
                        device: torch.device) -> float:
    """One training step (``palbert_train_step``); its analytic FLOPs: 3 x forward, twice with SimCSE."""
    _, (batch, length) = palbert_train_step(setup, data, rows, special, device)
    return (2 if setup.params.train.simcse else 1) * 3 * forward_flops(palbert_shape(setup), batch, length)


def palbert_score_flops(setup: PalbertSetup, data: Dataset, special: SpecialTokens, device: torch.device) -> float:
    """Every row of ``data`` scored by ``predict_split``; the analytic FLOPs of its length-sorted batches."""
    settings = palbert_eval_settings(setup, special, device)
    with contextlib.redirect_stderr(io.StringIO()):  # predict_split's progress bars
        predict_split(setup.model, data.prepared, DATASET_TASK[data.prepared.dataset], settings)
    shapes = eval_shapes(data, settings.batch_size, setup.params.data.max_length)
    return sum(forward_flops(palbert_shape(setup), b, t) for b, t in shapes)


def eval_shapes(data: Dataset, batch_size: int, max_length: int) -> list[tuple[int, int]]:
    """Padded [B, T] of each batch predict_split runs (length-sorted rows), for the FLOP estimate."""
    lengths = np.sort(encoded_lengths(data.prepared, max_length))[::-1]
    return [(len(lengths[i:i + batch_size]), int(lengths[i])) for i in range(0, len(lengths), batch_size)]


# ---- memory (a fresh process per path, so that one path's peak does not hide the other's) ----------


def _peak_rss_gib() -> float:
    """This process's peak resident memory. Linux's VmHWM, because ru_maxrss carries the parent's
    peak into a spawned child (it would report the benchmark process's peak, not the child's)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def memory_probe(kind: str, mirror: str, params_path: str, steps: int, queue) -> None:
    """Child process: a default training run's working set, driven through its worst-case batches.

    Loads the train data and the model as train() does, runs ``steps`` training steps on the
    longest rows of each dataset (128-token batches: the largest activations a run meets), then
    scores a dev split with predict_split, and reports this process's peak RSS.
    """
    torch.manual_seed(0)
    params = load_params(params_path)
    device = torch.device("cpu")
    tokenizer = load_tokenizer(params.model.pretrained)
    max_length = params.data.max_length
    train = {ds: load_dataset(Path(mirror), ds, "train", tokenizer, max_length) for ds in DATASETS}
    longest = {ds: np.argsort(-d.prepared.token_lengths(), kind="stable")[: params.train.batch_size].tolist() for ds, d in train.items()}
    special = SpecialTokens.from_tokenizer(tokenizer)
    started = time.perf_counter()
    if kind == "reference":
        model = ReferenceModel(resolve_pretrained(params.model.pretrained))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
        for step in range(steps):
            ds = DATASETS[step % len(DATASETS)]
            reference_train_step(model, optimizer, tokenizer, train[ds], longest[ds])
    else:
        setup = palbert_setup(kind, params, device, seed=0)
        for step in range(steps):
            ds = DATASETS[step % len(DATASETS)]
            palbert_train_step(setup, train[ds], longest[ds], special, device)
        dev = load_dataset(Path(mirror), "sst", "dev", tokenizer, max_length)
        with contextlib.redirect_stderr(io.StringIO()):  # predict_split's progress bars
            predict_split(setup.model, dev.prepared, "sst", palbert_eval_settings(setup, special, device))
    queue.put({"peak_rss_gib": _peak_rss_gib(), "steps": steps, "seconds": time.perf_counter() - started})


def measure_memory(kind: str, mirror: Path, params_path: Path, steps: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=memory_probe, args=(kind, str(mirror), str(params_path), steps, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


# ---- measurement ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One repetition of one path: wall time, examples, real tokens, executed FLOPs."""

    seconds: float
    examples: int
    real_tokens: int
    flops: float
    matmul_rate: float  # FLOP/s of a plain matmul of this path's dtype in the same repetition

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def matmul_fraction(self) -> float:
        return self.flops / self.seconds / self.matmul_rate


def summary(samples: list[Sample], reference: list[Sample] | None) -> dict[str, Any]:
    """Medians and min-max of the rates; the ratio to the reference per repetition (same load)."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    out = {
        "examples_per_s": stats([s.examples_per_s for s in samples]),
        "real_tokens_per_s": stats([s.tokens_per_s for s in samples]),
        "achieved_gflops": stats([s.flops / s.seconds / 1e9 for s in samples]),
        "matmul_fraction": stats([s.matmul_fraction for s in samples]),
        "seconds": [s.seconds for s in samples],
        "examples": samples[0].examples,
        "real_tokens": samples[0].real_tokens,
    }
    if reference is not None:
        out["ratio_to_reference"] = stats([s.examples_per_s / r.examples_per_s for s, r in zip(samples, reference)])
    return out


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of every path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per path before timing")
    parser.add_argument("--steps", type=int, default=10, help="training steps per repetition (datasets in turn)")
    parser.add_argument("--eval-rows", type=int, default=256, help="dev rows per task palbert scores per repetition")
    parser.add_argument("--reference-eval-rows", type=int, default=48,
                        help="dev rows per task the reference scores per repetition (its cost per row is fixed)")
    parser.add_argument("--memory-steps", type=int, default=6, help="worst-case training steps in the memory probes (0: skip)")
    parser.add_argument("--interop-threads", type=int, default=0, help="torch.set_num_interop_threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU the memory probes report GPU memory)")
    parser.add_argument("--verbose", action="store_true", help="print every timed job's seconds")
    parser.add_argument("--compile", action="store_true", help="also time palbert (params.yaml's defaults) under torch.compile")
    parser.add_argument("--fused-qkv", action="store_true",
                        help="also time palbert with one Q, K, V product instead of three (the fusion's A/B)")
    add_common_arguments(parser, "speed.json")
    return parser.parse_args(argv)


# ---- setup: the same rows and the same weights for every path ----------------------------------------


@dataclass
class Workload:
    """The rows every path runs: training steps (warm-up and timed) and dev rows, with their sizes."""

    tokenizer: Any
    special: SpecialTokens
    train: dict[str, Dataset]
    dev: dict[str, Dataset]
    reference_dev: dict[str, Dataset]
    warmup_plan: list[tuple[str, list[int]]]
    timed_plan: list[tuple[str, list[int]]]
    train_examples: int
    train_tokens: int
    eval_examples: int
    eval_tokens: int
    reference_eval_examples: int
    reference_eval_tokens: int


def load_workload(args: argparse.Namespace, params: Params, mirror: Path) -> Workload:
    max_length = params.data.max_length
    tokenizer = load_tokenizer(params.model.pretrained)
    train = {ds: load_dataset(mirror, ds, "train", tokenizer, max_length) for ds in DATASETS}
    dev = {ds: load_dataset(mirror, ds, "dev", tokenizer, max_length, rows=args.eval_rows) for ds in DATASETS}
    # The reference's cost per row does not depend on the row (every row is 128 tokens), so it scores a
    # smaller random sample of the same dev files: the full sample would take most of the benchmark's time.
    reference_dev = {ds: load_dataset(mirror, ds, "dev", tokenizer, max_length, rows=args.reference_eval_rows)
                     for ds in DATASETS}
    plan = training_plan(train, args.warmup + args.steps, params.train.batch_size, params.train.seed)
    timed_plan = plan[args.warmup:]

    def all_tokens(data: dict[str, Dataset]) -> int:
        return sum(d.real_tokens(list(range(len(d.prepared))), max_length) for d in data.values())

    return Workload(
        tokenizer=tokenizer, special=SpecialTokens.from_tokenizer(tokenizer), train=train, dev=dev,
        reference_dev=reference_dev, warmup_plan=plan[: args.warmup], timed_plan=timed_plan,
        train_examples=sum(len(rows) for _, rows in timed_plan),
        train_tokens=sum(train[ds].real_tokens(rows, max_length) for ds, rows in timed_plan),
        eval_examples=sum(len(d.prepared) for d in dev.values()), eval_tokens=all_tokens(dev),
        reference_eval_examples=sum(len(d.prepared) for d in reference_dev.values()),
        reference_eval_tokens=all_tokens(reference_dev))


@dataclass
class Reference:
    """The reference model with its optimizer and the shape its FLOPs are counted on."""

    model: ReferenceModel
    optimizer: torch.optim.Optimizer
    shape: Shape


def build_models(args: argparse.Namespace, params: Params, device: torch.device) -> tuple[Reference, list[PalbertSetup]]:
    """The reference and palbert's variants: the same pretrained weights, PALs and heads from one seed."""
    seed = params.train.seed
    torch.manual_seed(seed)
    model = ReferenceModel(resolve_pretrained(params.model.pretrained)).to(device)
    model.train()
    config = model.bert.config
    reference = Reference(model, torch.optim.AdamW(model.parameters(), lr=2e-5),
                          Shape(config.hidden_size, config.intermediate_size, config.num_hidden_layers, 0))
    no_simcse = dataclasses.replace(params, train=dataclasses.replace(params.train, simcse=False))
    setups = [palbert_setup("palbert", params, device, seed)]
    if setups[0].precision != "fp32":  # where auto means fp32 (no native bf16), this would time palbert twice
        fp32 = dataclasses.replace(params, train=dataclasses.replace(params.train, precision="fp32"))
        setups.append(palbert_setup("palbert_fp32", fp32, device, seed))
    setups.append(palbert_setup("palbert_no_simcse", no_simcse, device, seed))
    if args.fused_qkv:
        fused = palbert_setup("palbert_fused_qkv", params, device, seed)
        set_fused_qkv(fused.model, True)
        setups.append(fused)
    if args.compile:
        compiled = palbert_setup("palbert_compiled", params, device, seed)
        compiled.compiled = torch.compile(compiled.model, dynamic=True)
        setups.append(compiled)
    return reference, setups


def warm_up(work: Workload, reference: Reference, setups: list[PalbertSetup], device: torch.device) -> dict[str, float]:
    """The untimed steps of every path; each palbert variant's seconds (its compile time, when compiled)."""
    for ds, rows in work.warmup_plan:
        reference_train_step(reference.model, reference.optimizer, work.tokenizer, work.train[ds], rows)
    seconds: dict[str, float] = {}
    for setup in setups:
        started = time.perf_counter()
        for ds, rows in work.warmup_plan:
            palbert_train_step(setup, work.train[ds], rows, work.special, device)
        seconds[setup.name] = time.perf_counter() - started
    return seconds


# ---- timed repetitions ---------------------------------------------------------------------------------

#: A path: a function of one unit of work (a training step's (dataset, rows), or a dev (dataset,)) that runs it
#: and returns its FLOPs, and the dtype its FLOPs are set against.
Paths = dict[str, tuple[Callable[..., float], str]]


def reference_train(work: Workload, reference: Reference, ds: str, rows: list[int]) -> float:
    reference_train_step(reference.model, reference.optimizer, work.tokenizer, work.train[ds], rows)
    return 3 * forward_flops(reference.shape, len(rows), REFERENCE_LENGTH)


def reference_eval(work: Workload, reference: Reference, ds: str) -> float:
    reference_evaluate(reference.model, work.tokenizer, work.reference_dev[ds])
    n = len(work.reference_dev[ds].prepared)
    return sum(forward_flops(reference.shape, min(REFERENCE_EVAL_BATCH, n - s), REFERENCE_LENGTH)
               for s in range(0, n, REFERENCE_EVAL_BATCH))


def palbert_train(work: Workload, setup: PalbertSetup, device: torch.device, ds: str, rows: list[int]) -> float:
    return palbert_train_flops(setup, work.train[ds], rows, work.special, device)


def palbert_eval(work: Workload, setup: PalbertSetup, device: torch.device, ds: str) -> float:
    return palbert_score_flops(setup, work.dev[ds], work.special, device)


def timed_paths(work: Workload, reference: Reference, setups: list[PalbertSetup], device: torch.device) -> tuple[Paths, Paths]:
    """The training paths and the scoring paths, the reference first."""
    train_paths: Paths = {"reference": (partial(reference_train, work, reference), "fp32")}
    eval_paths: Paths = {"reference": (partial(reference_eval, work, reference), "fp32")}
    for setup in setups:
        train_paths[setup.name] = (partial(palbert_train, work, setup, device), setup.precision)
        if setup.name in ("palbert", "palbert_fp32", "palbert_fused_qkv"):  # SimCSE and compile do not change it
            eval_paths[setup.name] = (partial(palbert_eval, work, setup, device), setup.precision)
    return train_paths, eval_paths


def take_turns(paths: Paths, units: list[tuple], turn: int, device: torch.device,
               seconds: dict[str, float], flops: dict[str, float]) -> None:
    """Every path runs every unit, the paths' order rotating per unit and per turn; seconds and FLOPs add up."""
    names = list(paths)
    for u, unit in enumerate(units):
        shift = (turn + u) % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            started = time.perf_counter()
            flops[name] += paths[name][0](*unit)
            synchronize(device)
            seconds[name] += time.perf_counter() - started


def time_repetitions(args: argparse.Namespace, work: Workload, train_paths: Paths, eval_paths: Paths,
                     device: torch.device, began: float) -> tuple[dict[str, list[Sample]], dict[str, list[float]]]:
    """Each path's Sample per repetition, and the plain matmul rate of each dtype run, per repetition.

    Load from other users changes within seconds, so the paths take turns at every training step and every
    evaluated task (the order rotating), and each path's time is the sum of its turns."""
    results: dict[str, list[Sample]] = defaultdict(list)
    # Only the dtypes the paths run: on a CPU without native bf16 (auto -> fp32) a bf16 matmul is emulated,
    # slow, and would take most of every repetition while no path uses it.
    run_dtypes = sorted({precision for _, precision in (*train_paths.values(), *eval_paths.values())})
    rates: dict[str, list[float]] = {precision: [] for precision in run_dtypes}
    for repeat in range(args.repeats):
        rate = {precision: matmul_rate(MATMUL_DTYPES[precision], device) for precision in rates}
        for dtype, value in rate.items():
            rates[dtype].append(value)
        for phase, paths, units in (("train", train_paths, work.timed_plan), ("eval", eval_paths, [(ds,) for ds in DATASETS])):
            seconds: dict[str, float] = defaultdict(float)
            flops: dict[str, float] = defaultdict(float)
            take_turns(paths, units, repeat, device, seconds, flops)
            for name, (_, precision) in paths.items():
                if phase == "train":
                    examples, tokens = work.train_examples, work.train_tokens
                elif name == "reference":
                    examples, tokens = work.reference_eval_examples, work.reference_eval_tokens
                else:
                    examples, tokens = work.eval_examples, work.eval_tokens
                results[f"{phase}/{name}"].append(Sample(seconds[name], examples, tokens, flops[name], rate[precision]))
                if args.verbose:
                    print(f"    {phase}/{name}: {seconds[name]:.2f} s", flush=True)
        print(f"  repetition {repeat + 1}/{args.repeats} done ({time.perf_counter() - began:.0f} s)", flush=True)
    return results, rates


def measure_peak_memory(args: argparse.Namespace, device: torch.device, mirror: Path) -> dict[str, Any]:
    """GPU: the peak allocated by all paths; CPU: fresh processes' peak RSS running the longest batches."""
    if device.type == "cuda":
        return {"gpu_peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    if args.memory_steps:
        return {kind: measure_memory(kind, mirror, args.params, args.memory_steps) for kind in ("palbert", "reference")}
    return {}


# ---- report --------------------------------------------------------------------------------------------


def build_report(argv: list[str] | None, args: argparse.Namespace, params: Params, device: torch.device,
                 work: Workload, results: dict[str, list[Sample]], rates: dict[str, list[float]],
                 warmup_seconds: dict[str, float], memory: dict[str, Any], began: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        **run_facts(argv),
        "settings": {"repeats": args.repeats, "warmup_steps": args.warmup, "train_steps": args.steps,
                     "train_batch": params.train.batch_size, "train_examples": work.train_examples,
                     "train_real_tokens": work.train_tokens, "eval_rows_per_task": args.eval_rows,
                     "reference_eval_rows_per_task": args.reference_eval_rows,
                     "reference_eval_examples": work.reference_eval_examples,
                     "eval_examples": work.eval_examples, "eval_real_tokens": work.eval_tokens,
                     "reference_eval_batch": REFERENCE_EVAL_BATCH, "palbert_eval_batch": params.evaluate.batch_size,
                     "precision_auto": resolve_precision(params.train.precision, device)},
        "matmul_gflops": {k: {"median": statistics.median(v) / 1e9, "min": min(v) / 1e9, "max": max(v) / 1e9}
                          for k, v in rates.items()},
        "results": {},
        "warmup_seconds": warmup_seconds,
        "peak_rss_gib": {"benchmark_process": _peak_rss_gib(),
                         **{k: v["peak_rss_gib"] for k, v in memory.items() if isinstance(v, dict)}},
        "gpu_peak_allocated_gib": memory.get("gpu_peak_allocated_gib"),
        "wall_seconds": time.perf_counter() - began,
    }
    for name, samples in results.items():
        phase = name.split("/")[0]
        reference_samples = None if name.endswith("/reference") else results[f"{phase}/reference"]
        report["results"][name] = summary(samples, reference_samples)
    if args.compile:
        report["compile"] = compile_payback(args, results, warmup_seconds)
    return report


def compile_payback(args: argparse.Namespace, results: dict[str, list[Sample]],
                    warmup_seconds: dict[str, float]) -> dict[str, Any]:
    """torch.compile's extra warm-up against the time it saves per step: after how many steps it pays back."""
    eager = statistics.median(results["train/palbert"][i].seconds for i in range(args.repeats)) / args.steps
    compiled_step = statistics.median(results["train/palbert_compiled"][i].seconds for i in range(args.repeats)) / args.steps
    overhead = warmup_seconds["palbert_compiled"] - warmup_seconds["palbert"]
    gain = eager - compiled_step
    return {"extra_warmup_seconds": overhead, "eager_step_s": eager, "compiled_step_s": compiled_step,
            "payback_steps": overhead / gain if gain > 0 else None,
            "pays_back_in_default_run": gain > 0 and overhead / gain < DEFAULT_RUN_STEPS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The recipe: set up the rows and models, warm up, time interleaved repetitions, report."""
    args = parse_arguments(argv)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    mirror = apply_common_arguments(args)
    device = torch.device(args.device)
    params = load_params(args.params)
    began = time.perf_counter()
    work = load_workload(args, params, mirror)
    reference, setups = build_models(args, params, device)
    warmup_seconds = warm_up(work, reference, setups, device)
    print(f"setup and warm-up: {time.perf_counter() - began:.0f} s; timing {args.repeats} repetitions ...", flush=True)
    results, rates = time_repetitions(args, work, *timed_paths(work, reference, setups, device), device, began)
    memory = measure_peak_memory(args, device, mirror)
    report = build_report(argv, args, params, device, work, results, rates, warmup_seconds, memory, began)
    print_table(report)
    write_report(report, args.out)
    return report


def add_common_arguments(parser: argparse.ArgumentParser, out_name: str) -> None:
    """--threads, --mirror, --params and --out, as every benchmark of this folder takes them."""
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("PALBERT_DATA_MIRROR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / out_name)


def apply_common_arguments(args: argparse.Namespace) -> Path:
    """Set the thread count; the folder of the mirror's CS224N files."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.mirror / "cs224n" if (args.mirror / "cs224n").is_dir() else args.mirror


def run_facts(argv: list[str] | None) -> dict[str, Any]:
    """The command line and the machine a benchmark ran on, for the head of its report."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *map(shown_argument, argv if argv is not None else sys.argv[1:])]),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "interop_threads": torch.get_num_interop_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }


def shown_argument(word: str) -> str:
    """A command-line word with an absolute path (``/tmp/x.json``, ``--out=/tmp/x.json``) as ``shown_path`` names it."""
    option, _, value = word.rpartition("=") if word.startswith("--") and "=" in word else ("", "", word)
    shown = shown_path(value, ROOT) if value.startswith("/") else value
    return f"{option}={shown}" if option else shown


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {shown_path(out, ROOT)}")


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    m = report["machine"]
    print(f"\n{m['processor']}, {m['cpus']} CPUs, torch {m['torch']} ({m['cpu_capability']}), "
          f"{m['threads']} threads / {m['interop_threads']} interop, OMP_WAIT_POLICY {m['omp_wait_policy']}; precision auto -> {s['precision_auto']}")
    print(f"train: {s['train_steps']} steps x batch {s['train_batch']} = {s['train_examples']} examples, "
          f"{s['train_real_tokens']} real tokens; eval: {s['eval_examples']} dev rows "
          f"({s['eval_rows_per_task']} per task; the reference scores {s['reference_eval_rows_per_task']} per task), "
          f"{s['eval_real_tokens']} real tokens; "
          f"eval batch: reference {s['reference_eval_batch']}, palbert {s['palbert_eval_batch']}")
    mm = report["matmul_gflops"]
    print(f"plain {MATMUL_SIZE}^3 matmul: " + ", ".join(f"{dtype} {m['median']:.0f} GFLOP/s" for dtype, m in mm.items())
          + " (medians over repetitions; only the dtypes the paths run)\n")

    def cell(stat: dict[str, float], fmt: str) -> str:
        return f"{format(stat['median'], fmt)} ({format(stat['min'], fmt)}-{format(stat['max'], fmt)})"

    header = f"{'path':<26}{'examples/s':>22}{'real tokens/s':>26}{'x reference':>20}{'GFLOP/s':>18}{'of matmul':>22}"
    print(header)
    print("-" * len(header))
    for name, r in report["results"].items():
        ratio = cell(r["ratio_to_reference"], ".2f") if "ratio_to_reference" in r else "1"
        print(f"{name:<26}{cell(r['examples_per_s'], '.1f'):>22}{cell(r['real_tokens_per_s'], '.0f'):>26}"
              f"{ratio:>20}{cell(r['achieved_gflops'], '.0f'):>18}{cell(r['matmul_fraction'], '.2f'):>22}")
    print("\nmedian (min-max) over repetitions; 'x reference' = examples/s ratio within each repetition.")
    print("GFLOP/s: analytic FLOPs of the padded shapes run (training 3x forward, x2 with SimCSE), "
          "'of matmul' = that / a plain matmul of the path's dtype.")
    rss = report["peak_rss_gib"]
    print("peak RSS (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in rss.items())
          + "  (palbert/reference: fresh processes running the longest batches; target for palbert <= 4)")
    if report.get("gpu_peak_allocated_gib") is not None:
        print(f"GPU peak allocated (GiB, all paths in one process): {report['gpu_peak_allocated_gib']:.2f}")
    if "compile" in report:
        c = report["compile"]
        print(f"torch.compile: +{c['extra_warmup_seconds']:.0f} s warm-up, step {c['eager_step_s']:.3f} s eager vs "
              f"{c['compiled_step_s']:.3f} s compiled; pays back in {c['payback_steps']} steps "
              f"({'yes' if c['pays_back_in_default_run'] else 'no'} within {DEFAULT_RUN_STEPS})")
    print(f"benchmark wall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
