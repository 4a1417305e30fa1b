"""The multi-task training loop, top to bottom: the train stage's recipe.

One run (``train``): ``set_up`` loads the prepared splits and builds PAL BERT, its optimizer, LR schedule and task
sampler (or restores them from a checkpoint); then ``train_epoch`` lets the task sampler pick a dataset for every
step (the same on every rank), takes that dataset's next batch (a disjoint shard per rank) and ``train_step`` runs
the model with that task's PALs, adds the SimCSE term and takes an AdamW step. After each epoch ``score_epoch``
scores the dev splits and keeps the best epoch's model, and a checkpoint makes a killed run resume exactly;
``write_outputs`` writes the best model, ``metrics/train.json`` and the plot CSVs. The helpers follow the phases.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.nn.parallel import DistributedDataParallel

from palbert.atomic import atomic_dir, check_free_space, check_writable, write_csv, write_json
from palbert.config import DATASET_TASK, DATASETS, TASK_DATASET, TASKS, Params, TrainParams
from palbert.data.batching import SpecialTokens, TaskBatch, make_batch
from palbert.data.prepared import PreparedSplit, load_prepared, read_meta
from palbert.errors import OutOfMemory, Terminated
from palbert.scoring import EvalSettings, dev_metrics, load_eval_splits, predict_split
from palbert.logs import ProgressBar
from palbert.model import MultitaskBert, load_tokenizer, save_model
from palbert.model_card import write_model_card
from palbert.machine import describe_machine
from palbert.metrics import DEV_METRICS
from palbert.plots import render_training_plots
from palbert.precision import autocast, precision_reason
from palbert.settings_guard import SettingsGuard, load_guarded
from palbert.paths import BEST_MODEL, CHECKPOINTS, PARAMS, PREPARED, TRAIN_PLOTS, TRAIN_SUMMARY, find_project_root
from palbert.tracking import CONTEXT_TRAINING, CONTEXT_VALIDATION, Tracker, open_run, parameter_counts
from palbert.train import checkpoint, divergence
from palbert.distributed import DistContext, init_distributed, launch, needs_launch, shutdown_distributed
from palbert.train.losses import simcse_loss, task_loss
from palbert.train.sampling import TaskSampler, dataset_batch_sizes, make_task_sampler
from palbert.train.schedule import make_scheduler
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


def train_stage() -> int | None:
    """The ``train`` stage (``stages/train.py``): ``params.yaml`` and ``data/prepared/`` -> ``models/best``,
    ``metrics/train.json`` and the plot CSVs; re-launched under torchrun when more than one process is asked for."""
    params, guard = load_guarded(PARAMS)
    if needs_launch(params):
        return launch(params, "stages.train")
    try:
        train(params, TrainPaths(), guard=guard)
    finally:
        shutdown_distributed()
    return None


def train(params: Params, paths: TrainPaths, guard: SettingsGuard | None = None) -> dict[str, Any]:
    """Train (or resume) one run; ``guard`` (the stage's) stops it when ``params.yaml`` stops holding ``params``.
    Returns ``metrics/train.json``'s summary (rank 0; ``{}`` on the other ranks)."""
    run = set_up(params, paths, guard)
    # The MLflow run: a resumed training continues its run; a new one checks the server first (an unreachable
    # server stops the run here, before training). Leaving the block ends it: FINISHED, or KILLED by Ctrl-C, or
    # FAILED by an exception.
    with open_run(params, paths.project_root, run_id=run.state.mlflow_run_id, rank=run.ctx.rank) as tracker:
        start_tracking(run, tracker)
        train_epochs(run, tracker)
        summary = write_outputs(run, tracker) if run.ctx.is_main else {}
    run.ctx.barrier()
    return summary


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

    @property
    def precision(self) -> str:
        """bf16 or fp32, resolved once (with its warning) for training and dev scoring alike."""
        return self.eval_settings.precision


# ---- set up --------------------------------------------------------------------------------------------------


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
        checkpoint.resumable_state(paths.checkpoints, state.fingerprint) if ctx.is_main else None)

    # ---- model, optimizer, schedule, sampler
    model = MultitaskBert.from_pretrained(params.model).to(device)
    tokenizer = load_tokenizer(params.model.pretrained)
    report = model.parameter_report()
    if ctx.is_main:
        check_free_space(paths.checkpoints, checkpoint.checkpoint_bytes(model), "a checkpoint of this model")
    optimizer = make_optimizer(model, params)
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
                                                             optimizer=optimizer, scheduler=scheduler)
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
               sampler=sampler, total_steps=total_steps, streams=streams, state=state)


