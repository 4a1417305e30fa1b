"""Where each raw file comes from, and the ``fetch`` stage that brings it into ``data/raw/``.

Sources are tried in order: a local mirror folder (``data.mirror``, else ``$PALBERT_DATA_MIRROR``),
then the public URL. Bytes are checked against a known sha256 where one is known (the CS224N
files), else against a size floor, so a truncated download or a wrong file never reaches
``prepare``. Every file lands atomically. When required files cannot be had, one error lists them
all with how to provide them, instead of failing on the first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from palbert.atomic import atomic_path
from palbert.config import DATASETS, EXTRA_DATASETS, Params
from palbert.data.readers import DataError
from palbert.paths import PARAMS, RAW
from palbert.settings_guard import load_guarded

log = logging.getLogger(__name__)

MIRROR_ENV = "PALBERT_DATA_MIRROR"
#: Replaces the scheme and host part of every download URL (``<base>/<file name of the URL>``): for
#: tests of the download path and for an internal HTTP mirror.
DOWNLOAD_BASE_ENV = "PALBERT_DOWNLOAD_BASE"
#: Seconds to wait for a connection or a read; short, so that an offline machine fails fast.
DOWNLOAD_TIMEOUT_S = 15.0

CS224N_BASE = "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data"
SNLI_ZIP_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"


@dataclass(frozen=True)
class RawFile:
    """One raw file of a dataset: where it sits in a mirror, where to download it, how to check it."""

    dataset: str
    split: str  # train | dev | test
    name: str  # file name under data/raw/<dataset>/
    mirror_path: str  # relative to the mirror folder
    url: str
    #: Member to extract when ``url`` is a zip archive.
    zip_member: str | None = None
    #: sha256 of the published bytes, when known.
    sha256: str | None = None
    #: Smallest plausible size in bytes (for files without a known checksum).
    min_bytes: int = 1

    @property
    def labelled(self) -> bool:
        return self.split != "test"


def _cs224n(dataset: str, split: str, name: str, sha256: str | None, min_bytes: int = 1) -> RawFile:
    return RawFile(dataset, split, name, f"cs224n/{name}", f"{CS224N_BASE}/{name}", sha256=sha256,
                   min_bytes=min_bytes)


#: Every raw file, per dataset. The sha256 values are those of the course repository's files
#: (the data mirror holds the same bytes); quora-train.csv has none, because the mirror's copy is a
#: subset of the course file, so the download is only checked for a plausible size.
RAW_FILES: dict[str, tuple[RawFile, ...]] = {
    "sst": (
        _cs224n("sst", "train", "ids-sst-train.csv", "03b2b625c090f94a6afd59f114cde5282e2053aab0b101e87ed695d8a0c5b1df"),
        _cs224n("sst", "dev", "ids-sst-dev.csv", "a186ce94577635fbe10beaaddd50f16cccf6c30973221cefdf90deed2a584bfe"),
        _cs224n("sst", "test", "ids-sst-test-student.csv", "bdd5a767faa0c26782117e37767ece154c30d5d04fb8727d09c71e3850a55c7b"),
    ),
    "quora": (
        _cs224n("quora", "train", "quora-train.csv", None, min_bytes=1_000_000),
        _cs224n("quora", "dev", "quora-dev.csv", "bfa3cc954a9ba300ae776a980141de65f622a3c1b97e3fd905d63245bc36d5ad"),
        _cs224n("quora", "test", "quora-test-student.csv", None, min_bytes=100_000),
    ),
    "sts": (
        _cs224n("sts", "train", "sts-train.csv", "15d12efc2d656fffb1d61ac1f08ec4227f43925fd16f420c037cbd063699c21b"),
        _cs224n("sts", "dev", "sts-dev.csv", "ce3cad6f16062586ac7ba462c28b010a9be10c530fd5074165860d7b7ab4e93d"),
        _cs224n("sts", "test", "sts-test-student.csv", "dee455745b72e9ca3ff74e7c056bd73e34bad5b8d5641045a2c1e7e131866f47"),
    ),
    "cfimdb": (
        _cs224n("cfimdb", "train", "ids-cfimdb-train.csv", "140fc513045a966109faed46a5c7a898767b96714d71bcb9c15f659129fadcea"),
        _cs224n("cfimdb", "dev", "ids-cfimdb-dev.csv", "3087f571b66860fe5d035b5a018d08202ad3fd3720e4821c04b2acf6c7ded559"),
        _cs224n("cfimdb", "test", "ids-cfimdb-test-student.csv", "7ae611548c9eac879e9ebb406cc9f8ae68ff12f78090e4965af5cbdfa06240f4"),
    ),
    "snli": (
        # The official train split is ~470 MB inside a ~95 MB zip whose checksum is not published.
        RawFile("snli", "train", "snli_1.0_train.jsonl", "snli/snli_1.0_train.jsonl", SNLI_ZIP_URL,
                zip_member="snli_1.0/snli_1.0_train.jsonl", min_bytes=1_000_000),
    ),
}


def raw_file(dataset: str, split: str) -> RawFile:
    """The raw file of one split of ``dataset``."""
    found = [raw for raw in RAW_FILES[dataset] if raw.split == split]
    if not found:
        raise KeyError(f"{dataset} has no {split} file (it has {', '.join(raw.split for raw in RAW_FILES[dataset])})")
    return found[0]


def is_required(raw: RawFile, params: Params) -> bool:
    """Train and dev files of the main datasets, and of the extras the params train on; tests never."""
    if raw.split == "test":
        return False
    if raw.dataset in EXTRA_DATASETS:
        return raw.dataset in params.data.extra
    return True


@dataclass
class FetchReport:
    """What ``fetch`` did with each file: ``{"sst/ids-sst-train.csv": "mirror" | "download" | "missing"}``."""

    sources: dict[str, str] = field(default_factory=dict)

    def count(self, source: str) -> int:
        return sum(1 for value in self.sources.values() if value == source)

    def summary(self) -> str:
        return (f"{self.count('mirror')} files from the mirror, {self.count('download')} downloaded, "
                f"{self.count('missing')} optional files missing")


class _DownloadFailed(Exception):
    """A download did not produce a verified file; the message says why."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.reason = reason


