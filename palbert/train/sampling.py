"""Which dataset trains at each step: the paper's task samplers (section 4.1, Annealed Sampling).

Every rank of a distributed run must train the same task at the same step, and a resumed run must
repeat the steps it lost. So an epoch's plan (the dataset of every step) is a pure function of
``(seed, epoch)``: it is drawn from a NumPy generator seeded with both, never from a global RNG.

A *step* is one global batch: ``batch_sizes[dataset] * world_size`` rows split across the ranks.

Kinds:
- ``sequential``: each epoch is a whole pass over every dataset, one after the other, grouped by task
  as in the paper (sentiment, paraphrase, similarity): sst, cfimdb, quora, snli, sts.
- ``round_robin``: one batch of each dataset in turn (same order) until the dataset with the fewest
  batches per pass is exhausted.
- ``annealed``: each step draws a dataset with p_i ∝ N_i^α, α = 1 − 0.8·(e − 1)/(E − 1) for epoch
  e = 1..E (α = 1 when E = 1), so training starts size-proportional and ends closer to uniform.
- ``proportional`` (α = 1) and ``uniform`` (α = 0): the same draw with a fixed α.

For the three drawn kinds SNLI's probability is divided by ``snli_prob_factor`` and the rest
renormalised (paper 5.3: SNLI is so large it would crowd out the main datasets). With ``uniform`` this
makes SNLI less likely than the others; set the factor to 1 for an exactly uniform draw.
``sequential`` and ``round_robin`` ignore ``steps_per_epoch``: their epoch length follows the data,
unless ``cap_passes``: then an epoch stops after ``steps_per_epoch`` steps as well. A capped
round-robin epoch takes the same number of batches of each dataset; a capped sequential epoch keeps
the order but shrinks each dataset's block in proportion to its whole pass (largest remainders), so
every kind of sampler sees about as many examples per epoch (reduced-scale ablations, Table 3).
"""

from __future__ import annotations

import logging
import math
import typing
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from palbert.config import TrainParams
from palbert.tasks import DATASET_TASK, DATASETS, TASKS

log = logging.getLogger(__name__)

#: ``train.sampling``'s choices, as config.py declares them.
SAMPLING_KINDS: tuple[str, ...] = typing.get_args(typing.get_type_hints(TrainParams)["sampling"])
#: Order of datasets in sequential and round-robin epochs: grouped by task sst → para → sts.
PLAN_ORDER: tuple[str, ...] = tuple(d for task in TASKS for d in DATASETS if DATASET_TASK[d] == task)
#: Keeps plan draws apart from other generators seeded with the same run seed.
_PLAN_STREAM = 0x5A4D
_FINAL_ALPHA_DROP = 0.8


def annealed_alpha(epoch: int, epochs: int) -> float:
    """α for epoch ``epoch`` of ``epochs`` (1-based): 1 at the first epoch, 0.2 at the last."""
    if epochs == 1:
        return 1.0
    return 1.0 - _FINAL_ALPHA_DROP * (epoch - 1) / (epochs - 1)


def dataset_batch_sizes(datasets: Iterable[str], batch_size: int, cfimdb_batch_size: int) -> dict[str, int]:
    """Per-rank batch size of each dataset: CFIMDB reviews are long, so they get their own (paper 5.3)."""
    return {name: cfimdb_batch_size if name == "cfimdb" else batch_size for name in datasets}


