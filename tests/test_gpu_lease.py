"""scripts/gpu_lease/weights_planes.py: the encoder's weights split into byte planes come back byte for byte."""
from __future__ import annotations

import lzma
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_lease" / "weights_planes.py"


def _planes(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False, capture_output=True, text=True)


def test_weights_split_into_planes_join_back_identical_and_a_damaged_plane_is_refused(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    weights = tmp_path / "model.safetensors"
    save_file({"encoder.weight": torch.randn(37, 11, generator=generator),
               "encoder.bias": torch.randn(5, generator=generator)}, str(weights))
    assert _planes("enc", weights, tmp_path / "w").returncode == 0
    assert len(list(tmp_path.glob("w.p*.xz"))) == 4

    joined = tmp_path / "joined.safetensors"
    result = _planes("dec", tmp_path / "w", joined)
    assert result.returncode == 0, result.stderr
    assert joined.read_bytes() == weights.read_bytes()

    # a plane that decompresses but holds other bytes: the checksum catches it
    plane = tmp_path / "w.p3.xz"
    data = bytearray(lzma.decompress(plane.read_bytes()))
    data[0] ^= 1
    plane.write_bytes(lzma.compress(bytes(data)))
    damaged = tmp_path / "damaged.safetensors"
    result = _planes("dec", tmp_path / "w", damaged)
    assert result.returncode != 0 and "do not match their checksum" in result.stderr
    assert not damaged.exists()
