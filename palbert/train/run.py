"""A training run: its paths, the state a checkpoint carries, and ``set_up``, which builds what the run works with.

``set_up`` loads the prepared splits and builds PAL BERT, its AdamW optimizer, LR schedule, task sampler and batch
streams, or restores all of them from a checkpoint of the same settings so that a killed run resumes exactly. The
loop that trains it is ``palbert.train.loop``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from palbert.atomic import check_free_space, check_writable
from palbert.config import DATASETS, TASK_DATASET, Params
from palbert.data.batching import SpecialTokens
from palbert.data.prepared import PreparedSplit, load_prepared, read_meta
from palbert.distributed import DistContext, init_distributed
from palbert.model import MultitaskBert, load_tokenizer
from palbert.paths import BEST_MODEL, CHECKPOINTS, PREPARED, TRAIN_PLOTS, TRAIN_SUMMARY, find_project_root
from palbert.scoring import EvalSettings, load_eval_splits
from palbert.settings_guard import SettingsGuard
from palbert.train import checkpoint
from palbert.train.averaging import WeightAverage, make_weight_average
from palbert.train.sampling import TaskSampler, dataset_batch_sizes, make_task_sampler
from palbert.train.schedule import make_scheduler, parameter_groups
from palbert.train.streams import IndexStream

log = logging.getLogger(__name__)


@dataclass
class TrainPaths:
    #: The repository (also from inside a DVC queued-experiment copy): where the MLflow store lives.
    project_root: Path = field(default_factory=find_project_root)
    prepared: Path = PREPARED
    checkpoints: Path = CHECKPOINTS
    best_model: Path = BEST_MODEL
    summary: Path = TRAIN_SUMMARY
    plots: Path = TRAIN_PLOTS


@dataclass
class RunState:
    """Everything about the run's progress that a checkpoint must carry (JSON-serialisable)."""

    fingerprint: str
    epoch: int = 1  # the epoch in progress, 1-based
    position: int = 0  # steps of that epoch already taken
    step: int = 0  # steps taken in the whole run
    examples: int = 0  # training examples seen by all ranks together
    best_overall: float = -math.inf
    best_epoch: int = 0
    streams: dict[str, dict] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    elapsed_s: float = 0.0
    scoring_s: float = 0.0  # of elapsed_s, the time spent scoring dev (not training: left out of the rate)
    #: Plot data: {"loss_<task>": [[step, loss]], "lr": [[step, lr]], "sampling": [[step, {ds: p}]], "dev": [...]}
    history: dict[str, list] = field(default_factory=dict)
    #: Task probabilities of each epoch (drawn samplers: p_i; sequential/round-robin: the plan's fractions)
    epoch_probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    complete: bool = False
    #: the finished run's models/, metrics/ and plots are written (until then, a rerun writes them from here)
    outputs_written: bool = False
    format: int = checkpoint.FORMAT_VERSION


@dataclass
class Run:
    """What one training run works with, built once by ``set_up`` and read by every phase below; ``state`` is the
    part that changes as it trains (and that a checkpoint carries)."""

    params: Params
    paths: TrainPaths
    guard: SettingsGuard | None
    ctx: DistContext
    train_splits: dict[str, PreparedSplit]
    dev_splits: dict[str, PreparedSplit]
    special: SpecialTokens
    max_length: int
    eval_settings: EvalSettings
    model: MultitaskBert
    ddp_model: torch.nn.Module  # ``model``, or its DistributedDataParallel wrapper under torchrun
    tokenizer: Any
    report: dict[str, Any]  # ``model.parameter_report()``
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: TaskSampler
    total_steps: int
    streams: dict[str, IndexStream]
    state: RunState
    started: float = 0.0  # ``time.perf_counter()`` when this process began training (the checkpoints' elapsed time)
    averaged: WeightAverage | None = None  # ``train.ema_decay``: the weights dev scoring and the saved model use

    @property
    def precision(self) -> str:
        """bf16 or fp32, resolved once (with its warning) for training and dev scoring alike."""
        return self.eval_settings.precision


