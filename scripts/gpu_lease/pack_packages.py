"""The Python packages palbert's Table 3 needs that a GPU machine's image lacks, packed from this venv.

    python pack_packages.py DEVICE_PACKAGES.txt OUT.tar.xz dvc mlflow

DEVICE_PACKAGES.txt: the names the machine already has (whitespace-separated; the device tool's KINDS.md lists
them). Walks the requirements of the named distributions, skips what the machine has, and packs the files of
the rest from this venv: pure Python, and compiled extensions only in the stable ABI (``abi3``), which load on
the machine's newer Python too. Prints the distributions whose compiled parts were left out: download their
wheels for the machine's Python (README.md) and carry them beside the tarball. Leaves out ``__pycache__`` and
MLflow's web UI (the runs do not serve it).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
import tarfile

from packaging.markers import Marker
from packaging.requirements import Requirement

TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(roots: list[str], present: set[str]) -> list[md.Distribution]:
    seen: set[str] = set()
    found: list[md.Distribution] = []

    def visit(name: str) -> None:
        if norm(name) in seen:
            return
        seen.add(norm(name))
        if norm(name) in present:
            return
        dist = md.distribution(name)
        found.append(dist)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or Marker(str(requirement.marker)).evaluate(TARGET):
                visit(requirement.name)

    for root in roots:
        visit(root)
    return found


def main(device_list: str, out: str, *roots: str) -> None:
    present = {norm(name) for name in open(device_list, encoding="utf-8").read().split()}
    compiled, written, members = [], set(), 0
    with tarfile.open(out, "w:xz", preset=6) as tar:
        for dist in needed(list(roots), present):
            for file in dist.files or []:
                name = str(file)
                if "__pycache__" in name or name.startswith(("..", "mlflow/server/js")) or name in written:
                    continue
                if (name.endswith(".so") or ".so." in name) and "abi3" not in name:
                    compiled.append(f"{dist.metadata['Name']}=={dist.version}")
                    continue
                path = dist.locate_file(file)
                if path.is_file():
                    tar.add(str(path), arcname=name)
                    written.add(name)
                    members += 1
    print(f"{out}: {members} files, {os.path.getsize(out) / 1e6:.1f} MB")
    print("carry as cp312 wheels:", " ".join(sorted(set(compiled))))


if __name__ == "__main__":
    main(*sys.argv[1:])