def start_tracking(run: Run, tracker: Tracker) -> None:
    """The run's MLflow id into the state (a resumed run reopens it), the model's size and the datasets it reads."""
    run.state.mlflow_run_id = run.ctx.broadcast_object(tracker.run_id)
    tracker.log_params(parameter_counts(run.report))
    tracker.log_datasets(run.paths.prepared, {CONTEXT_TRAINING: run.train_splits.values(),
                                              CONTEXT_VALIDATION: run.dev_splits.values()})
    params = run.params
    log.info("training %d steps (%d epochs, sampling=%s, precision=%s [%s], %d process(es), batch %d per process)",
             run.total_steps, params.train.epochs, params.train.sampling, run.precision,
             precision_reason(params.train.precision, run.ctx.device), run.ctx.world_size, params.train.batch_size)


# ---- the loop ------------------------------------------------------------------------------------------------


def train_epochs(run: Run, tracker: Tracker) -> None:
    """Every epoch left: its steps, then dev scoring and a checkpoint (a Ctrl-C keeps the last checkpoint)."""
    state, params = run.state, run.params
    run.started = time.perf_counter()
    # in a terminal the bar redraws ~10 times a second; into a log file, an update every 30 s is enough
    progress = ProgressBar(total=run.total_steps, initial=state.step, desc="train", disable=not run.ctx.is_main,
                           mininterval=0.1 if sys.stderr.isatty() else 30.0)
    window = LossWindow()
    run.model.train()
    try:
        while state.epoch <= params.train.epochs:
            train_epoch(run, tracker, progress, window)
            progress.pause()  # scoring time stays out of the bar's rate
            score_epoch(run, tracker)
            state.epoch += 1
            state.position = 0
            state.complete = state.epoch > params.train.epochs
            _save_checkpoint(run)
            window.restart()  # the next window's examples/s: training only
            progress.unpause()  # and the bar's rate and ETA
    except KeyboardInterrupt as exc:
        log.warning("%s at step %d; the next run resumes from the last checkpoint",
                    f"stopped by {exc.signal_name}" if isinstance(exc, Terminated) else "interrupted", state.step)
        raise
    finally:
        progress.close()


def train_epoch(run: Run, tracker: Tracker, progress: ProgressBar, window: LossWindow) -> None:
    """The epoch's steps (from where a resumed run stopped): one task's batch and optimizer step each; the mean
    losses every ``train.log_every`` steps and at the epoch's end; a checkpoint every ``train.checkpoint_every``."""
    state, params = run.state, run.params
    plan = run.sampler.epoch_plan(state.epoch)  # logs the epoch's alpha, probabilities and step counts
    probabilities = run.sampler.probabilities(state.epoch) or _plan_fractions(plan)
    state.epoch_probabilities[str(state.epoch)] = probabilities
    while state.position < len(plan):
        dataset = plan[state.position]
        task = DATASET_TASK[dataset]
        indices = run.streams[dataset].next_batch()
        batch = make_batch(run.train_splits[dataset], indices, task=task, pair_encoding=params.model.pair_encoding,
                           special=run.special, max_length=run.max_length).to(run.ctx.device, non_blocking=True)
        try:
            loss = train_step(run.ddp_model, batch, run.optimizer, run.scheduler, params.train, run.precision,
                              run.ctx.device)
        except torch.OutOfMemoryError:
            raise OutOfMemory(_out_of_memory(batch, state, params, run.ctx.device, run.paths)) from None
        task_loss_value = loss.task.item()
        simcse_value = None if loss.simcse is None else loss.simcse.item()
        divergence.check_loss(  # stop at the first NaN, before a checkpoint could keep it
            loss.total.item(), {"task loss": task_loss_value, "SimCSE": simcse_value},
            task=task, step=state.step + 1, epoch=state.epoch, params=params,
            checkpoints=run.paths.checkpoints, fingerprint=state.fingerprint)

        state.position += 1
        state.step += 1
        window.add(task, task_loss_value, simcse_value, len(batch) * run.ctx.world_size)
        state.examples += len(batch) * run.ctx.world_size
        progress.update(1)
        if state.step % params.train.log_every == 0 or state.position == len(plan):
            log_window(run, tracker, window, probabilities, progress)
        if state.step % params.train.checkpoint_every == 0 and state.position < len(plan):
            _save_checkpoint(run)