def set_up(params: Params, paths: TrainPaths, guard: SettingsGuard | None) -> Run:
    """The process runtime, the data, the model, optimizer, schedule, sampler and streams; from the checkpoint of
    these settings when there is one (the same weights, RNG and stream positions: the run resumes exactly)."""
    ctx = init_distributed(params.distributed)
    if ctx.is_main:  # every folder this run writes, before any work: not at the first save, steps later
        check_writable({"checkpoints": paths.checkpoints, "the trained model": paths.best_model.parent,
                        "metrics": paths.summary.parent, "training plots": paths.plots})
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    device = ctx.device
    torch.manual_seed(params.train.seed)

    # ---- data
    train_splits, meta = load_training_data(params, paths.prepared)
    dev_splits = load_eval_splits(paths.prepared, "dev")
    special = SpecialTokens.from_meta(meta)
    max_length = min(params.data.max_length, meta["max_length"])
    batch_sizes = dataset_batch_sizes(train_splits, params.train.batch_size, params.train.cfimdb_batch_size)

    # ---- a checkpoint of this configuration to resume?
    state = RunState(fingerprint=checkpoint.fingerprint(params, meta))
    # A checkpoint of other settings is left alone until this run writes its own (``_save_checkpoint``): a run
    # that fails in its first seconds (unreachable tracking store, bad weights) must not have destroyed it.
    saved = ctx.broadcast_object(
        checkpoint.resumable_state(paths.checkpoints, state.fingerprint, RunState) if ctx.is_main else None)

    # ---- model, optimizer, schedule, sampler
    model = MultitaskBert.from_pretrained(params.model).to(device)
    tokenizer = load_tokenizer(params.model.pretrained)
    report = model.parameter_report()
    if ctx.is_main:
        check_free_space(paths.checkpoints, checkpoint.checkpoint_bytes(model), "a checkpoint of this model")
    optimizer = make_optimizer(model, params)
    averaged = make_weight_average(model, params.train.ema_decay)
    sampler = make_task_sampler(
        params.train.sampling,
        sizes={ds: len(split) for ds, split in train_splits.items()},
        batch_sizes=batch_sizes,
        world_size=ctx.world_size,
        steps_per_epoch=params.train.steps_per_epoch,
        epochs=params.train.epochs,
        seed=params.train.seed,
        snli_prob_factor=params.data.snli_prob_factor,
        cap_passes=params.train.cap_passes,
    )
    total_steps = sampler.total_steps()
    scheduler = make_scheduler(optimizer, params.train.schedule, total_steps, params.train.warmup_fraction)
    streams = make_streams(train_splits, batch_sizes, params.train.seed, ctx.rank, ctx.world_size)
    if saved is not None:
        saved_state, rng_states = checkpoint.load_checkpoint(paths.checkpoints, model=model,
                                                             optimizer=optimizer, scheduler=scheduler,
                                                             averaged=averaged)
        state = RunState(**saved_state)
        for ds, stream in streams.items():
            stream.load_state_dict(state.streams[ds])
        if ctx.rank < len(rng_states):
            torch.set_rng_state(rng_states[ctx.rank])
        log.info("resuming at step %d of %d (epoch %d, %d steps into it)", state.step, total_steps,
                 state.epoch, state.position)
    elif ctx.distributed:
        # Each rank its own dropout noise (also SimCSE's), as rows in one big batch would get; the weights
        # were initialised above from the shared seed, and DDP copies rank 0's to all ranks anyway.
        torch.manual_seed(params.train.seed + 7919 * ctx.rank)
    ddp_model = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
    ) if ctx.distributed else model
    return Run(params=params, paths=paths, guard=guard, ctx=ctx, train_splits=train_splits,
               dev_splits=dev_splits, special=special, max_length=max_length,
               eval_settings=EvalSettings.for_params(params, special, max_length, device), model=model,
               ddp_model=ddp_model, tokenizer=tokenizer, report=report, optimizer=optimizer, scheduler=scheduler,
               sampler=sampler, total_steps=total_steps, streams=streams, state=state, averaged=averaged)


def training_datasets(params: Params) -> list[str]:
    return [*TASK_DATASET.values(), *params.data.extra]


def load_training_data(params: Params, prepared_root: Path) -> tuple[dict[str, PreparedSplit], dict]:
    """Train splits of every dataset the run uses, and the prepared data's tokenizer description."""
    splits, metas = {}, {}
    for dataset in training_datasets(params):
        split = load_prepared(prepared_root, dataset, "train")
        if split is None or len(split) == 0:
            raise FileNotFoundError(
                f"{prepared_root / dataset}: no prepared train split; run `dvc repro prepare@{dataset}` "
                f"(for extra datasets, the raw files must be fetched: `data.extra` lists {dataset})"
            )
        splits[dataset] = split
        metas[dataset] = read_meta(prepared_root, dataset)
    tokenizers = {m.get("tokenizer") for m in metas.values()}
    if len(tokenizers) != 1:
        raise ValueError(f"prepared datasets were tokenized with different tokenizers: {tokenizers}")
    return splits, metas["sst"]


def make_optimizer(model: torch.nn.Module, params: Params) -> torch.optim.AdamW:
    """AdamW (paper 5.3); the fused kernel where this PyTorch has one for the device."""
    trainable = parameter_groups(model, params.train)  # one group, or one per rate (train.layer_lr_decay, ...)
    kwargs: dict[str, Any] = dict(lr=params.train.lr, betas=(params.train.beta1, params.train.beta2),
                                  weight_decay=params.train.weight_decay)
    try:
        return torch.optim.AdamW(trainable, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(trainable, foreach=True, **kwargs)


def stream_seed(seed: int, dataset: str) -> int:
    """Each dataset's own row order, fixed by ``train.seed`` and the dataset (not by which others are used)."""
    return seed * 1009 + DATASETS.index(dataset)


def make_streams(splits: dict[str, PreparedSplit], batch_sizes: dict[str, int], seed: int, rank: int,
                 world_size: int) -> dict[str, IndexStream]:
    """One length-bucketed, rank-sharded batch stream per training dataset."""
    return {ds: IndexStream(len(split), batch_sizes[ds], seed=stream_seed(seed, ds), rank=rank,
                            world_size=world_size, lengths=split.token_lengths())
            for ds, split in splits.items()}
