"""L_noise (ERA paper eq. 10; Cohen et al. 2019): cross-entropy on Gaussian-noise-augmented inputs.

``L_noise = CE(f(x + eta), y)``, ``eta ~ N(0, sigma^2 I)``, one noise draw per example per step (as Cohen
et al. train). Noise is added in [0, 1] pixel space before the model's own normalization and is NOT clipped
(the same convention as ``robcli certify``, so training and certification see the same distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robcli.losses import LossConfig, register_loss


def gaussian_noise(shape: tuple[int, ...], sigma: float, like: torch.Tensor,
                   gen: torch.Generator | None, batch_dim: int = 0) -> torch.Tensor:
    """``sigma * N(0, I)`` of ``shape`` from ``gen`` (drawn on the generator's device, moved to ``like``'s).

    ``batch_dim``: the dimension of ``shape`` that indexes the examples (the whole batch's draw is sliced
    inside :func:`robcli.utils.seeding.batch_rows`, as data-parallel training needs).
    """
    from robcli.utils.seeding import batch_draw

    dev = gen.device if gen is not None else like.device
    eta = batch_draw("randn", tuple(shape), gen, dev, dim=batch_dim, dtype=like.dtype)
    return eta.to(like.device).mul_(sigma)


@register_loss("noise")
def noise_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Gaussian noise augmentation, eq. 10.

    Args:
        model: [0,1] inputs -> logits (B, K).
        x: inputs in [0, 1], (B, ...). y: labels (B,).
        cfg: uses ``cfg.sigma``.
        gen: dedicated generator for the noise.

    Returns:
        (loss, terms) with terms ``{"noise": L_noise, "noisy_acc": accuracy on the noisy inputs}``.
    """
    logits = model(x + gaussian_noise(tuple(x.shape), cfg.sigma, x, gen))
    loss = F.cross_entropy(logits, y)
    acc = (logits.detach().argmax(1) == y).float().mean()
    return loss, {"noise": float(loss.detach()), "noisy_acc": float(acc)}
