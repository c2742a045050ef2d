"""DGA: the Deep-Gamblers-style robustness-abstain loss, eq. 20 of the ERA paper (App. A.3).

``L_DGA = beta * L_TRADES(x, y) - log( f(x)_y + max_{c != F(x)} f(x')_c )``

with ``f`` read as softmax probabilities. The paper says ``f(x')_c`` stands for "the probability of the most
likely adversarial label", i.e. the probability of abstaining under the robustness-indicator selector.
**Choice of x'**: the point of the eps-ball where that probability is largest,
``x' = argmax_{x' in B_eps(x)} max_{c != F(x)} p_c(x')`` (the APGD-conf objective, eq. 21). This is the same
inner problem as ERA's targeted descent (``-CE(f(x'), t) = log max_{c != F(x)} p_c``), so DGA shares ERA's
adversary (:func:`robcli.losses.era.adversarial_points`, ``--era-adv descent|single``) and the TRADES point.

Notes: the two probabilities come from two separate softmaxes, so their sum lies in (0, 2) and the loss is
bounded below by ``-log 2``; the reference code instead renormalizes ``[f(x), f(x')_t]`` jointly over K+1
outputs. We follow the paper's formula. ``log(p_y + q)`` is computed as ``logaddexp(log p_y, log q)`` for
numerical stability. Gradients flow through both ``f(x)`` and ``f(x')`` (x' itself is fixed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robcli.losses import LossConfig, register_loss
from robcli.losses.era import adversarial_points, other_logprob, trades_and_adv_logits
from robcli.train.parallel import unwrap


def dga_term(logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-example ``-log(p_y(x) + max_{c != F(x)} p_c(x'))`` (shape (B,))."""
    logp_y = F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    return -torch.logaddexp(logp_y, other_logprob(adv_logits, pred))


@register_loss("dga")
def dga_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None):
    """DGA loss, eq. 20.

    Returns:
        ``(loss, terms)`` with terms ``ce``, ``kl``, ``trades`` and ``dga`` (batch mean of the gambler term).
    """
    x_tr, x_adv, pred = adversarial_points(unwrap(model), x, y, cfg, gen)  # bare module (robcli.train.parallel)
    logits, adv_logits, ce, kl = trades_and_adv_logits(model, x, y, x_tr, x_adv, cfg)
    trades = ce + cfg.trades_beta * kl
    dga = dga_term(logits, adv_logits, y, pred).mean()
    loss = cfg.beta * trades + dga
    terms = {"ce": float(ce.detach()), "kl": float(kl.detach()), "trades": float(trades.detach()), "dga": float(dga.detach())}
    return loss, terms
