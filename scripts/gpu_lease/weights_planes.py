"""Lossless split of a float32 safetensors file into 4 byte planes, each lzma-compressed (encode) / back (decode)."""
import sys, lzma, hashlib, json, struct, numpy as np
mode, src, dst = sys.argv[1:4]
if mode == "enc":
    b = open(src, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]; head = b[:8 + n]; body = b[8 + n:]
    pad = (-len(body)) % 4
    a = np.frombuffer(body + b"\0" * pad, dtype=np.uint8).reshape(-1, 4)
    open(f"{dst}.head", "wb").write(head)
    json.dump({"sha256": hashlib.sha256(b).hexdigest(), "pad": pad, "size": len(b)}, open(f"{dst}.json", "w"))
    for i in range(4):
        open(f"{dst}.p{i}.xz", "wb").write(lzma.compress(np.ascontiguousarray(a[:, i]).tobytes(), preset=6))
else:
    meta = json.load(open(f"{src}.json")); head = open(f"{src}.head", "rb").read()
    planes = [np.frombuffer(lzma.decompress(open(f"{src}.p{i}.xz", "rb").read()), dtype=np.uint8) for i in range(4)]
    body = np.stack(planes, axis=1).reshape(-1).tobytes()
    body = body[: len(body) - meta["pad"]] if meta["pad"] else body
    out = head + body
    assert hashlib.sha256(out).hexdigest() == meta["sha256"], "weights checksum mismatch"
    open(dst, "wb").write(out); print("weights ok", len(out))
