"""Projected gradient primitives shared by training-time attacks and our own evaluation attacks.

All inputs live in [0, 1] pixel space; perturbations are projected onto the eps-ball of the chosen norm
and the result is clipped into the [0, 1] box. Randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable

import torch


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    return f.abs().amax(1) if norm == "Linf" else f.norm(p=2, dim=1)


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example ``||x_adv - x||`` in the given norm."""
    return _flat_norm(x_adv - x, norm)


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball (per example; ``eps`` scalar or shape (B,))."""
    eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(delta.shape[0])
    shape = (-1,) + (1,) * (delta.dim() - 1)
    if norm == "Linf":
        e = eps_t.view(shape)
        return torch.maximum(torch.minimum(delta, e), -e)
    n = _flat_norm(delta, "L2").clamp_min(1e-12)
    factor = torch.clamp(eps_t / n, max=1.0).view(shape)
    return delta * factor


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random point of the ball (Linf) or a random direction scaled into it (L2), clipped to [0,1]."""
    from robcli.utils.seeding import batch_draw  # sliced whole-batch draws (data-parallel training)

    dev = generator.device if generator else x.device
    if norm == "Linf":
        u = batch_draw("rand", tuple(x.shape), generator, dev)
        delta = (2 * u.to(x.device, x.dtype) - 1) * eps
    else:
        g = batch_draw("randn", tuple(x.shape), generator, dev).to(x.device, x.dtype)
        r = batch_draw("rand", (x.shape[0],), generator, dev).to(x.device, x.dtype)
        g = g / _flat_norm(g, "L2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = g * (eps * r).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0, 1)


def _step(grad: torch.Tensor, step_size, norm: str) -> torch.Tensor:
    """``step_size`` (a float or a (B,) tensor) times the ascent direction (sign for Linf, unit L2 otherwise)."""
    if isinstance(step_size, torch.Tensor) and step_size.dim() == 1:
        step_size = step_size.view(-1, *([1] * (grad.dim() - 1)))
    if norm == "Linf":
        return step_size * grad.sign()
    n = _flat_norm(grad, "L2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return step_size * grad / n


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    rand_init: bool = True,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximize ``objective(logits, x_adv)`` (per-example values, shape (B,)) over the eps-ball around ``x``.

    ``eps`` may be a float or a (B,) tensor of per-example radii (randomized training radii; then
    ``rand_init=False`` or ``x_init``).

    Args:
        model: maps [0,1] inputs to logits (put it in eval mode yourself if BatchNorm must not change).
        objective: per-example objective to MAXIMIZE (negate it to minimize).
        step_size: default 2.5 * eps / steps (Madry et al.).
        x_init: start here instead of a random start.

    Returns:
        Adversarial inputs (detached), inside the ball and the [0,1] box.
    """
    per_example = isinstance(eps, torch.Tensor) and eps.dim() > 0
    if steps == 0 or (float(eps.max()) == 0.0 if per_example else float(eps) == 0.0):
        return x.detach().clone()
    if per_example and rand_init and x_init is None:
        raise ValueError("per-example eps needs rand_init=False or x_init")  # a bug in the caller
    step = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    if x_init is not None:
        x_adv = x_init.detach().clone()
    elif rand_init:
        x_adv = random_start(x, eps, norm, generator)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            val = objective(model(x_adv), x_adv)
            (grad,) = torch.autograd.grad(val.sum(), x_adv)
        with torch.no_grad():
            x_adv = x_adv + _step(grad, step, norm)
            x_adv = (x + project(x_adv - x, eps, norm)).clamp(0, 1)
    return x_adv.detach()


def margin(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``logits[cls] - max_{c != cls} logits[c]`` per example (positive: ``cls`` is the prediction)."""
    z = logits.gather(1, cls.view(-1, 1)).squeeze(1)
    other = logits.clone()
    other.scatter_(1, cls.view(-1, 1), float("-inf"))
    return z - other.amax(1)
