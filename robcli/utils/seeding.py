"""Explicit randomness: seeded generators instead of global RNG state wherever we can."""

from __future__ import annotations

import contextvars
import random
from contextlib import contextmanager
from typing import Iterator


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (for code we do not control, e.g. pyautoattack)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(seed: int, device=None):
    """A dedicated torch.Generator on ``device`` (CPU by default), seeded."""
    import torch

    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(seed))
    return g


def hashed_seed(*parts: str, bits: int) -> int:
    """A seed of ``bits`` bits from a sha256 of ``"|".join(parts)`` (the first 8 bytes, little-endian): streams
    keyed by what they are for (an example, a batch, a chunk), not by the order in which they are drawn."""
    import hashlib

    key = "|".join(parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> (64 - bits)


# The rows of the whole batch this process works on (see batch_rows); None: the batch is all of it.
_ROWS = contextvars.ContextVar("robcli_batch_rows", default=None)


@contextmanager
def batch_rows(lo: int, hi: int, total: int) -> Iterator[None]:
    """Within the block, :func:`batch_draw` draws for the whole batch of ``total`` rows and keeps rows ``lo:hi``.

    Data-parallel training (:mod:`robcli.train.parallel`) runs the loss of rows ``lo:hi`` of a global batch on
    each rank; the loss's random draws (the TRADES start noise, PGD's random start, Gaussian noise) must then
    be the single-process draw's rows, and every rank's generator must advance as the single process's does.
    Drawing the whole batch's shape and slicing gives both (a CPU ``randn`` of 4 rows is not the first 4 rows
    of a ``randn`` of 8).
    """
    if not 0 <= lo < hi <= total:
        raise ValueError(f"batch rows {lo}:{hi} of {total}")
    token = _ROWS.set((int(lo), int(hi), int(total)))
    try:
        yield
    finally:
        _ROWS.reset(token)


def batch_draw(kind: str, shape: tuple[int, ...], generator, device, dim: int = 0, dtype=None):
    """``torch.rand`` (``kind="rand"``) or ``torch.randn`` (``"randn"``) of ``shape`` from ``generator`` on
    ``device``, where dimension ``dim`` of ``shape`` is the batch: inside :func:`batch_rows` the draw is made
    for the whole batch and the rows of this process are returned (outside it: a plain draw)."""
    import torch

    fn = {"rand": torch.rand, "randn": torch.randn}[kind]
    rows = _ROWS.get()
    if rows is None:
        return fn(tuple(shape), generator=generator, device=device, dtype=dtype)
    lo, hi, total = rows
    if shape[dim] != hi - lo:
        raise ValueError(f"a draw of shape {tuple(shape)} (dimension {dim}) inside batch rows {lo}:{hi} of {total}")
    full = list(shape)
    full[dim] = total
    return fn(tuple(full), generator=generator, device=device, dtype=dtype).narrow(dim, lo, hi - lo)
