"""Writes the README's headline Table 3 (the paper-scale table beside the reduced one's verdicts) from the
committed table.json files, between the README's `<!-- table3:full:start/end -->` markers.

    python scripts/readme_table3.py        # after `palbert table3 --rebuild --scale full`
tests/test_committed_results.py checks that the README holds exactly what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from palbert.atomic import write_text
from palbert.params_file import TABLE3_FILE, load_params, load_table3
from palbert.table3.report import readme_block, replace_marked_block

ROOT = Path(__file__).resolve().parents[1]
FULL, REDUCED, REDUCED_DOC, BLOCK = "results/table3/full", "results/table3/reduced", "docs/table3.md", "table3:full"


def block() -> str:
    full, reduced = (json.loads((ROOT / folder / "table.json").read_text(encoding="utf-8")) for folder in (FULL, REDUCED))
    return readme_block(full, reduced, load_table3(ROOT / TABLE3_FILE, load_params(ROOT / "params.yaml")).table3.seeds, FULL, REDUCED_DOC)


if __name__ == "__main__":
    readme = ROOT / "README.md"
    write_text(readme, replace_marked_block(readme.read_text(encoding="utf-8"), BLOCK, block()))
    print(f"wrote the {BLOCK} block of {readme}")
