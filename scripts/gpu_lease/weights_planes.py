"""Split a float32 safetensors file into 4 lzma-compressed byte planes, and join them back, losslessly.

Why: the encoder's weights (90 MB) must cross to the GPU machine in carries of at most 64 MiB each (working tree
included), so they travel as planes: byte k of every float in plane k, each compressed on its own, two planes per
carry (README.md here: calls a and b).

    python weights_planes.py enc model.safetensors OUT_PREFIX   # OUT_PREFIX.head / .json / .p0.xz ... .p3.xz
    python weights_planes.py dec OUT_PREFIX model.safetensors    # checks the whole file's sha256
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import struct
from pathlib import Path

import numpy as np

PLANES = 4  # bytes per float32


def _plane_path(prefix: str, plane: int) -> Path:
    return Path(f"{prefix}.p{plane}.xz")


def encode(weights: Path, prefix: str) -> None:
    """Header (kept as is) + one compressed file per byte position of the tensor data + size and checksum."""
    whole = weights.read_bytes()
    header_length = struct.unpack("<Q", whole[:8])[0]  # safetensors: u64 header size, JSON header, tensor bytes
    header, body = whole[: 8 + header_length], whole[8 + header_length:]
    padding = (-len(body)) % PLANES
    by_float = np.frombuffer(body + b"\0" * padding, dtype=np.uint8).reshape(-1, PLANES)
    Path(f"{prefix}.head").write_bytes(header)
    Path(f"{prefix}.json").write_text(json.dumps(
        {"sha256": hashlib.sha256(whole).hexdigest(), "padding": padding, "size": len(whole)}))
    for plane in range(PLANES):
        _plane_path(prefix, plane).write_bytes(lzma.compress(np.ascontiguousarray(by_float[:, plane]).tobytes()))


def decode(prefix: str, weights: Path) -> int:
    """The original file, byte for byte; refuses to write one whose checksum differs."""
    meta = json.loads(Path(f"{prefix}.json").read_text())
    planes = [np.frombuffer(lzma.decompress(_plane_path(prefix, plane).read_bytes()), dtype=np.uint8)
              for plane in range(PLANES)]
    body = np.stack(planes, axis=1).reshape(-1).tobytes()
    whole = Path(f"{prefix}.head").read_bytes() + body[: len(body) - meta["padding"]]
    if len(whole) != meta["size"] or hashlib.sha256(whole).hexdigest() != meta["sha256"]:
        raise SystemExit(f"{prefix}: the joined weights do not match their checksum (a plane is damaged or missing)")
    weights.write_bytes(whole)
    return len(whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("enc", "dec"))
    parser.add_argument("source", help="enc: the safetensors file; dec: the planes' prefix")
    parser.add_argument("target", help="enc: the planes' prefix; dec: the safetensors file to write")
    args = parser.parse_args()
    if args.mode == "enc":
        encode(Path(args.source), args.target)
    else:
        print("weights ok", decode(args.source, Path(args.target)))


if __name__ == "__main__":
    main()
