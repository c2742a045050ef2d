"""L_CRA (ERA paper eq. 9 with the differentiable certified radius of eq. 11, Zhai et al. 2020 / MACER).

    L_CRA = beta * L_noise + (1/k) sum_j (1 - f(x + eta_j)_y) * CR(f, (x, y))                (eq. 9)
    CR    = sigma/2 * [ Phi^-1( pbar_A ) - Phi^-1( max_{y' != A} pbar_{y'} ) ]                  (eq. 11)
    pbar_c = (1/k) sum_j softmax(Gamma * logits(x + eta_j))_c

with eta_1..eta_k i.i.d. N(0, sigma^2 I) (k = ``cfg.num_noise``, Gamma = ``cfg.temperature``, beta =
``cfg.beta``), added in [0, 1] pixel space before the model's normalization, not clipped.

Choices the paper leaves open (all deliberate, see the tests):

1. **Which class the radius is about (A in eq. 11).** The paper writes CR(f, (x, y)). Taken literally with
   A = y, an inaccurate example has CR < 0 and *minimizing* it makes the wrong prediction more confident,
   i.e. more robust -- the opposite of the term's purpose ("penalize robustness of the smoothed classifier",
   and eq. 8's empirical analogue, which moves away from the *predicted* class). We use A = the predicted
   class of the soft smoothed classifier, ``argmax_c pbar_c`` (MACER's top-1), so CR >= 0 is the soft
   certified radius of whatever G predicts; for correctly classified examples this is exactly eq. 11 with
   A = y. ``radius_class="label"`` gives the literal reading (for comparison; not the registered default).
2. **Which y' in the max:** the runner-up of the soft smoothed classifier, ``max_{c != A} pbar_c``.
3. **No hinge.** MACER maximizes the radius and keeps only correctly classified examples with radius < gamma
   (a hinge). Here the radius is minimized, weighted by the soft inaccuracy, on every example; CR >= 0 by
   construction, so no hinge or filter is needed.
4. **Phi^-1 arguments** are computed in float64 log space (``1 - pbar_A`` as the mean of the summed
   probabilities of the other classes, never as ``1 - p``), then clamped to [1e-300, 1 - 1e-15]. The lower
   clamp binds only when a float64 probability underflows (Gamma * logit margin > ~690), so confident (i.e.
   the most robust) examples keep a gradient instead of being dropped as by MACER's NaN/Inf filter; the
   upper clamp can bind only for ``radius_class="label"`` (with A = argmax both arguments are <= 1 - 1/K).
5. **Soft inaccuracy qualifier** ``(1/k) sum_j (1 - softmax(f(x + eta_j))_y)`` uses the model's own
   probabilities (temperature 1: eq. 9 writes f without Gamma), on the same k noisy copies; it is a weight
   and its gradient is stopped when ``cfg.detach_weight`` (the default), so the term only moves the radius.
6. **L_noise** is estimated on the same k noisy copies: the mean cross-entropy over them (an unbiased
   estimate of eq. 10's expectation with lower variance than one draw).
7. Batch reduction: mean over the examples of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robcli.losses import LossConfig, register_loss
from robcli.losses.noise import gaussian_noise

PHI_INV_CLAMP = (1e-300, 1.0 - 1e-15)


def _ndtri_tail(log_p: torch.Tensor) -> torch.Tensor:
    """Phi^-1(p) for p = exp(log_p) given in float64 log space, argument clamped to PHI_INV_CLAMP."""
    p = torch.exp(log_p).clamp(*PHI_INV_CLAMP)
    return torch.special.ndtri(p)


def soft_radius(logits: torch.Tensor, sigma: float, temperature: float, y: torch.Tensor | None = None,
                radius_class: str = "predicted") -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable certified radius of eq. 11 from the logits of k noisy copies.

    Args:
        logits: (k, B, K) logits of the k noisy copies of each example.
        sigma: noise std.
        temperature: Gamma, the inverse softmax temperature.
        y: labels (B,), needed for ``radius_class="label"``.
        radius_class: ``predicted`` (A = argmax pbar) or ``label`` (A = y, the literal eq. 11).

    Returns:
        (CR, A): float64 radius (B,) and the class it refers to (B,).
    """
    k = logits.shape[0]
    logp = F.log_softmax(temperature * logits.double(), dim=-1)  # (k, B, K)
    log_pbar = torch.logsumexp(logp, dim=0) - math.log(k)  # (B, K)
    if radius_class == "predicted":
        a = log_pbar.detach().argmax(1)
    elif radius_class == "label":
        if y is None:
            raise ValueError("radius_class='label' needs y")
        a = y
    else:
        raise ValueError(f"unknown radius_class {radius_class!r}")
    onehot = F.one_hot(a, logits.shape[-1]).bool()  # (B, K)
    neg_inf = torch.tensor(-math.inf, dtype=logp.dtype, device=logp.device)
    # log(1 - pbar_A) = log mean_j sum_{c != A} p_jc, exact in log space
    log_rest = torch.logsumexp(torch.where(onehot.unsqueeze(0), neg_inf, logp), dim=-1)  # (k, B)
    log_q_a = torch.logsumexp(log_rest, dim=0) - math.log(k)
    phi_a = -_ndtri_tail(log_q_a)  # Phi^-1(pbar_A) = -Phi^-1(1 - pbar_A)
    log_runner = torch.where(onehot, neg_inf, log_pbar).max(1).values
    phi_b = _ndtri_tail(log_runner)
    return sigma / 2.0 * (phi_a - phi_b), a


@register_loss("cra")
def cra_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig, gen: torch.Generator | None = None,
             *, radius_class: str = "predicted") -> tuple[torch.Tensor, dict]:
    """L_CRA, eq. 9 (see the module docstring for every open choice).

    Args:
        model: [0,1] inputs -> logits (B, K).
        x: inputs in [0, 1], (B, ...). y: labels (B,).
        cfg: ``sigma``, ``num_noise`` (k), ``temperature`` (Gamma), ``beta``, ``detach_weight``.
        gen: dedicated generator for the noise.
        radius_class: ``predicted`` (default) or ``label`` (literal eq. 11).

    Returns:
        (loss, terms): terms ``noise`` (L_noise), ``soft_inacc`` (mean qualifier), ``radius`` (mean CR),
        ``rob_inacc`` (mean qualifier * CR), ``noisy_acc``.
    """
    k = int(cfg.num_noise)
    if k < 1:
        raise ValueError("num_noise must be >= 1")
    B = x.shape[0]
    eta = gaussian_noise((k, *x.shape), cfg.sigma, x, gen, batch_dim=1)
    logits = model((x.unsqueeze(0) + eta).flatten(0, 1)).view(k, B, -1)  # one forward for all copies
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none").view(k, B)
    l_noise = ce.mean()
    p_y = F.softmax(logits, dim=-1).gather(2, y.view(1, B, 1).expand(k, B, 1))[..., 0]  # (k, B)
    weight = (1.0 - p_y).mean(0)
    if cfg.detach_weight:
        weight = weight.detach()
    radius, _ = soft_radius(logits, cfg.sigma, cfg.temperature, y, radius_class)
    rob_inacc = (weight.double() * radius).mean().to(l_noise.dtype)
    loss = cfg.beta * l_noise + rob_inacc
    acc = (logits.detach().argmax(-1) == y.unsqueeze(0)).float().mean()
    return loss, {
        "noise": float(l_noise.detach()),
        "soft_inacc": float(weight.detach().mean()),
        "radius": float(radius.detach().mean()),
        "rob_inacc": float(rob_inacc.detach()),
        "noisy_acc": float(acc),
    }
