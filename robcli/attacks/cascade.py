"""The cascade driver: run attacks in order, each only on the points the earlier ones left robust.

AutoAttack's evaluation rule (the per-example worst case over its parts), used by the grid attack (APGD, then
the grid on what APGD left), by the mixture's setting D (adaptive APGD, plain APGD, FAB-T, Square) and by its
APGD suite (APGD-CE, then targeted APGD over the top classes).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Part = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def still_robust(model, x_adv: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per example: ``model`` still predicts ``y`` at ``x_adv`` (bool, on ``y``'s device)."""
    with torch.no_grad():
        preds = torch.cat([model(x_adv[s:s + batch]).argmax(1) for s in range(0, x_adv.shape[0], batch)])
    return preds == y


def cascade(model, x: torch.Tensor, y: torch.Tensor, parts: Sequence[Part]) -> torch.Tensor:
    """Adversarial inputs: part ``k`` attacks only the examples parts ``0 .. k-1`` did not move off ``y``.

    The first part's point is kept for every example it attacked (its best attempt, broken or not); a later
    part's point replaces it only where it changes the prediction. Each ``part(xs, ys)`` returns points for
    the rows it is given.
    """
    x = x.detach()
    x_adv = x.clone()
    alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for k, part in enumerate(parts):
        sel = alive.nonzero().flatten()
        if not sel.numel():
            break
        xa = part(x[sel], y[sel])
        broken = ~still_robust(model, xa, y[sel])
        take = torch.ones_like(broken) if k == 0 else broken
        x_adv[sel[take]] = xa[take].to(x_adv.dtype)
        alive[sel[broken]] = False
    return x_adv


__all__ = ["cascade", "still_robust"]
