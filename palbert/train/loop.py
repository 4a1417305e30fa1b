"""The multi-task training loop, top to bottom: the train stage's recipe.

One run (``train``): ``palbert.train.run.set_up`` loads the prepared splits and builds PAL BERT, its optimizer,
LR schedule and task sampler (or restores them from a checkpoint); then ``train_epoch`` lets the task sampler pick
a dataset for every step (the same on every rank), takes that dataset's next batch (a disjoint shard per rank) and ``train_step`` runs
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

from palbert.atomic import atomic_dir, write_csv, write_json
from palbert.config import DATASET_TASK, DATASETS, EXTRA_DATASETS, TASK_DATASET, TASKS, Params, TrainParams
from palbert.data.batching import TaskBatch, make_batch
from palbert.distributed import launch, needs_launch, shutdown_distributed
from palbert.errors import OutOfMemory, Terminated
from palbert.logs import ProgressBar
from palbert.machine import describe_machine
from palbert.metrics import DEV_METRICS
from palbert.model import save_model
from palbert.model_card import write_model_card
from palbert.paths import PARAMS
from palbert.plots import render_training_plots
from palbert.precision import autocast, precision_reason
from palbert.scoring import dev_metrics, predict_split
from palbert.settings_guard import SettingsGuard, load_guarded
from palbert.tracking import (CONTEXT_TRAINING, CONTEXT_VALIDATION, Tracker, open_run, parameter_counts,
                              project_relative_uri)
from palbert.train import checkpoint, divergence
from palbert.train.losses import rdrop_loss, simcse_loss, task_loss, uses_rdrop
from palbert.train.run import Run, RunState, TrainPaths, set_up

__all__ = ["Run", "RunState", "TrainPaths", "set_up", "train", "train_stage"]

log = logging.getLogger(__name__)


def train_stage() -> int | None:
    """The ``train`` stage (``stages/train.py``): ``params.yaml`` and ``data/prepared/`` -> ``models/best``,
    ``metrics/train.json`` and the plot CSVs; re-launched under torchrun when more than one process is asked for."""
    params, guard = load_guarded(PARAMS)
    if needs_launch(params):
        return launch(params, "stages.train", next_run=lambda: checkpoint.kept_after_failure(TrainPaths().checkpoints))
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
        log.warning("%s at step %d; %s", f"stopped by {exc.signal_name}" if isinstance(exc, Terminated) else
                    "interrupted", state.step, checkpoint.next_run(run.paths.checkpoints, state.fingerprint))
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
        if run.averaged is not None:
            run.averaged.update(run.model)
        task_loss_value = loss.task.item()
        simcse_value = None if loss.simcse is None else loss.simcse.item()
        divergence.check_loss(  # stop at the first NaN, before a checkpoint could keep it
            loss.total.item(), {"task loss": task_loss_value, "SimCSE": simcse_value},
            task=task, step=state.step + 1, epoch=state.epoch, params=params,
            checkpoints=run.paths.checkpoints, fingerprint=state.fingerprint)

        state.position += 1
        state.step += 1
        # extra data (CFIMDB, SNLI) under its own name: its loss is not the task's main dataset's
        curve = task if dataset == TASK_DATASET[task] else dataset
        window.add(curve, task_loss_value, simcse_value, len(batch) * run.ctx.world_size)
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
    """One optimizer step on one task's batch: task loss (+ weighted SimCSE, + weighted R-Drop), backward, AdamW,
    LR step."""
    rdrop = settings.rdrop_weight > 0 and uses_rdrop(batch.task)
    with autocast(precision, device):
        output = model(batch, simcse=settings.simcse, rdrop=True) if rdrop else model(batch, simcse=settings.simcse)
    supervised = task_loss(batch.task, output.prediction, batch.labels, settings.label_smoothing)
    contrastive = None
    loss = supervised
    if settings.simcse:
        contrastive = simcse_loss(output.embedding.float(), output.embedding_again.float(),
                                  settings.simcse_temperature)
        loss = supervised + settings.simcse_weight * contrastive
    if rdrop:
        loss = loss + settings.rdrop_weight * rdrop_loss(batch.task, output.prediction, output.prediction_again)
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
    scored = run.model if run.averaged is None else run.averaged.model  # ``train.ema_decay``: the average
    results = [predict_split(scored, split, task, run.eval_settings, ctx)  # a bar per split, under the training bar
               for task, split in run.dev_splits.items()]
    dev = dev_metrics(results) if ctx.is_main else {}
    if ctx.is_main:
        state.history.setdefault("dev", []).append({"epoch": state.epoch, **dev})
        tracker.log_metrics(dev, step=state.step)  # metrics/dev.json's names: one value per epoch
        log.info("epoch %d dev: %s", state.epoch, _format_metrics(dev))
        score = dev.get("overall", -math.inf)
        if score > state.best_overall:
            state.best_overall, state.best_epoch = score, state.epoch
            save_model(scored, run.tokenizer, run.paths.checkpoints / "best")
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
                                   scheduler=run.scheduler, rng_states=rng_states, state=snapshot,
                                   averaged=run.averaged)
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
        "tracking_uri": project_relative_uri(tracker.tracking_uri, paths.project_root),  # committed: no machine path
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


def _plan_fractions(plan: list[str]) -> dict[str, float]:
    counts: dict[str, int] = defaultdict(int)
    for dataset in plan:
        counts[dataset] += 1
    return {ds: n / max(1, len(plan)) for ds, n in counts.items()}


def write_plots(history: dict[str, list], folder: Path) -> None:
    """CSV files behind `dvc plots` (loss per task, LR, sampling probabilities, dev per epoch)."""
    # the task curves are the supervised losses of the task's main dataset; simcse is the SimCSE term alone (only a
    # header when off, so that dvc.yaml's SimCSE plot always finds its file); an extra dataset's, when it trained
    for name in (*TASKS, "simcse", *(ds for ds in EXTRA_DATASETS if history.get(f"loss_{ds}"))):
        write_csv(folder / f"loss_{name}.csv", ["step", "loss"], history.get(f"loss_{name}", []))
    write_csv(folder / "lr.csv", ["step", "lr"], history.get("lr", []))
    write_csv(folder / "sampling.csv", ["step", *DATASETS],
               [[step, *(probs.get(ds, 0.0) for ds in DATASETS)] for step, probs in history.get("sampling", [])])
    write_csv(folder / "dev_epochs.csv", ["epoch", *DEV_METRICS],
              [[row["epoch"], *(row.get(n, float("nan")) for n in DEV_METRICS)] for row in history.get("dev", [])])


def bar_postfix(window_losses: Mapping[str, list[float]], rate: float) -> dict[str, str]:
    """The bar's mean losses in a fixed order (tasks, then SimCSE), whichever task came first in the window."""
    means = {f"loss_{t}": f"{sum(window_losses[t]) / len(window_losses[t]):.4g}"
             for t in (*TASKS, *EXTRA_DATASETS, "simcse") if window_losses.get(t)}
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
