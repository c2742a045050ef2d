"""ERA: Empirical Robustness Abstain training, eq. 5 of the ERA paper.

``L_ERA = beta * L_TRADES(x, y) + (1 - f(x)_y) * min_{x' in B_eps(x)} CE(f(x'), argmax_{c != F(x)} f(x')_c)``

Choices the paper leaves open (documented here and in the README):

* **Soft inaccuracy weight** ``w = 1 - p_y(x)`` with ``p = softmax(f(x))`` from the clean train-mode forward
  (eq. 5's smooth stand-in for ``1{F(x) != y}``). Detached by default (``cfg.detach_weight``): the ERA term
  then only moves the decision boundary near inaccurate points, and cannot lower itself by making the
  model *less* confident in the true label (which a non-detached weight rewards: ``d w / d p_y = -1``
  times a positive CE). Measured on the Gaussians (mlp, ERA from the standard model, eps 0.05, beta 1,
  10 epochs, lr 0.01, batch 50, val split of 100 points), seeds 1 and 2: detached val robust inaccuracy
  0.02 / 0.02 vs 0.06 / 0.08 not detached, at val robust accuracy 0.89 / 0.91 vs 0.90 / 0.92 (seed 0's
  standard model was itself stuck near one class, so both variants failed there).
* **Adversarial label** ``t(x') = argmax_{c != F(x)} f(x')_c`` where ``F(x)`` is the model's clean
  prediction (eval mode), recomputed at every inner step and once more at the final point.
* **The min over the ball** (``era_adv = "descent"``, default): since ``CE(f(x'), t(x')) = -log
  max_{c != F(x)} p_c(x')``, the inner problem is PGD *maximizing* ``max_{c != F(x)} log p_c(x')``:
  a targeted descent whose target is re-chosen each step (the same objective as APGD-conf, eq. 21).
  It starts at ``x`` itself (deterministic) and runs ``cfg.era_steps`` steps (default 2) of size
  ``2.5 * eps / steps`` (Madry et al.'s rule; ``cfg.step_size`` overrides). Measured on digits/small_cnn
  at eps 0.1 (``benchmarks/finetune_era_vs_trades.py``): 2 such steps reach a mean
  ``max_{c != F(x)} log p_c`` of -3.20 and change the prediction of 29% of points, 3 steps -3.06 / 30.5%,
  10 steps -2.93 / 33%; warm-starting from the TRADES point was *worse* (-5.2 after 3 steps), so it is not
  used. Two steps keep an ERA step near 1.3x a TRADES step (the issue's goal; 3 steps measured 1.37x,
  10 steps 1.8-2x); ``--era-steps 10`` buys the last few percent of the inner problem.
* ``era_adv = "single"`` is the reference code's cheaper variant: ONE adversarial point, a PGD ascent of
  ``CE(f(x'), y)`` from a uniform random start, is used both for the TRADES KL term and for the ERA term
  (label = most likely label other than ``F(x)`` there). One attack per step, like TRADES.
* Both terms are batch means; the TRADES KL is batch-mean (not class-mean). Smaller ``beta`` = stronger
  ERA term.
* BatchNorm: adversaries are generated in eval mode; only the clean forward updates running statistics
  (:mod:`robcli.models.bn`).
* Data-parallel training: the adversaries run on the module inside the DDP wrapper, the three train-mode
  forwards through the wrapper before one backward (:mod:`robcli.train.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robcli.attacks.pgd import pgd
from robcli.losses import LossConfig, register_loss
from robcli.losses.trades import kl_per_example, step_size, trades_adversary
from robcli.models.bn import eval_mode, frozen_bn_stats
from robcli.train.parallel import unwrap

DEFAULT_ERA_STEPS = 2


def era_steps(cfg: LossConfig) -> int:
    """Inner descent steps: ``cfg.era_steps`` or :data:`DEFAULT_ERA_STEPS` ."""
    s = getattr(cfg, "era_steps", None)
    return int(s) if s is not None else DEFAULT_ERA_STEPS


def other_class(logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``argmax_{c != pred} logits_c`` per example."""
    masked = logits.detach().clone()
    masked.scatter_(1, pred.view(-1, 1), float("-inf"))
    return masked.argmax(1)


