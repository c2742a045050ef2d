"""TRADES (Zhang et al., 2019), eq. 7 of the ERA paper.

``L_TRADES = CE(f(x), y) + trades_beta * max_{x' in B_eps(x)} KL(f(x) || f(x'))``

* The KL is summed over classes and averaged over the batch ("batchmean", as in the TRADES paper and
  code: ``(1/B) * KLDivLoss(reduction='sum')``), NOT averaged over classes (the reference ERA code's
  ``mean`` reduction silently divides beta by K; README "Training choices").
* The inner max is a 10-step (``cfg.attack_steps``) PGD on the KL started, as TRADES does, at
  ``x + 0.001 * N(0, I)`` (the KL has zero gradient at ``x'`` = ``x``), step size ``cfg.step_size`` or
  ``eps / 4`` (TRADES: 0.007 at eps 0.031), signed steps for Linf and normalized steps for L2, projected on
  the ball and clipped to [0, 1]. The noise comes from the loss generator ``gen``.
* The adversary runs with the model in eval mode; the clean forward of the loss updates BatchNorm
  statistics, the adversarial forward does not (see :mod:`robcli.models.bn`).
* Gradients flow through both ``f(x)`` and ``f(x')`` in the KL (as in TRADES).
* Data-parallel training: the adversary runs on the module inside the DDP wrapper, the two train-mode
  forwards through the wrapper (:mod:`robcli.train.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robcli.attacks.pgd import pgd
from robcli.losses import LossConfig, register_loss
from robcli.models.bn import eval_mode, frozen_bn_stats
from robcli.train.parallel import unwrap


def step_size(cfg: LossConfig) -> float:
    """The training-time PGD step size: ``cfg.step_size`` or ``eps / 4``."""
    return float(cfg.step_size) if cfg.step_size is not None else cfg.eps / 4.0


def kl_per_example(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per example, summed over classes (shape (B,))."""
    logp = F.log_softmax(logits_p, dim=1)
    logq = F.log_softmax(logits_q, dim=1)
    return (logp.exp() * (logp - logq)).sum(1)


def _noise(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    from robcli.utils.seeding import batch_draw

    dev = gen.device if gen is not None else x.device
    return batch_draw("randn", tuple(x.shape), gen, dev).to(x.device, x.dtype)


def trades_adversary(
    model: torch.nn.Module, x: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The TRADES inner maximizer ``argmax_{x'} KL(f(x) || f(x'))`` (eval mode, detached result).

    Args:
        clean_logits: eval-mode logits of ``x`` if already computed (saves one forward).
    """
    with eval_mode(model):
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = model(x)
        target = clean_logits.detach()
        x_init = x.detach() + 0.001 * _noise(x, gen)
        return pgd(model, x, lambda z, _xa: kl_per_example(target, z), eps=cfg.eps, norm=cfg.norm,
                   steps=cfg.attack_steps, step_size=step_size(cfg), rand_init=False, generator=gen,
                   x_init=x_init)


def trades_objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, cfg: LossConfig):
    """Train-mode part of eq. 7 given the adversarial point.

    Returns:
        ``(trades, ce, kl, logits, adv_logits)``: scalar tensors for the loss and its terms, plus the
        clean logits (this clean forward updated BN statistics) and the adversarial logits (computed
        inside :func:`frozen_bn_stats`).
    """
    logits = model(x)
    with frozen_bn_stats(model):
        adv_logits = model(x_adv)
    ce = F.cross_entropy(logits, y)
    kl = kl_per_example(logits, adv_logits).mean()
    return ce + cfg.trades_beta * kl, ce, kl, logits, adv_logits


@register_loss("trades")
def trades_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None):
    """TRADES loss (eq. 7) with batch-mean KL.

    Returns:
        ``(loss, {"ce", "kl"})``.
    """
    x_adv = trades_adversary(unwrap(model), x, cfg, gen)  # on the bare module (robcli.train.parallel)
    loss, ce, kl, _, _ = trades_objective(model, x, y, x_adv, cfg)
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}
