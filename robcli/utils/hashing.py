"""Hashes for provenance: model files and data fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def tensor_fingerprint(*tensors) -> str:
    """sha256 over the raw bytes of tensors/arrays, with each one's shape and dtype included.

    Equal for equal contents whatever the device or memory layout; bfloat16 is hashed by its bits.
    """
    import numpy as np

    h = hashlib.sha256()
    for t in tensors:
        if hasattr(t, "detach"):
            import torch

            t = t.detach().cpu().contiguous()
            bf16 = t.dtype == torch.bfloat16
            if bf16:  # numpy has no bfloat16: hash the raw 16-bit patterns
                t = t.view(torch.int16)
            a = t.numpy()
            dtype = "bfloat16" if bf16 else str(a.dtype)
        else:
            a = np.ascontiguousarray(t)
            dtype = str(a.dtype)
        h.update(str((tuple(a.shape), dtype)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