@dataclass(frozen=True)
class TaskSampler:
    """The dataset of every step of every epoch; see the module docstring for the kinds."""

    kind: str
    sizes: Mapping[str, int]
    batch_sizes: Mapping[str, int]
    world_size: int
    steps_per_epoch: int
    epochs: int
    seed: int
    snli_prob_factor: float = 10.0
    cap_passes: bool = False
    datasets: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in SAMPLING_KINDS:
            raise ValueError(f"sampling kind {self.kind!r}: must be one of {', '.join(SAMPLING_KINDS)}")
        unknown = sorted(set(self.sizes) - set(DATASETS))
        if unknown:
            raise ValueError(f"unknown dataset {unknown[0]!r}: known datasets are {', '.join(DATASETS)}")
        if not self.sizes:
            raise ValueError("no training datasets given")
        for name, size in self.sizes.items():
            if size < 1:
                raise ValueError(f"dataset {name!r} has {size} training rows; need at least one")
            if self.batch_sizes.get(name, 0) < 1:
                raise ValueError(f"dataset {name!r}: batch size missing or < 1 in {dict(self.batch_sizes)}")
        for name in ("world_size", "steps_per_epoch", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.snli_prob_factor > 0:
            raise ValueError(f"snli_prob_factor must be > 0, got {self.snli_prob_factor}")
        object.__setattr__(self, "datasets", tuple(name for name in PLAN_ORDER if name in self.sizes))

    def _check_epoch(self, epoch: int) -> None:
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch {epoch} out of range 1..{self.epochs}")

    def batches_per_pass(self, dataset: str) -> int:
        """Global batches that cover ``dataset`` once (the last one wraps into the next pass)."""
        return math.ceil(self.sizes[dataset] / (self.batch_sizes[dataset] * self.world_size))

    def alpha(self, epoch: int) -> float | None:
        """The exponent of the size-based draw in ``epoch``; None for the kinds that do not draw."""
        self._check_epoch(epoch)
        if self.kind == "annealed":
            return annealed_alpha(epoch, self.epochs)
        return {"proportional": 1.0, "uniform": 0.0}.get(self.kind)

    def probabilities(self, epoch: int) -> dict[str, float] | None:
        """p(dataset) for each step of ``epoch``; None for ``sequential`` and ``round_robin``."""
        alpha = self.alpha(epoch)
        if alpha is None:
            return None
        weights = {name: float(self.sizes[name]) ** alpha for name in self.datasets}
        if "snli" in weights:
            weights["snli"] /= self.snli_prob_factor
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    def sequential_blocks(self) -> dict[str, int]:
        """Batches of each dataset in a sequential epoch: whole passes, or shrunk to the cap in proportion."""
        passes = {name: self.batches_per_pass(name) for name in self.datasets}
        total = sum(passes.values())
        if not self.cap_passes or total <= self.steps_per_epoch:
            return passes
        if self.steps_per_epoch < len(passes):
            raise ValueError(f"steps_per_epoch {self.steps_per_epoch} cannot hold one batch of each of "
                             f"{len(passes)} datasets in a capped sequential epoch")
        shares = {name: self.steps_per_epoch * n / total for name, n in passes.items()}
        blocks = {name: max(1, math.floor(share)) for name, share in shares.items()}
        by_remainder = sorted(passes, key=lambda name: shares[name] - math.floor(shares[name]), reverse=True)
        for name in by_remainder[: self.steps_per_epoch - sum(blocks.values())]:
            blocks[name] += 1
        return blocks

    def steps_in_epoch(self, epoch: int) -> int:
        self._check_epoch(epoch)
        if self.kind == "sequential":
            return sum(self.sequential_blocks().values())
        if self.kind == "round_robin":
            rounds = min(self.batches_per_pass(name) for name in self.datasets)
            if self.cap_passes:
                rounds = max(1, min(rounds, self.steps_per_epoch // len(self.datasets)))
            return len(self.datasets) * rounds
        return self.steps_per_epoch

    def total_steps(self) -> int:
        """Steps of the whole run, for the LR schedule."""
        return sum(self.steps_in_epoch(epoch) for epoch in range(1, self.epochs + 1))

    def epoch_plan(self, epoch: int) -> list[str]:
        """The dataset of every step of ``epoch``: the same on every rank and in a resumed run."""
        steps = self.steps_in_epoch(epoch)
        if self.kind == "sequential":
            plan = [name for name, count in self.sequential_blocks().items() for _ in range(count)]
        elif self.kind == "round_robin":
            plan = list(self.datasets) * (steps // len(self.datasets))
        else:
            probabilities = self.probabilities(epoch)
            assert probabilities is not None
            rng = np.random.default_rng([self.seed, epoch, _PLAN_STREAM])
            draws = rng.choice(len(self.datasets), size=steps, p=list(probabilities.values()))
            plan = [self.datasets[i] for i in draws]
        self._log_epoch(epoch, plan)
        return plan

    def _log_epoch(self, epoch: int, plan: list[str]) -> None:
        counts = {name: plan.count(name) for name in self.datasets}
        probabilities = self.probabilities(epoch)
        if probabilities is None:
            log.info("epoch %d/%d: %s sampling, %d steps %s", epoch, self.epochs, self.kind, len(plan), counts)
        else:
            shown = {name: round(p, 4) for name, p in probabilities.items()}
            log.info(
                "epoch %d/%d: %s sampling, alpha=%.3f, p=%s, %d steps %s",
                epoch, self.epochs, self.kind, self.alpha(epoch), shown, len(plan), counts,
            )


def make_task_sampler(
    kind: str,
    sizes: Mapping[str, int],
    batch_sizes: Mapping[str, int],
    world_size: int,
    steps_per_epoch: int,
    epochs: int,
    seed: int,
    snli_prob_factor: float = 10.0,
    cap_passes: bool = False,
) -> TaskSampler:
    """Build the sampler for ``train.sampling``; ``sizes`` are training rows per dataset."""
    return TaskSampler(
        kind=kind,
        sizes=dict(sizes),
        batch_sizes=dict(batch_sizes),
        world_size=world_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        seed=seed,
        snli_prob_factor=snli_prob_factor,
        cap_passes=cap_passes,
    )
