"""Endless shuffled index batches over one dataset, sharded across data-parallel ranks.

Each step consumes one *global* batch of ``batch_size * world_size`` rows from the current pass's
permutation, and rank r takes rows ``[r*b, (r+1)*b)`` of it. Hence 2 ranks with batch b see exactly
the rows that 1 rank with batch 2b sees, the ranks' rows are disjoint within a pass, and together
they cover it. The permutation of pass p comes from a NumPy generator seeded with ``(seed, p)``, so
no global RNG is touched and every rank computes the same order without talking to the others.

The tail of a pass that is smaller than a global batch is not dropped and not padded: the batch is
completed with the first rows of the next pass. Every rank therefore always gets exactly
``batch_size`` rows (DDP and the SimCSE all-gather need equal shapes), no row is skipped, and a row
can at most appear twice in the one batch that straddles two passes.

The position is counted in global rows (pass number + rows of that pass consumed), so a run resumed
from ``state_dict()`` continues exactly, also with a different ``world_size``.

Optional length bucketing (``lengths`` given) saves padding: within chunks of ``bucket_batches``
global batches of the permutation, rows are sorted by length, cut into global batches, and the order
of those batches is shuffled (from the same seeded generator). The cut points line up with the
real batch boundaries even when a batch straddles two passes: the layout of a pass records how many
leading rows (``head``) finish the previous batch and the global batch size it was cut for
(``block``); both are part of the state, so a resume keeps the current pass's order unchanged.

Give each dataset its own seed (for example ``seed + index``) so that their orders differ.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

#: Keeps stream draws apart from other generators seeded with the same run seed.
_STREAM_STREAM = 0x1D5


class IndexStream:
    """Rank ``rank``'s share of an endless stream of shuffled global batches over ``n`` rows."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 50,
    ) -> None:
        if n < 1:
            raise ValueError(f"IndexStream needs at least one row, got n={n}")
        if batch_size < 1 or world_size < 1 or bucket_batches < 1:
            raise ValueError(
                f"batch_size, world_size and bucket_batches must be >= 1, got {batch_size}, {world_size}, {bucket_batches}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} rows")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_batches = bucket_batches
        self._pass = 0
        self._position = 0
        self._head = 0
        self._block = self.global_batch_size
        self._order = self._pass_order()

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _pass_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self._pass, _STREAM_STREAM])
        order = rng.permutation(self.n)
        if self.lengths is None:
            return order
        return _bucketed(order, self.lengths, self._head, self._block, self.bucket_batches, rng)

    def _start_pass(self, head: int) -> None:
        self._pass += 1
        self._position = 0
        self._head = head
        self._block = self.global_batch_size
        self._order = self._pass_order()

    def next_global_batch(self) -> np.ndarray:
        """The next global batch (all ranks' rows, rank 0's first)."""
        rows: list[np.ndarray] = []
        need = self.global_batch_size
        while need:
            take = min(need, self.n - self._position)
            rows.append(self._order[self._position : self._position + take])
            self._position += take
            need -= take
            if self._position == self.n:
                self._start_pass(head=need)
        return np.concatenate(rows)

    def next_batch(self) -> list[int]:
        """This rank's ``batch_size`` row indices for the next step."""
        start = self.rank * self.batch_size
        return self.next_global_batch()[start : start + self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Plain ints: where the stream stands, in global rows, independent of rank and world size."""
        return {
            "n": self.n,
            "seed": self.seed,
            "pass": self._pass,
            "position": self._position,
            "head": self._head,
            "block": self._block,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the data (n) and the seed must be the ones it was saved with."""
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise ValueError(
                f"stream state is for n={state['n']}, seed={state['seed']}; this stream has n={self.n}, seed={self.seed}"
            )
        self._pass = int(state["pass"])
        self._position = int(state["position"])
        self._head = int(state["head"])
        self._block = int(state["block"])
        self._order = self._pass_order()


def _bucketed(
    order: np.ndarray, lengths: np.ndarray, head: int, block: int, bucket_batches: int, rng: np.random.Generator
) -> np.ndarray:
    """``order`` with similar lengths grouped into batches of ``block`` rows after the first ``head``."""
    pieces = [order[:head]]
    chunk = block * bucket_batches
    for start in range(head, len(order), chunk):
        rows = order[start : start + chunk]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        full = len(rows) // block
        batches = [rows[i * block : (i + 1) * block] for i in range(full)]
        pieces.extend(batches[i] for i in rng.permutation(full))
        pieces.append(rows[full * block :])  # a partial batch only ends the pass: it stays last
    return np.concatenate(pieces)