def resolve_mirror(params: Params) -> Path | None:
    """The mirror folder from the params, else from the environment; None when neither is set."""
    value = params.data.mirror or os.environ.get(MIRROR_ENV, "")
    return Path(value).expanduser() if value else None


def download_url(raw: RawFile, base: str | None) -> str:
    if not base:
        return raw.url
    return f"{base.rstrip('/')}/{raw.url.rsplit('/', 1)[-1]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(raw: RawFile, path: Path, origin: str) -> None:
    """Raise ``DataError`` unless ``path`` holds the published bytes (or, without a checksum, a plausible size).

    ``origin`` (the mirror file or the URL) is what the message names: ``path`` is a temporary file.
    """
    if raw.sha256 is not None:
        actual = _sha256(path)
        if actual != raw.sha256:
            raise DataError(f"{origin}: sha256 {actual} differs from the published {raw.sha256} of {raw.name} "
                            "(a changed copy: re-saved with other line ends or encoding, or cut short?); put the "
                            "original file there")
    elif path.stat().st_size < raw.min_bytes:
        raise DataError(f"{origin}: {path.stat().st_size} bytes, too small for {raw.name} (at least {raw.min_bytes})")


def not_a_file(path: Path) -> str | None:
    """Why ``path`` exists but is no raw file to read (a folder, a device such as ``/dev/zero`` behind a symlink, a
    broken symlink), else None. Such a path is a mistake to name, not a missing file to download or skip."""
    path = Path(path)
    if not os.path.lexists(path) or path.is_file():
        return None
    link = f"a symlink to {os.readlink(path)}, " if path.is_symlink() else ""
    if not path.exists():
        return f"{link}which does not exist"
    if path.is_dir():
        return f"{link}a folder, not a file"
    return f"{link}not a regular file (a device, pipe or socket)"