@dataclass
class StepLoss:
    """The losses of one step: what was minimised, and its parts (for the per-task loss curves)."""

    total: torch.Tensor
    task: torch.Tensor
    simcse: torch.Tensor | None


def train_step(model: torch.nn.Module, batch: TaskBatch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, settings: TrainParams, precision: str,
               device: torch.device) -> StepLoss:
    """One optimizer step on one task's batch: task loss (+ weighted SimCSE), backward, AdamW, LR step."""
    with autocast(precision, device):
        output = model(batch, simcse=settings.simcse)
    supervised = task_loss(batch.task, output.prediction, batch.labels)
    contrastive = None
    loss = supervised
    if settings.simcse:
        contrastive = simcse_loss(output.embedding.float(), output.embedding_again.float(),
                                  settings.simcse_temperature)
        loss = supervised + settings.simcse_weight * contrastive
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepLoss(loss.detach(), supervised.detach(), None if contrastive is None else contrastive.detach())


@dataclass
class LossWindow:
    """The steps since the last logged line: their losses per task (and SimCSE), examples and start time."""

    losses: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    examples: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, task: str, task_loss: float, simcse: float | None, examples: int) -> None:
        self.losses[task].append(task_loss)
        if simcse is not None:
            self.losses["simcse"].append(simcse)
        self.examples += examples

    def restart(self) -> None:
        self.losses.clear()
        self.examples, self.started = 0, time.perf_counter()


def log_window(run: Run, tracker: Tracker, window: LossWindow, probabilities: Mapping[str, float],
               progress: ProgressBar) -> None:
    """The window's mean losses, the LR, examples/s and sampling probabilities: to MLflow, the plots' history
    and the bar; then a new window."""
    state = run.state
    rate = window.examples / max(time.perf_counter() - window.started, 1e-9)
    lr = run.scheduler.get_last_lr()[0]
    metrics = {"lr": lr, "examples_per_s": rate}
    for t, values in window.losses.items():
        mean = sum(values) / len(values)
        metrics[f"train_loss_{t}"] = mean
        state.history.setdefault(f"loss_{t}", []).append([state.step, mean])
    for ds, p in probabilities.items():
        metrics[f"sampling_p_{ds}"] = p
    state.history.setdefault("lr", []).append([state.step, lr])
    state.history.setdefault("sampling", []).append([state.step, probabilities])
    tracker.log_metrics(metrics, step=state.step)
    progress.set_postfix(bar_postfix(window.losses, rate), refresh=False)  # at the bar's pace
    window.restart()


# ---- score -------------------------------------------------------------------------------------------------


