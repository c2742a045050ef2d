"""Our own seeded attacks: a faithful APGD (Croce & Hein, 2020) with pluggable objectives, and multi-restart PGD.

APGD here follows the reference implementation (``pyautoattack.APGDAttack.attack_single_run``) step by step
for the Linf and L2 threat models: initial step size ``2 * eps``; momentum ``alpha = 0.75`` (1 at the first
step); checkpoints after ``p_1 = 0.22 n`` iterations, then every ``max(p_{j-1} - 0.03 n, 0.06 n)``
iterations; at a checkpoint the step size of an example is halved (and it restarts from its best point)
when its objective increased in at most ``rho = 0.75`` of the steps since the last checkpoint, or when the
step size was not reduced at the last checkpoint and the best objective did not improve since.

Differences from the reference, all deliberate: randomness comes from a dedicated ``torch.Generator``
(the reference reseeds the global RNG); the objective is any per-example function of the logits, which is
how APGD-conf (eq. 21 of the ERA paper) is obtained; the point returned for an example that was fooled is
the fooled iterate of highest objective (the reference keeps the last fooled iterate).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robcli.attacks.pgd import _flat_norm, _step, project, random_start

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- objectives: per-example values to MAXIMIZE, given logits (B, K) and the attacked label y (B,) ---------


def obj_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the attacked label (APGD-CE)."""
    return F.cross_entropy(logits, y, reduction="none")


def obj_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{c != y} z_c - z_y`` (Carlini-Wagner margin; positive once the prediction changed)."""
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return other.amax(1) - z_y


def obj_dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein, 2020); needs at least 3 classes."""
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    return -(z_y - srt[:, -2] * top_is_y - srt[:, -1] * (1.0 - top_is_y)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def obj_conf(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """APGD-conf objective, eq. 21: ``max_{c != F(x)} softmax(f(x'))_c``, the best other class recomputed."""
    p = logits.softmax(1)
    return p.scatter(1, y.view(-1, 1), float("-inf")).amax(1)


OBJECTIVES: dict[str, Objective] = {"ce": obj_ce, "margin": obj_margin, "dlr": obj_dlr, "conf": obj_conf}


# ---- targeted objectives: (logits, y, target) -> per-example values to MAXIMIZE (``apgd(..., target=t)``) ----


def obj_ce_targeted(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the target class (targeted APGD-CE)."""
    return -F.cross_entropy(logits, t, reduction="none")


def obj_dlr_targeted(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 6); for K < 4 the denominator uses z_pi1 - z_pi3 (K = 3) or 1 (K = 2)."""
    zs, _ = logits.sort(1)
    k = logits.shape[1]
    if k >= 4:
        den = zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12
    elif k == 3:
        den = zs[:, -1] - zs[:, -3] + 1e-12
    else:
        den = torch.ones_like(zs[:, 0])
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, t[:, None]).squeeze(1)
    return -(z_y - z_t) / den


TARGETED_OBJECTIVES = {"ce": obj_ce_targeted, "dlr": obj_dlr_targeted}


class WithAlpha(torch.nn.Module):
    """A mixture seen by the attacks: ``forward`` gives the logits and keeps ``alpha`` (alpha(x), per example, with
    its graph) of the same forward pass, so an objective can add a term in alpha(x) (setting D's
    ``w * log(1 - alpha(x))``) while APGD/PGD see an ordinary logits model. Models without ``forward_with_alpha``
    get alpha = 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_with_alpha"):
            z, self.alpha = self.model.forward_with_alpha(x)
        else:
            z = self.model(x)
            self.alpha = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        return z


def alpha_term(alpha: torch.Tensor) -> torch.Tensor:
    """log(1 - alpha): maximizing it pushes alpha(x) towards 0 (= minus the BCE towards the pseudo label 0)."""
    return torch.log1p(-alpha.clamp(0.0, 1.0 - 1e-6))


def _value_and_grad(model, x_adv: torch.Tensor, y: torch.Tensor, objective: Objective):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        val = objective(logits, y)
        (grad,) = torch.autograd.grad(val.sum(), x_adv)
    return logits.detach(), val.detach(), grad.detach()


def _bshape(x: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 1)


def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_flat_norm(t, norm).view(_bshape(t)) + 1e-12)


def _proj(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``z`` onto the eps-ball around ``x`` intersected with [0,1] (the reference's order)."""
    if norm == "Linf":
        return torch.clamp(torch.minimum(torch.maximum(z, x - eps), x + eps), 0.0, 1.0)
    d = z - x
    n = _flat_norm(d, "L2").view(_bshape(d))
    return torch.clamp(x + _normalize(d, "L2") * torch.clamp(n, max=eps), 0.0, 1.0)


class _Tracker:
    """Keeps, per example, the highest-objective point and the highest-objective fooled point."""

    def __init__(self, x: torch.Tensor):
        b = x.shape[0]
        self.best_x = x.clone()
        self.best_val = torch.full((b,), float("-inf"), device=x.device)
        self.adv_x = x.clone()
        self.adv_val = torch.full((b,), float("-inf"), device=x.device)
        self.fooled = torch.zeros(b, dtype=torch.bool, device=x.device)

    def update(self, x_cur, logits, val, y, rows=None) -> None:
        rows = rows if rows is not None else slice(None)
        val = val.float()
        fooled_now = logits.argmax(1) != y
        better = val > self.best_val[rows]
        bx, bv = self.best_x[rows], self.best_val[rows]
        bx[better] = x_cur[better]
        bv[better] = val[better]
        self.best_x[rows], self.best_val[rows] = bx, bv
        take = fooled_now & (val > self.adv_val[rows])
        ax, av, fo = self.adv_x[rows], self.adv_val[rows], self.fooled[rows]
        ax[take] = x_cur[take]
        av[take] = val[take]
        fo |= fooled_now
        self.adv_x[rows], self.adv_val[rows], self.fooled[rows] = ax, av, fo

    def result(self) -> torch.Tensor:
        """Fooled examples: their best fooled point; the others: their highest-objective point."""
        out = self.best_x.clone()
        out[self.fooled] = self.adv_x[self.fooled]
        return out


def _apgd_single(model, x, y, objective, eps, norm, steps, rho, generator, tracker, rows):
    """One APGD run (Linf or L2) from a random start; updates ``tracker`` at ``rows``."""
    dev = x.device
    gdev = generator.device if generator is not None else dev
    if norm == "Linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=gdev).to(dev, x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=gdev).to(dev, x.dtype)
    x_adv = torch.clamp(x + eps * _normalize(t, norm), 0.0, 1.0)

    n_iter_2 = max(int(0.22 * steps), 1)
    n_iter_min = max(int(0.06 * steps), 1)
    size_decr = max(int(0.03 * steps), 1)
    b = x.shape[0]
    logits, val, grad = _value_and_grad(model, x_adv, y, objective)
    tracker.update(x_adv, logits, val, y, rows)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), val.clone()
    loss_steps = torch.zeros((steps, b), device=dev)
    step_size = torch.full((b,) + (1,) * (x.dim() - 1), 2.0 * eps, device=dev, dtype=x.dtype)
    x_adv_old = x_adv.clone()
    k = n_iter_2
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)
    for i in range(steps):
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "Linf":
                z = _proj(x, x_adv + step_size * torch.sign(grad), eps, norm)
            else:
                z = _proj(x, x_adv + step_size * _normalize(grad, norm), eps, norm)
            x_adv = _proj(x, x_adv + (z - x_adv) * a + grad2 * (1 - a), eps, norm)
        logits, val, grad = _value_and_grad(model, x_adv, y, objective)
        tracker.update(x_adv, logits, val, y, rows)
        with torch.no_grad():
            loss_steps[i] = val
            better = val > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best[better] = val[better]
            counter3 += 1
            if counter3 == k:
                t_inc = torch.zeros(b, device=dev)
                for c5 in range(k):
                    t_inc += (loss_steps[i - c5] > loss_steps[i - c5 - 1]).float()
                osc = (t_inc <= k * rho).float()
                no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                osc = torch.maximum(osc, no_impr)
                reduced_last_check = osc.clone()
                loss_best_last_check = loss_best.clone()
                red = osc > 0
                if red.any():
                    step_size[red] /= 2.0
                    x_adv[red] = x_best[red]
                    grad[red] = grad_best[red]
                k = max(k - size_decr, n_iter_min)
                counter3 = 0


def apgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective | str = "ce",
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Auto-PGD maximizing ``objective(logits, y)`` over the eps-ball around ``x`` intersected with [0,1].

    Restarts after the first run only examples not yet fooled (``argmax != y``), as AutoAttack does.

    Args:
        model: [0,1] inputs -> logits (eval mode, set by the caller).
        x: clean inputs in [0,1]; y: the label to move away from (robcli passes the clean prediction).
        objective: a name in :data:`OBJECTIVES` (``conf`` is eq. 21's APGD-conf) or a callable.
        steps: iterations per run; restarts: runs.
        target: per-example target classes: the objective is then called ``objective(logits, y, target)`` (e.g.
            :data:`TARGETED_OBJECTIVES`); success is still any change of prediction (``argmax != y``), as in
            AutoAttack's APGD-T.

    Returns:
        Per example the fooled point of highest objective if one was found, else the highest-objective point.
    """
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    x = x.detach()
    tracker = _Tracker(x)
    if eps <= 0 or steps <= 0:
        return x.clone()
    for r in range(max(1, restarts)):
        rows = torch.nonzero(~tracker.fooled).flatten() if r > 0 else torch.arange(x.shape[0], device=x.device)
        if rows.numel() == 0:
            break
        o = obj if target is None else (lambda z, yy, _t=target[rows]: obj(z, yy, _t))
        _apgd_single(model, x[rows], y[rows], o, eps, norm, steps, rho, generator, tracker, rows)
    return tracker.result()


def pgd_restarts(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective | str = "margin",
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 40,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Madry et al.'s PGD (random start, fixed step ``2.5 eps / steps``) with restarts and best-point tracking.

    Returns:
        As :func:`apgd`: the best fooled iterate, else the highest-objective iterate, per example.
    """
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    x = x.detach()
    tracker = _Tracker(x)
    if eps <= 0 or steps <= 0:
        return x.clone()
    step = step_size if step_size is not None else 2.5 * eps / steps
    for r in range(max(1, restarts)):
        rows = torch.nonzero(~tracker.fooled).flatten() if r > 0 else torch.arange(x.shape[0], device=x.device)
        if rows.numel() == 0:
            break
        xs, ys = x[rows], y[rows]
        x_adv = random_start(xs, eps, norm, generator)
        for _ in range(steps):
            logits, val, grad = _value_and_grad(model, x_adv, ys, obj)
            tracker.update(x_adv, logits, val, ys, rows)
            with torch.no_grad():
                x_adv = (xs + project(x_adv + _step(grad, step, norm) - xs, eps, norm)).clamp(0, 1)
        with torch.no_grad():
            logits = model(x_adv)
            tracker.update(x_adv, logits, obj(logits, ys), ys, rows)
    return tracker.result()
