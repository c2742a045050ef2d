"""Explicit randomness: seeded generators instead of global RNG state wherever we can."""

from __future__ import annotations

import random


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
