"""Distributed training on real process groups (gloo on CPU; NCCL with ``PALBERT_TEST_BACKEND=nccl``).

What must hold for data-parallel training to be the same training as one process with the global batch:
- N steps of DDP (per-rank batch b, find_unused_parameters, gathered SimCSE) end with the parameters of
  one process with batch ``world * b`` on the same rows, across task switches (inactive PALs get no grad);
  the sharded dev evaluation gives the single-process predictions.
- Every rank draws the same task at every step; the ranks' rows are disjoint and cover the data.
- A killed worker fails the job quickly, naming its rank; the next run resumes from the checkpoint.
- ``dvc repro train`` under torchrun writes one set of outputs and one MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import HAVE_MIRROR, copy_project, project_env, tiny_training_params, use_dvc_cache

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not HAVE_MIRROR, reason="data mirror ../shared/data not present"),
]

#: gloo (default, CPU, 2 processes) or nccl (one process per CUDA GPU).
BACKEND = os.environ.get("PALBERT_TEST_BACKEND", "gloo")
#: Datasets trained in the equivalence run, in order: a single-sentence task, both pair tasks, and
#: back to sst, so that PALs idle for a step (no grad) must stay untouched by DDP and AdamW.
EQUIVALENCE_PLAN = ("sst", "quora", "sts", "sst")
PER_RANK_BATCH = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _world_size() -> int:
    if BACKEND == "nccl":
        if not torch.cuda.is_available():
            pytest.skip("PALBERT_TEST_BACKEND=nccl needs CUDA GPUs")
        return torch.cuda.device_count()
    return 2


def _device(rank: int) -> torch.device:
    return torch.device("cuda", rank) if BACKEND == "nccl" else torch.device("cpu")


# ---- 1. DDP == one process with the global batch ----------------------------------------------------


def _equivalence_params(bert_dir: Path, batch_size: int):
    """Dropout 0 so both runs compute the same function (the two SimCSE views are then identical, yet
    the in-batch negatives still give SimCSE a gradient that is wrong without the cross-rank gather)."""
    return tiny_training_params(bert_dir, model={"encoder_dropout": 0.0, "hidden_dropout": 0.0},
                                train={"batch_size": batch_size, "simcse": True})


def _train_steps(params, prepared: Path, device: torch.device, rank: int, world_size: int, ddp: bool
                 ) -> tuple[torch.nn.Module, list[float]]:
    """The loop's pieces (model, AdamW, LR schedule, IndexStream, make_batch, train_step) for the plan."""
    from torch.nn.parallel import DistributedDataParallel

    from palbert.data.batching import SpecialTokens, make_batch
    from palbert.data.prepared import load_prepared, read_meta
    from palbert.model import MultitaskBert
    from palbert.train.loop import train_step
    from palbert.train.run import make_optimizer, make_streams
    from palbert.train.schedule import make_scheduler

    torch.manual_seed(params.train.seed)
    meta = read_meta(prepared, "sst")
    special = SpecialTokens(cls_id=meta["cls_id"], sep_id=meta["sep_id"], pad_id=meta["pad_id"])
    splits = {ds: load_prepared(prepared, ds, "train") for ds in set(EQUIVALENCE_PLAN)}
    streams = make_streams(splits, {ds: params.train.batch_size for ds in splits}, params.train.seed, rank, world_size)
    model = MultitaskBert.from_pretrained(params.model).to(device)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, "stlr", len(EQUIVALENCE_PLAN), 0.25)  # a changing LR, also under DDP
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True) if ddp else model
    model.train()
    losses = []
    for dataset in EQUIVALENCE_PLAN:
        from palbert.config import DATASET_TASK

        batch = make_batch(splits[dataset], streams[dataset].next_batch(), task=DATASET_TASK[dataset],
                           pair_encoding=params.model.pair_encoding, special=special,
                           max_length=min(params.data.max_length, meta["max_length"])).to(device)
        loss = train_step(wrapped, batch, optimizer, scheduler, params.train, "fp32", device).total
        if ddp:  # each rank's loss is over its shard; their mean is the global batch's loss
            torch.distributed.all_reduce(loss)
            loss /= world_size
        losses.append(loss.item())
    return model, losses