def score_epoch(run: Run, tracker: Tracker) -> None:
    """End of an epoch: score the dev splits (sharded over ranks) and keep the model when it is the best so far."""
    state, ctx = run.state, run.ctx
    scoring_started = time.perf_counter()
    if ctx.is_main:
        log.info("epoch %d: scoring dev (%s)", state.epoch,
                 ", ".join(f"{task} {len(split)} rows" for task, split in run.dev_splits.items()))
    results = [predict_split(run.model, split, task, run.eval_settings, ctx, progress=False)
               for task, split in run.dev_splits.items()]
    dev = dev_metrics(results) if ctx.is_main else {}
    if ctx.is_main:
        state.history.setdefault("dev", []).append({"epoch": state.epoch, **dev})
        tracker.log_metrics({f"dev_{k}": v for k, v in dev.items()}, step=state.step)
        log.info("epoch %d dev: %s", state.epoch, _format_metrics(dev))
        score = dev.get("overall", -math.inf)
        if score > state.best_overall:
            state.best_overall, state.best_epoch = score, state.epoch
            save_model(run.model, run.tokenizer, run.paths.checkpoints / "best")
    state.best_overall, state.best_epoch = ctx.broadcast_object((state.best_overall, state.best_epoch))
    state.scoring_s += time.perf_counter() - scoring_started


def _save_checkpoint(run: Run) -> None:
    """Everything to resume exactly from here (weights, optimizer, schedule, RNG of every rank, streams, state)."""
    ctx, paths, params, guard, state = run.ctx, run.paths, run.params, run.guard, run.state
    divergence.check_weights(run.model, step=state.step, epoch=state.epoch, params=params,
                             checkpoints=paths.checkpoints,
                             fingerprint=state.fingerprint)  # never replace the last good checkpoint with NaN
    # params.yaml must still hold this run's settings (another `dvc exp run` here rewrites it): checked after a
    # checkpoint is written, which keeps the work, but before the final one, as a finished run does not resume
    if guard is not None and ctx.is_main and state.complete:
        guard.check(f"at the end of training (step {state.step})", "the checkpoint before it is kept")
    state.streams = {ds: stream.state_dict() for ds, stream in run.streams.items()}
    rng_states = ctx.all_gather_objects(torch.get_rng_state())
    if ctx.is_main:
        snapshot = dataclasses.asdict(state) | {"elapsed_s": state.elapsed_s + time.perf_counter() - run.started}
        checkpoint.save_checkpoint(paths.checkpoints, model=run.model, optimizer=run.optimizer,
                                   scheduler=run.scheduler, rng_states=rng_states, state=snapshot)
        if state.best_epoch == 0:  # no best model of this run yet: a best/ there is an earlier run's
            shutil.rmtree(paths.checkpoints / "best", ignore_errors=True)
        if guard is not None and not state.complete:
            guard.check(f"at step {state.step}", f"its checkpoint of step {state.step} is kept")
    ctx.barrier()


# ---- write outputs (rank 0) -------------------------------------------------------------------------------------


def write_outputs(run: Run, tracker: Tracker) -> dict[str, Any]:
    """The best epoch's model into ``models/best`` (with its card), ``metrics/train.json`` and the plot CSVs; the
    same, with PNG plots, into the MLflow run. Returns the summary."""
    state, params, paths = run.state, run.params, run.paths
    wall_s = state.elapsed_s + time.perf_counter() - run.started
    if state.best_epoch == 0:  # every epoch scored NaN: there is no best model to keep
        raise divergence.diverged("no epoch scored a finite dev overall", step=state.step,
                                  epoch=params.train.epochs, params=params, checkpoints=paths.checkpoints,
                                  fingerprint=state.fingerprint)
    with atomic_dir(paths.best_model) as folder:  # a crash mid-copy leaves the old model or none, never half
        shutil.copytree(paths.checkpoints / "best", folder, dirs_exist_ok=True)
    best_dev = next(row for row in state.history["dev"] if row["epoch"] == state.best_epoch)
    summary = {
        "steps": state.step,
        "epochs": params.train.epochs,
        "best_epoch": state.best_epoch,
        "best_dev": {k: v for k, v in best_dev.items() if k != "epoch"},
        "dev_per_epoch": state.history["dev"],
        "sampling_probabilities": state.epoch_probabilities,
        "train_wall_s": round(wall_s, 1),
        "dev_scoring_s": round(state.scoring_s, 1),
        "examples_per_s": round(state.examples / max(wall_s - state.scoring_s, 1e-9), 2),  # training time only
        "world_size": run.ctx.world_size,
        "precision": run.precision,
        "machine": describe_machine(),
        "parameters": run.report,
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "tracking_lost": tracker.lost,  # why the MLflow run is incomplete, if its store stopped answering
    }
    write_plots(state.history, paths.plots)
    write_json(paths.summary, summary)
    write_model_card(paths.best_model, params, summary)
    tracker.log_metrics({"train_wall_s": wall_s, "best_epoch": state.best_epoch}, step=state.step)
    tracker.log_artifacts(paths.plots, "plots")
    with tempfile.TemporaryDirectory() as pngs:
        for png in render_training_plots(paths.plots, Path(pngs)):
            tracker.log_artifact(png, "plots")
    tracker.log_artifact(paths.summary, "metrics")
    checkpoint.mark_outputs_written(paths.checkpoints)
    log.info("trained %d steps in %.0f s (%.0f s of it scoring dev; %.1f examples/s while training); "
             "best epoch %d: %s", state.step, wall_s, state.scoring_s, summary["examples_per_s"],
             state.best_epoch, _format_metrics(summary["best_dev"]))
    return summary


