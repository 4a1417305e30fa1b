"""Installing without network: with PALBERT_WHEELHOUSE set, scripts/setup.sh (through scripts/wheelhouse.sh) makes
pip take every package from that folder and never contact an index. Real pip on a wheelhouse of small wheels
written here (the real one holds PyTorch, which is not downloaded for a test)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel holding one module, `name`, whose VERSION is `version`."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {requirement}\n" for requirement in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def pip_install(wheelhouse: str, target: Path, *packages: str, cwd: Path) -> subprocess.CompletedProcess:
    """`pip install` the way setup.sh runs it: after sourcing scripts/wheelhouse.sh with PALBERT_WHEELHOUSE set.
    The index points at a closed port and pip's site config is ignored, so a package found anywhere but the
    wheelhouse would show up as a failure."""
    env = {**os.environ, "PALBERT_WHEELHOUSE": wheelhouse, "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_FIND_LINKS", None)
    command = f'. "{ROOT / "scripts" / "wheelhouse.sh"}" && "{sys.executable}" -m pip install --target "{target}" ' \
              + " ".join(packages)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_packages_and_their_dependencies_come_from_the_wheelhouse(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    write_wheel(wheelhouse, "palbert_tiny_app", "1.0", requires=("palbert_tiny_lib==2.0",))
    write_wheel(wheelhouse, "palbert_tiny_lib", "2.0")
    # a relative folder is taken from the caller's directory, as setup.sh reads it before it changes directory
    done = pip_install("wheelhouse", tmp_path / "site", "palbert_tiny_app==1.0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "palbert_tiny_app" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    assert (tmp_path / "site" / "palbert_tiny_lib" / "__init__.py").read_text() == "VERSION = '2.0'\n"


def test_a_package_the_wheelhouse_lacks_stops_without_trying_an_index(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    write_wheel(wheelhouse, "palbert_tiny_app", "1.0", requires=("palbert_tiny_lib==2.0",))
    done = pip_install(str(wheelhouse), tmp_path / "site", "palbert_tiny_app==1.0", cwd=tmp_path)
    assert done.returncode != 0
    assert "No matching distribution found for palbert_tiny_lib" in done.stderr.replace("-", "_"), done.stderr
    assert "127.0.0.1" not in done.stdout + done.stderr, "pip tried the index"


def test_a_missing_wheelhouse_is_one_line_naming_it(tmp_path):
    done = pip_install(str(tmp_path / "nowhere"), tmp_path / "site", "palbert_tiny_app", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"PALBERT_WHEELHOUSE={tmp_path / 'nowhere'}: no such folder (make one with scripts/make_wheelhouse.sh)"]
    assert not (tmp_path / "site").exists()


def test_setup_and_make_wheelhouse_use_it():
    """setup.sh sources wheelhouse.sh before its first pip call; make_wheelhouse.sh downloads what setup.sh installs."""
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert setup.index('. "$(dirname "$0")/wheelhouse.sh"') < setup.index("pip install")
    make = (ROOT / "scripts" / "make_wheelhouse.sh").read_text(encoding="utf-8")
    assert "${PALBERT_TORCH:-torch==2.13.0}" in setup and "${PALBERT_TORCH:-torch==2.13.0}" in make
    assert "-r requirements-lock.txt" in setup and "-r requirements-lock.txt" in make