def _dev_predictions(model: torch.nn.Module, prepared: Path, device: torch.device, ctx) -> dict[str, np.ndarray]:
    from palbert.data.batching import SpecialTokens
    from palbert.data.prepared import read_meta
    from palbert.scoring import EvalSettings, load_eval_splits, predict_split

    meta = read_meta(prepared, "sst")
    settings = EvalSettings(pair_encoding="joint", max_length=meta["max_length"], batch_size=16, device=device,
                            precision="fp32",
                            special=SpecialTokens(cls_id=meta["cls_id"], sep_id=meta["sep_id"], pad_id=meta["pad_id"]))
    return {task: predict_split(model, split, task, settings, ctx).predictions
            for task, split in load_eval_splits(prepared, "dev").items()}


def _equivalence_worker(rank: int, world_size: int, port: int, out_dir: str, prepared: str, bert_dir: str) -> None:
    import torch.distributed as dist

    from palbert.distributed import DistContext

    torch.set_num_threads(1)  # two workers share the CI machine's cores
    device = _device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(BACKEND, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        params = _equivalence_params(Path(bert_dir), PER_RANK_BATCH)
        model, losses = _train_steps(params, Path(prepared), device, rank, world_size, ddp=True)
        ctx = DistContext(rank=rank, world_size=world_size, local_rank=rank, device=device)
        sharded = _dev_predictions(model, Path(prepared), device, ctx)
        whole = _dev_predictions(model, Path(prepared), device, None)  # the same model, one process's way
        torch.save({"losses": losses, "state": {k: v.cpu() for k, v in model.state_dict().items()},
                    "sharded": {k: torch.from_numpy(v) for k, v in sharded.items()},
                    "whole": {k: torch.from_numpy(v) for k, v in whole.items()}},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo/autograd threads sometimes abort (see test_losses)


def test_ddp_steps_equal_one_process_with_the_global_batch(tmp_path, tiny_prepared, tiny_bert_dir):
    world_size = _world_size()
    torch.multiprocessing.spawn(_equivalence_worker, nprocs=world_size, join=True,
                                args=(world_size, _free_port(), str(tmp_path), str(tiny_prepared), str(tiny_bert_dir)))

    device = _device(0)
    params = _equivalence_params(tiny_bert_dir, PER_RANK_BATCH * world_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the workers: on a shared CI machine more threads only contend
    try:
        initial = {k: v.clone() for k, v in _initial_model(params, device).state_dict().items()}
        model, losses = _train_steps(params, tiny_prepared, device, rank=0, world_size=1, ddp=False)
        expected = {k: v.cpu() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    assert results[0]["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6), "per-step global loss differs"
    changed = [k for k in expected if not torch.equal(expected[k], initial[k].cpu())]
    assert any(".pals." in k for k in changed), "the plan trained no PAL: the test cannot tell"
    assert any("word_embeddings" in k for k in changed)
    # A real fault (no SimCSE gather, summed instead of averaged gradients, idle PALs moved by AdamW)
    # shifts parameters by about one AdamW step, lr = 1e-3. fp32 reduction order (batch 8 vs 2 x 4) gives
    # ~1e-5, which AdamW's g / sqrt(v) can blow up on near-zero gradients: hence atol 1e-4.
    for result in results:
        for name, want in expected.items():
            got = result["state"][name]
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), (
                f"{name}: max |DDP - single| = {(got - want).abs().max().item():.3g}")
    # sharded dev scoring (each rank a slice, gathered on rank 0) == one process scoring everything
    assert set(results[0]["sharded"]) == {"sst", "para", "sts"}
    # (classes exactly; STS scores up to float noise, since a shard pads its batches differently)
    for task, want in results[0]["whole"].items():
        assert torch.allclose(results[0]["sharded"][task], want, rtol=0, atol=1e-5 if task == "sts" else 0), \
            f"sharded {task} dev predictions differ"


def _initial_model(params, device: torch.device) -> torch.nn.Module:
    from palbert.model import MultitaskBert

    torch.manual_seed(params.train.seed)
    return MultitaskBert.from_pretrained(params.model).to(device)


# ---- 2. same task on every rank, disjoint shards that cover the data --------------------------------


def _plan_worker(rank: int, world_size: int, port: int, out_dir: str, prepared: str, bert_dir: str) -> None:
    """Through init_distributed (torchrun's environment) and the loop's sampler and streams."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from palbert.distributed import init_distributed, shutdown_distributed
    from palbert.train.run import load_training_data, make_streams
    from palbert.train.sampling import dataset_batch_sizes, make_task_sampler
    from palbert.train.streams import IndexStream

    params = _plan_params(Path(bert_dir))
    ctx = init_distributed(params.distributed)
    try:
        splits, _ = load_training_data(params, Path(prepared))
        batch_sizes = dataset_batch_sizes(splits, params.train.batch_size, params.train.cfimdb_batch_size)
        sampler = make_task_sampler(params.train.sampling, sizes={ds: len(s) for ds, s in splits.items()},
                                    batch_sizes=batch_sizes, world_size=ctx.world_size,
                                    steps_per_epoch=params.train.steps_per_epoch, epochs=params.train.epochs,
                                    seed=params.train.seed, snli_prob_factor=params.data.snli_prob_factor)

        def streams() -> dict[str, IndexStream]:
            return make_streams(splits, batch_sizes, params.train.seed, ctx.rank, ctx.world_size)

        plan_streams = streams()
        steps = [(ds, plan_streams[ds].next_batch()) for epoch in range(1, params.train.epochs + 1)
                 for ds in sampler.epoch_plan(epoch)]
        cover_streams = streams()  # a whole pass of every dataset
        passes = {ds: [s.next_batch() for _ in range(math.ceil(len(splits[ds]) / s.global_batch_size))]
                  for ds, s in cover_streams.items()}
        gathered = ctx.all_gather_objects({"steps": steps, "passes": passes,
                                           "sizes": {ds: len(s) for ds, s in splits.items()}})
        if ctx.is_main:
            (Path(out_dir) / "plans.json").write_text(json.dumps(gathered))
    finally:
        shutdown_distributed()
    os._exit(0)  # skip interpreter teardown, where gloo/autograd threads sometimes abort (see test_losses)


def _plan_params(bert_dir: Path):
    return tiny_training_params(bert_dir, data={"extra": ["snli", "cfimdb"]},
                               train={"sampling": "annealed", "epochs": 2, "steps_per_epoch": 15},
                               distributed={"nproc_per_node": 2, "backend": "gloo"})


def test_every_rank_draws_the_same_task_and_a_disjoint_shard(tmp_path, tiny_prepared, tiny_bert_dir):
    from palbert.train.run import stream_seed
    from palbert.train.sampling import dataset_batch_sizes
    from palbert.train.streams import IndexStream

    # spawn: fresh interpreters, each with its own string-hash seed (a plan built from set order would differ)
    torch.multiprocessing.spawn(_plan_worker, nprocs=2, join=True,
                                args=(2, _free_port(), str(tmp_path), str(tiny_prepared), str(tiny_bert_dir)))
    ranks = json.loads((tmp_path / "plans.json").read_text())
    tasks = [[ds for ds, _ in r["steps"]] for r in ranks]
    assert tasks[0] == tasks[1] and len(tasks[0]) == 30
    assert len(set(tasks[0])) >= 3, f"the annealed plan should mix datasets: {tasks[0]}"
    for step, (a, b) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        assert not set(a[1]) & set(b[1]), f"step {step} ({a[0]}): ranks share rows {set(a[1]) & set(b[1])}"
        assert len(a[1]) == len(b[1]) > 0

    params = _plan_params(tiny_bert_dir)
    for ds, n in ranks[0]["sizes"].items():
        global_rows = [row for step in zip(ranks[0]["passes"][ds], ranks[1]["passes"][ds])
                       for shard in step for row in shard]
        assert sorted(global_rows[:n]) == list(range(n)), f"{ds}: one pass of both ranks is not every row once"
        # the same global batches as one process with twice the batch
        per_rank = dataset_batch_sizes([ds], params.train.batch_size, params.train.cfimdb_batch_size)[ds]
        lengths = _lengths(tiny_prepared, ds)
        single = IndexStream(n, 2 * per_rank, seed=stream_seed(params.train.seed, ds), lengths=lengths)
        assert global_rows == [row for _ in ranks[0]["passes"][ds] for row in single.next_batch()]


def _lengths(prepared: Path, dataset: str) -> np.ndarray:
    from palbert.data.prepared import load_prepared

    return load_prepared(prepared, dataset, "train").token_lengths()




# ---- 3 and 4. the train stage under torchrun ---------------------------------------------------------


def _write_params(project: Path, bert_dir: Path, **sections: dict[str, Any]) -> None:
    """The project's params.yaml with the tiny BERT, fp32, and the given overrides per section."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(mirror="", bad_rows="skip", extra=[], subset=48, max_length=64)
    params["model"].update(pretrained=str(bert_dir), pal_size=8, pal_heads=2)
    params["train"].update(epochs=1, steps_per_epoch=4, batch_size=4, checkpoint_every=2, log_every=1,
                           precision="fp32", lr=1e-3, threads=1)
    params["evaluate"].update(batch_size=32)
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _descendant_with_env(pid: int, key: str, value: str) -> int | None:
    for child in _children(pid):
        try:
            environ = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{key}={value}".encode() in environ:
            return child
        found = _descendant_with_env(child, key, value)
        if found is not None:
            return found
    return None


def test_killed_rank_fails_the_job_naming_it_and_the_next_run_resumes(tmp_path, tiny_prepared, tiny_bert_dir):
    project = copy_project(tmp_path / "project")
    shutil.copytree(tiny_prepared, project / "data" / "prepared")
    # long enough that the kill lands mid-run; the first checkpoint comes at step 2
    _write_params(project, tiny_bert_dir, data={"subset": 64}, train={"steps_per_epoch": 60},
                  distributed={"nproc_per_node": 2, "backend": "gloo", "timeout_s": 60})
    env = project_env(project)
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        job = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env, stdout=log_file,
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            checkpoint = project / "checkpoints" / "latest" / "state.json"
            deadline = time.monotonic() + 120
            while not checkpoint.is_file() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert checkpoint.is_file(), "no checkpoint within 120 s:\n" + log_path.read_text()[-3000:]
            victim = _descendant_with_env(job.pid, "RANK", "1")
            assert victim is not None, "rank 1's worker process not found under torchrun"
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            try:
                code = job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("the job still runs 60 s after rank 1 was killed:\n" + log_path.read_text()[-3000:])
            took = time.monotonic() - killed_at
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    output = log_path.read_text()
    assert code != 0, output[-3000:]
    assert took < 60
    assert "rank: 1" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]  # torchrun's failure report
    assert "distributed training failed" in output
    killed_state = json.loads(checkpoint.read_text())
    assert f"its checkpoint of step {killed_state['step']} is kept: the next `dvc repro`" in output, output[-3000:]
    assert not killed_state["complete"] and killed_state["step"] < 60

    # resume with ONE process: the checkpoint is independent of the number of workers
    _write_params(project, tiny_bert_dir, data={"subset": 64}, train={"steps_per_epoch": 60},
                  distributed={"nproc_per_node": 1})
    resumed = subprocess.run([sys.executable, "-m", "stages.train"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming at step {killed_state['step']} of 60" in output, output[-3000:]
    summary = json.loads((project / "metrics" / "train.json").read_text())
    assert summary["steps"] == 60 and summary["world_size"] == 1
    assert summary["mlflow_run_id"] == killed_state["mlflow_run_id"]  # the same MLflow run went on


def test_dvc_repro_train_with_two_processes_writes_one_set_of_outputs(tmp_path, tiny_bert_dir, shared_dvc_cache):
    from mlflow import MlflowClient

    # the data settings of tests/test_dvc_experiments.py's copies: their data stages share DVC's run-cache
    project = use_dvc_cache(copy_project(tmp_path / "project"), shared_dvc_cache)
    _write_params(project, tiny_bert_dir, data={"subset": 32}, distributed={"nproc_per_node": 2, "backend": "gloo"})
    env = project_env(project)
    result = subprocess.run(["dvc", "repro", "train"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "launching 2 workers" in output

    summary = json.loads((project / "metrics" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (project / "models" / "best" / "model.safetensors").is_file() or any((project / "models" / "best").iterdir())
    assert sorted(p.name for p in (project / "metrics" / "plots" / "train").iterdir()) == \
        ["dev_epochs.csv", "loss_para.csv", "loss_simcse.csv", "loss_sst.csv", "loss_sts.csv", "lr.csv",
         "sampling.csv"]
    # one dev row per epoch, and one loss row per logged step: rank 1 wrote nothing over rank 0
    assert len((project / "metrics/plots/train/dev_epochs.csv").read_text().splitlines()) == 2

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 4  # logged once per step, not per rank