def _copy_from_mirror(raw: RawFile, source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        verify(raw, tmp, str(source))


def _stream(url: str, target: Path, timeout: float) -> None:
    """Download ``url`` into ``target`` with a progress bar; network problems become ``_DownloadFailed``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _DownloadFailed(url, str(getattr(exc, "reason", exc))) from None


def _download(raw: RawFile, target: Path, base: str | None, timeout: float) -> None:
    url = download_url(raw, base)
    with atomic_path(target) as tmp:
        if raw.zip_member is None:
            _stream(url, tmp, timeout)
        else:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download.") as scratch:
                archive = Path(scratch) / url.rsplit("/", 1)[-1]
                _stream(url, archive, timeout)
                try:
                    with zipfile.ZipFile(archive) as zf, zf.open(raw.zip_member) as member, tmp.open("wb") as out:
                        shutil.copyfileobj(member, out, 1 << 20)  # zipfile checks the member's CRC
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise _DownloadFailed(url, f"not a zip holding {raw.zip_member}: {exc}") from None
        try:
            verify(raw, tmp, url)
        except DataError as exc:
            raise _DownloadFailed(url, str(exc)) from None


def fetch(
    params: Params,
    raw_root: Path,
    mirror: str | Path | None = None,
    *,
    download_base: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> FetchReport:
    """Bring every raw file into ``raw_root/<dataset>/<file>``: mirror first, then download.

    ``mirror`` overrides ``data.mirror`` / ``$PALBERT_DATA_MIRROR``; ``download_base`` overrides
    ``$PALBERT_DOWNLOAD_BASE``. Missing optional files are logged; missing required files raise one
    ``DataError`` that lists them all and how to provide them.
    """
    raw_root = Path(raw_root)
    mirror_dir = Path(mirror) if mirror else resolve_mirror(params)
    if mirror_dir is not None and not mirror_dir.is_dir():
        # `dvc exp run --temp` and queued experiments run the stage in a temporary copy of the project elsewhere
        relative = "" if mirror_dir.is_absolute() else (
            f" (a relative path, read from {Path.cwd()}: `dvc exp run --temp` and queued experiments run in a "
            "temporary copy of the project, so give the mirror as an absolute path)")
        log.warning("data mirror %s is not a folder%s; trying the download URLs", mirror_dir, relative)
        mirror_dir = None
    base = download_base if download_base is not None else os.environ.get(DOWNLOAD_BASE_ENV) or None
    unreachable: dict[str, str] = {}  # host -> first failure, so an offline run tries each host once
    report = FetchReport()
    missing_required: list[tuple[RawFile, str]] = []

    for dataset in DATASETS:
        for raw in RAW_FILES[dataset]:
            key = f"{dataset}/{raw.name}"
            target = raw_root / dataset / raw.name
            source = mirror_dir / raw.mirror_path if mirror_dir is not None else None
            for path in (source, target):
                if path is not None and (why := not_a_file(path)):
                    raise DataError(f"{path}: {why}; put the raw file itself there (or remove it to fetch it anew)")
            if source is not None and source.is_file():
                _copy_from_mirror(raw, source, target)
                report.sources[key] = "mirror"
                continue
            if mirror_dir is not None and not is_required(raw, params):
                # a mirror is the offline source: an optional file it lacks is not worth a network attempt
                report.sources[key] = "missing"
                log.info("optional file %s not in the mirror %s; carrying on without it", key, mirror_dir)
                continue
            url = download_url(raw, base)
            host = urllib.parse.urlsplit(url).netloc
            why = unreachable.get(host)
            if why is None:
                try:
                    log.info("downloading %s", url)
                    _download(raw, target, base, timeout)
                    report.sources[key] = "download"
                    continue
                except _DownloadFailed as exc:
                    why = str(exc)
                    if _is_connection_failure(exc.reason):
                        unreachable[host] = f"{host} unreachable ({exc.reason})"
            report.sources[key] = "missing"
            if is_required(raw, params):
                missing_required.append((raw, why))
            else:
                log.info("optional file %s not available (%s); carrying on without it", key, why)

    if missing_required:
        raise DataError(_missing_message(missing_required, raw_root, mirror_dir))
    log.info("fetch: %s", report.summary())
    return report


def fetch_stage() -> None:
    """The ``fetch`` stage (``stages/fetch.py``): ``params.yaml`` -> ``data/raw/``, a one-line summary."""
    params, guard = load_guarded(PARAMS)
    report = fetch(params, RAW)
    guard.check("at the end of the stage")
    log.info("fetch: %s", report.summary())


def _is_connection_failure(why: str) -> bool:
    """A failure that will repeat for every file on the same host (no network, refused, timed out)."""
    markers = ("Name or service not known", "Temporary failure in name resolution", "Connection refused",
               "timed out", "Network is unreachable", "No route to host", "nodename nor servname")
    return any(marker in why for marker in markers)


def _missing_message(missing: list[tuple[RawFile, str]], raw_root: Path, mirror_dir: Path | None) -> str:
    where = f"the mirror {mirror_dir}" if mirror_dir is not None else "no mirror (data.mirror and $PALBERT_DATA_MIRROR unset)"
    lines = [f"{len(missing)} required raw files could not be fetched ({where}, downloads failed):"]
    for raw, why in missing:
        lines.append(f"  - {raw_root / raw.dataset / raw.name}: expected at <mirror>/{raw.mirror_path} "
                     f"or {raw.url}{f' (zip member {raw.zip_member})' if raw.zip_member else ''}; {why}")
    lines.append(
        "Provide them by setting data.mirror in params.yaml or the environment variable "
        f"{MIRROR_ENV} to a folder holding cs224n/ and snli/, as an absolute path (e.g. \"$PWD/../shared/data\"), "
        "or run with internet access."
    )
    return "\n".join(lines)
