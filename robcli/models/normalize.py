"""The input-normalization wrapper and :func:`build`: every model robcli runs maps pixels in [0, 1] to logits,
with the data set's normalization inside the model (so attacks and smoothing noise live in pixel space)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from robcli.errors import ModelError
from robcli.models.registry import create_model


class Normalized(nn.Module):
    """``net((x - mean) / std)``: keeps attacks and noise in [0, 1] pixel space.

    ``mean``/``std`` hold one value per channel (images) or per feature (vectors), or a single value.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        if (mean is None) != (std is None):
            raise ModelError("normalization needs both mean and std (or neither)")
        self.has_norm = mean is not None
        if self.has_norm:
            m = torch.as_tensor(mean, dtype=torch.float32).flatten()
            s = torch.as_tensor(std, dtype=torch.float32).flatten()
            if m.numel() != s.numel() or m.numel() == 0:
                raise ModelError(f"normalization mean has {m.numel()} values but std has {s.numel()}")
            if not (torch.isfinite(m).all() and torch.isfinite(s).all()) or (s <= 0).any():
                raise ModelError("normalization std must be positive and mean/std finite")
            self.register_buffer("mean", m.view(1, -1, 1, 1))
            self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_norm:
            mean, std = self.mean, self.std
            if x.dim() != 4:  # vector data: one value per feature
                mean, std = mean.view(1, -1), std.view(1, -1)
            x = (x - mean) / std
        return self.net(x)




def build(arch: str, num_classes: int, input_shape, *, mean=None, std=None, arch_kwargs: dict | None = None) -> Normalized:
    """Build a registered architecture wrapped in input normalization.

    Raises:
        ModelError: unknown architecture, bad keyword arguments, or normalization of the wrong length.
    """
    shape = tuple(int(s) for s in input_shape)
    if mean is not None:
        n = len(list(mean))
        channels = shape[0] if len(shape) == 3 else int(torch.tensor(shape).prod())
        if n not in (1, channels):
            raise ModelError(f"normalization has {n} values but inputs of shape {shape} have {channels} channels")
    try:
        net = create_model(arch, int(num_classes), shape, **(arch_kwargs or {}))
    except TypeError as e:
        raise ModelError(f"architecture {arch!r} rejects its arguments: {e}") from None
    return Normalized(net, mean, std)

