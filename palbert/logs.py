"""One logging set-up for every stage, so library code logs through ``logging`` and stages stay thin."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