def other_logprob(logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``max_{c != pred} log softmax(logits)_c`` = ``-CE(logits, argmax_{c != pred} logits_c)`` (shape (B,))."""
    logp = F.log_softmax(logits, dim=1)
    return logp.scatter(1, pred.view(-1, 1), float("-inf")).amax(1)


def descent_adversary(
    model: torch.nn.Module, x: torch.Tensor, pred: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None,
    x_start: torch.Tensor | None = None, steps: int | None = None,
) -> torch.Tensor:
    """Approximate ``argmin_{x' in B_eps(x)} CE(f(x'), argmax_{c != F(x)} f(x')_c)`` (eq. 8) in eval mode.

    PGD maximizing :func:`other_logprob`, starting at ``x_start`` (default: ``x`` itself), step size
    ``cfg.step_size`` or ``2.5 * eps / steps``.
    """
    k = era_steps(cfg) if steps is None else steps
    ss = float(cfg.step_size) if cfg.step_size is not None else 2.5 * cfg.eps / max(k, 1)
    with eval_mode(model):
        return pgd(model, x, lambda z, _xa: other_logprob(z, pred), eps=cfg.eps, norm=cfg.norm,
                   steps=k, step_size=ss, rand_init=False, generator=gen,
                   x_init=x if x_start is None else x_start)


def ce_ascent_adversary(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig,
                        gen: torch.Generator | None) -> torch.Tensor:
    """PGD ascent of ``CE(f(x'), y)`` from a uniform random start (Madry et al.), eval mode."""
    with eval_mode(model):
        return pgd(model, x, lambda z, _xa: F.cross_entropy(z, y, reduction="none"), eps=cfg.eps,
                   norm=cfg.norm, steps=cfg.attack_steps, step_size=step_size(cfg), rand_init=True,
                   generator=gen)


def adversarial_points(model, x, y, cfg: LossConfig, gen):
    """The TRADES point and the ERA/DGA point for one batch, per ``cfg.era_adv``.

    Returns:
        ``(x_trades, x_era, pred)`` with ``pred = F(x)`` (eval mode). ``x_era is x_trades`` for ``single``.
    """
    with eval_mode(model), torch.no_grad():
        clean = model(x)
    pred = clean.argmax(1)
    if cfg.era_adv == "single":
        x_adv = ce_ascent_adversary(model, x, y, cfg, gen)
        return x_adv, x_adv, pred
    if cfg.era_adv != "descent":
        from robcli.errors import UsageError

        raise UsageError(f"unknown --era-adv {cfg.era_adv!r}; choose descent or single")
    x_tr = trades_adversary(model, x, cfg, gen, clean_logits=clean)
    x_era = descent_adversary(model, x, pred, cfg, gen)
    return x_tr, x_era, pred


def trades_and_adv_logits(model, x, y, x_tr, x_era, cfg: LossConfig):
    """Train-mode forwards: clean (updates BN), TRADES point and ERA point (BN statistics frozen)."""
    logits = model(x)
    with frozen_bn_stats(model):
        adv_logits = model(x_tr)
        era_logits = adv_logits if x_era is x_tr else model(x_era)
    ce = F.cross_entropy(logits, y)
    kl = kl_per_example(logits, adv_logits).mean()
    return logits, era_logits, ce, kl


@register_loss("era")
def era_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None):
    """ERA loss, eq. 5 (see the module docstring for the choices).

    Returns:
        ``(loss, terms)`` with terms ``ce``, ``kl``, ``trades`` (= ce + trades_beta * kl), ``era_weight``
        (batch mean of ``1 - p_y``), ``era_ce`` (batch mean adversarial-label CE) and ``era``
        (batch mean of ``w * CE``).
    """
    x_tr, x_era, pred = adversarial_points(unwrap(model), x, y, cfg, gen)  # bare module (robcli.train.parallel)
    logits, era_logits, ce, kl = trades_and_adv_logits(model, x, y, x_tr, x_era, cfg)
    trades = ce + cfg.trades_beta * kl
    w = 1.0 - F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    if cfg.detach_weight:
        w = w.detach()
    target = other_class(era_logits, pred)
    era_ce = F.cross_entropy(era_logits, target, reduction="none")
    era = (w * era_ce).mean()
    loss = cfg.beta * trades + era
    terms = {
        "ce": float(ce.detach()), "kl": float(kl.detach()), "trades": float(trades.detach()),
        "era_weight": float(w.detach().mean()), "era_ce": float(era_ce.detach().mean()), "era": float(era.detach()),
    }
    return loss, terms
