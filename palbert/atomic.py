"""Atomic file and folder writes (an interrupted stage leaves either the old output or the new one, never half a
file), and the one checked reader of the small JSON files they write."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from palbert.errors import OutputUnwritable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Less free space than this after a failed write: the disk is full, whatever the library said.
FULL_DISK_BYTES = 1 << 20


def _disk_full(exc: Exception, path: Path) -> OSError | None:
    """A write that failed on a full disk, as ``OSError(ENOSPC)`` naming ``path``; None for other failures.

    Libraries say it in their own words (safetensors: ``I/O error ... os error 28``; ``torch.save``: ``unexpected
    pos``), which the stage runner cannot tell from a bug; an ``OSError`` with an errno is left as it is.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return None
    full = "No space left on device" in str(exc) or "os error 28" in str(exc)
    if not full:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else None


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        full = _disk_full(exc, path)
        if full is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be readable like any file
    try:
        with _disk_errors(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _disk_errors(path):
            yield tmp
        _readable(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readable(folder: Path) -> None:
    """Give the files in ``folder`` the modes of ordinary new files: some writers (safetensors' ``save_file``)
    create them 0600, and a model folder should be readable by whoever may read the project."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode | (path.stat().st_mode & 0o111))


def recover_dir(path: str | Path) -> bool:
    """Undo what a crash (power loss, SIGKILL) in ``atomic_dir`` left: the previous folder only as ``.<name>.old``
    (the crash fell between its two renames) is put back, and temp folders of writes that never finished are
    removed (each can be a whole checkpoint). True when the folder was put back. Call it with no writer running.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    restored = not path.exists() and old.is_dir()
    if restored:
        os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)
    return restored


def write_problem(folder: str | Path) -> str | None:
    """Why files cannot be written into ``folder`` (or, when it does not exist yet, created there), else None.

    A real probe (a temp file made and removed), not ``os.access``: root writes through modes but not through a
    read-only mount or an immutable flag.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return f"{existing} is a symlink to {os.readlink(existing)}, which does not exist"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".palbert-write-check.", dir=existing)
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(name)
    return None


def check_writable(folders: Mapping[str, str | Path]) -> None:
    """Raise ``OutputUnwritable`` naming the first of ``{what: folder}`` that cannot be written: called before a
    stage starts its work, so that a read-only ``checkpoints/`` costs seconds, not the steps up to the first save."""
    for what, folder in folders.items():
        problem = write_problem(folder)
        if problem:
            raise OutputUnwritable(f"{folder} ({what}): {problem}; fix it (`chmod u+w`, free the path, another "
                                   "disk) before running")


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Raise ``OutputUnwritable`` when the disk holding ``folder`` has less than ``needed_bytes`` free."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OutputUnwritable(f"{folder}: {free / 2**20:.0f} MiB free on its disk, {what} needs at least "
                               f"{needed_bytes / 2**20:.0f} MiB: free some space (or move it to another disk) "
                               "before running")


def read_json_object(path: Path, error: type[Exception], missing: str) -> dict[str, Any]:
    """The read side: a JSON object file, or one ``error`` naming the path (missing, not JSON, not an object)."""
    if not path.is_file():
        raise error(f"{path}: missing ({missing})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data
