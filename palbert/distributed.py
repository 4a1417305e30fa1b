"""PyTorch's own distributed engine for the train stage: torchrun launches, DDP averages gradients.

The same code runs as one plain process (a laptop CPU) or as N torchrun workers (gloo on CPUs, NCCL on
GPUs). Everything rank-specific lives here so that the training loop reads the same in both cases.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from palbert.config import DistributedParams, Params
from palbert.errors import Terminated

log = logging.getLogger(__name__)

#: Set in the environment of the torchrun workers we launch, so that a worker never launches again.
LAUNCHED_ENV = "PALBERT_TORCHRUN_CHILD"


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one outside a distributed run)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def torchrun_command(params: DistributedParams, module: str, args: Sequence[str] = ()) -> list[str]:
    """The torchrun command line that runs ``python -m module`` on ``nproc_per_node`` x ``nnodes`` workers."""
    torchrun = shutil.which("torchrun") or ""
    base = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    rendezvous = (
        ["--standalone"]
        if params.nnodes == 1
        else ["--rdzv-backend", "c10d", "--rdzv-endpoint", params.rdzv_endpoint]
    )
    return [
        *base,
        "--nnodes",
        str(params.nnodes),
        "--nproc-per-node",
        str(params.nproc_per_node),
        *rendezvous,
        "--max-restarts",
        "0",
        "--module",
        module,
        *args,
    ]


def needs_launch(params: Params) -> bool:
    """True in the first, plain process of a run that asks for more than one worker."""
    return params.world_size > 1 and "LOCAL_RANK" not in os.environ and LAUNCHED_ENV not in os.environ


def launch(params: Params, module: str, args: Sequence[str] = (), next_run: Callable[[], str] | None = None) -> int:
    """Run ``python -m module`` under torchrun; a failed worker fails the whole job (torchrun names its rank).
    ``next_run`` says, once the job has failed, what the next run will find (e.g. a checkpoint to resume from)."""
    command = torchrun_command(params.distributed, module, args)
    log.info("launching %d workers: %s", params.world_size, " ".join(command))
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    with subprocess.Popen(command, env=env) as torchrun:
        try:
            returncode = torchrun.wait()
        except KeyboardInterrupt as exc:
            # SIGTERM / SIGHUP reached only this process (``kill <pid>``): pass it on, so that torchrun stops every
            # worker the same way and they keep their checkpoint and end the MLflow run, then wait for them.
            # (Ctrl-C reaches the whole process group by itself.)
            if isinstance(exc, Terminated):
                torchrun.send_signal(exc.signum)
            torchrun.wait()
            raise
    if returncode != 0:
        log.error(
            "distributed training failed (torchrun exit code %d); see the 'Root Cause' block above for the "
            "rank that failed%s.",
            returncode, f"; {next_run()}" if next_run else "",
        )
    return returncode


def _backend(choice: str) -> str:
    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(params: DistributedParams) -> DistContext:
    """Join the process group torchrun set up (or describe the single process when there is none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = _backend(params.backend)
        if backend == "nccl" and device.type != "cuda":
            raise RuntimeError("distributed.backend=nccl needs CUDA GPUs; use gloo (or auto) on CPUs")
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=params.timeout_s),
            device_id=device if backend == "nccl" else None,
        )
        log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
