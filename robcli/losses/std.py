"""Standard training: cross-entropy on clean inputs (L_std of the ERA paper, Fig. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robcli.losses import LossConfig, register_loss


@register_loss("std")
def std_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None):
    """``CE(f(x), y)`` averaged over the batch.

    Returns:
        ``(loss, {"ce": float})``.
    """
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"ce": float(loss.detach())}