# ---- helpers of the phases above ---------------------------------------------------------------------------------


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
    trainable = [p for p in model.parameters() if p.requires_grad]
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


def _plan_fractions(plan: list[str]) -> dict[str, float]:
    counts: dict[str, int] = defaultdict(int)
    for dataset in plan:
        counts[dataset] += 1
    return {ds: n / max(1, len(plan)) for ds, n in counts.items()}


def write_plots(history: dict[str, list], folder: Path) -> None:
    """CSV files behind `dvc plots` (loss per task, LR, sampling probabilities, dev per epoch)."""
    # the task curves are the supervised losses; simcse is the SimCSE term alone (only a header when it is off,
    # so that dvc.yaml's SimCSE plot always finds its file)
    for name in (*TASKS, "simcse"):
        write_csv(folder / f"loss_{name}.csv", ["step", "loss"], history.get(f"loss_{name}", []))
    write_csv(folder / "lr.csv", ["step", "lr"], history.get("lr", []))
    write_csv(folder / "sampling.csv", ["step", *DATASETS],
               [[step, *(probs.get(ds, 0.0) for ds in DATASETS)] for step, probs in history.get("sampling", [])])
    write_csv(folder / "dev_epochs.csv", ["epoch", *DEV_METRICS],
              [[row["epoch"], *(row.get(n, float("nan")) for n in DEV_METRICS)] for row in history.get("dev", [])])


def bar_postfix(window_losses: Mapping[str, list[float]], rate: float) -> dict[str, str]:
    """The bar's mean losses in a fixed order (tasks, then SimCSE), whichever task came first in the window."""
    means = {f"loss_{t}": f"{sum(window_losses[t]) / len(window_losses[t]):.4g}"
             for t in (*TASKS, "simcse") if window_losses.get(t)}
    return means | {"ex/s": f"{rate:.0f}"}


def _out_of_memory(batch: TaskBatch, state: RunState, params: Params, device: torch.device, paths: TrainPaths) -> str:
    """One line for a step that did not fit in memory: where, how big, what to lower, what is kept."""
    saved = checkpoint.read_state(paths.checkpoints)
    kept = (f"the checkpoint of step {saved['step']} is kept (the same settings on more processes resume from it)"
            if saved and saved.get("fingerprint") == state.fingerprint else "no checkpoint of this run yet")
    return (f"out of {device.type.upper()} memory at step {state.step + 1} (task {batch.task}, {len(batch)} rows of "
            f"up to {batch.inputs.input_ids.shape[1]} tokens per process): lower train.batch_size "
            f"({params.train.batch_size}) or data.max_length ({params.data.max_length}), or use more processes; {kept}")


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
