"""Adaptive attacks on mixed classifiers (004 Sec. 4.2, settings A-D).

* A — gray-box PGD: gradients of g and h, none through the mixing network (alpha(x) detached).
* B — white-box PGD through the whole mixture, alpha(x) included.
* C — AutoAttack on the mixture (pyautoattack, end-to-end gradients).
* D — adaptive AutoAttack. 004 Sec. 4.2: "we add an APGD loss component that aims to decrease alpha into
  AutoAttack to specifically target the mixing network", i.e. standard AutoAttack (APGD-CE, APGD-T, FAB-T,
  Square) whose APGD losses carry the extra term ``w * log(1 - alpha(x))`` that pushes alpha(x) down
  (towards the non-robust g), in BOTH the untargeted and the targeted APGD parts. Here, as AutoAttack's
  cascade (each part runs on the examples all earlier parts failed on; the per-example worst case):
  adaptive APGD-CE -> adaptive APGD-T (top ``n_targets`` classes) -> the same APGD cascade WITHOUT the term
  (so the term can never make D weaker than plain APGD) -> FAB-T -> Square (pyautoattack, AutoAttack's
  standard parameters: FAB-T 1 restart over 9 targets, Square 5000 queries). FAB and Square have no loss
  to add the term to (FAB works on the logits' decision boundary, Square is score-based), so they run
  unchanged, exactly as in standard AutoAttack. pyautoattack's APGD hard-codes its losses on the logits
  (``criterion_indiv(logits, y)``) and cannot see alpha(x), so this module implements APGD itself (Croce &
  Hein 2020, Alg. 1: momentum 0.75, step size 2 eps halved at checkpoints when fewer than 75 % of steps
  improved or the best loss stalled, restart from the best point; the checkpoint schedule of pyautoattack)
  with a pluggable loss of (logits, alpha, y, target). As in AutoAttack, a targeted APGD run succeeds on
  ANY misclassification (pred != y), not only on reaching its target.

All attacks return adversarial inputs inside the eps-ball and [0, 1]; randomness comes from an explicit
``torch.Generator`` (pyautoattack reseeds the global RNG; we seed it from the generator for setting C).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robcli.attacks.pgd import project, random_start
from robcli.errors import UsageError
from robcli.mixing.mixed import MixedClassifier

SETTINGS = ("A", "B", "C", "D")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    return f.abs().amax(1) if norm == "Linf" else f.norm(p=2, dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return grad.sign()
    return grad / _view(_flat_norm(grad, "L2").clamp_min(1e-12), grad)


def _proj(x_adv: torch.Tensor, x: torch.Tensor, eps, norm: str) -> torch.Tensor:
    return (x + project(x_adv - x, eps, norm)).clamp(0, 1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss (Croce & Hein 2020, eq. 5); needs K >= 3."""
    zs, ind = logits.sort(1)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    z_other = zs[:, -2] * top_is_y + zs[:, -1] * (1 - top_is_y)
    return -(zy - z_other) / (zs[:, -1] - zs[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (eq. 6); for K < 4 the denominator uses z_pi1 - z_pi3 (K = 3) or 1 (K = 2)."""
    zs, _ = logits.sort(1)
    K = logits.shape[1]
    if K >= 4:
        den = zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12
    elif K == 3:
        den = zs[:, -1] - zs[:, -3] + 1e-12
    else:
        den = torch.ones_like(zs[:, 0])
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, t[:, None]).squeeze(1)
    return -(zy - zt) / den


def alpha_term(alpha: torch.Tensor) -> torch.Tensor:
    """log(1 - alpha): maximizing it pushes alpha(x) towards 0 (= minus the BCE towards the pseudo label 0)."""
    return torch.log1p(-alpha.clamp(0.0, 1.0 - 1e-6))


def make_loss(kind: str, alpha_weight: float = 0.0) -> LossFn:
    """A per-example loss to MAXIMIZE: ``ce``, ``dlr``, ``ce-targeted``, ``dlr-targeted``, plus
    ``alpha_weight * log(1 - alpha(x))`` (setting D's extra term)."""
    if kind not in ("ce", "dlr", "ce-targeted", "dlr-targeted"):
        raise UsageError(f"unknown APGD loss {kind!r}")

    def fn(logits, alpha, y, t):
        if kind == "ce":
            val = F.cross_entropy(logits, y, reduction="none")
        elif kind == "dlr":
            val = dlr_loss(logits, y)
        elif kind == "ce-targeted":
            val = -F.cross_entropy(logits, t, reduction="none")
        else:
            val = dlr_targeted_loss(logits, y, t)
        if alpha_weight:
            val = val + alpha_weight * alpha_term(alpha)
        return val

    return fn


def _forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model, MixedClassifier):
        return model.forward_with_alpha(x)
    z = model(x)
    return z, torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)


def pgd_mix(model, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "Linf", steps: int = 20,
            step_size: float | None = None, loss: LossFn | None = None, rand_init: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD maximizing ``loss(logits, alpha, y, None)`` (default CE) through ``model``.

    ``eps`` may be a float or a (B,) tensor (randomized training radii). The default step size is
    2.5 eps / steps (Madry et al.). With ``rand_init=False`` it starts at x (004's "fixed initialization").
    """
    loss = loss or make_loss("ce")
    x = x.detach()
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(x.shape[0])
    if steps <= 0 or float(eps_t.max()) == 0.0:
        return x.clone()
    step = (2.5 * eps_t / steps) if step_size is None else torch.full_like(eps_t, float(step_size))
    if rand_init:
        dev = generator.device if generator is not None else x.device
        if norm == "Linf":
            d = 2 * torch.rand(x.shape, generator=generator, device=dev).to(x) - 1
        else:
            d = torch.randn(x.shape, generator=generator, device=dev).to(x)
            d = d / _view(_flat_norm(d, "L2").clamp_min(1e-12), d)
        x_adv = _proj(x + d * _view(eps_t, x), x, eps_t, norm)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            z, a = _forward(model, x_adv)
            (grad,) = torch.autograd.grad(loss(z, a, y, None).sum(), x_adv)
        with torch.no_grad():
            x_adv = _proj(x_adv + _view(step, x) * _ascent(grad, norm), x, eps_t, norm)
    return x_adv.detach()


def apgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
         loss: LossFn | None = None, target: torch.Tensor | None = None, n_restarts: int = 1,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD (Croce & Hein 2020, Alg. 1) with a pluggable per-example loss of (logits, alpha, y, target).

    Keeps, per example, the first point that is misclassified (pred != y; for a targeted run too, as
    AutoAttack's APGD-T counts any misclassification as success); otherwise the point of highest loss.
    Returns adversarial inputs.
    """
    if norm not in ("Linf", "L2"):
        raise UsageError(f"unknown norm {norm!r}; choose Linf or L2")
    loss = loss or make_loss("ce")
    x = x.detach()
    out = x.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if eps <= 0 or n_iter <= 0:
        return out
    n2, nmin, decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)

    def success(z):
        return z.argmax(1) != y

    def evaluate(xa):
        xa = xa.clone().requires_grad_(True)
        with torch.enable_grad():
            z, a = _forward(model, xa)
            val = loss(z, a, y, target)
            (gr,) = torch.autograd.grad(val.sum(), xa)
        return z.detach(), val.detach(), gr.detach()

    for _ in range(max(1, n_restarts)):
        x_adv = random_start(x, eps, norm, generator) if norm == "Linf" else _proj(random_start(x, eps, norm, generator), x, eps, norm)
        z, val, grad = evaluate(x_adv)
        s = success(z) & ~done
        out[s] = x_adv[s]
        done |= s
        step = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
        x_best, loss_best, grad_best = x_adv.clone(), val.clone(), grad.clone()
        x_prev = x_adv.clone()
        k, counter, n_incr = n2, 0, torch.zeros_like(val)
        best_at_check = loss_best.clone()
        reduced_at_check = torch.ones_like(val, dtype=torch.bool)
        for i in range(n_iter):
            with torch.no_grad():
                zstep = _proj(x_adv + _view(step, x) * _ascent(grad, norm), x, eps, norm)
                m = 0.75 if i > 0 else 1.0
                x_new = _proj(x_adv + m * (zstep - x_adv) + (1 - m) * (x_adv - x_prev), x, eps, norm)
                x_prev = x_adv
            z, val_new, grad = evaluate(x_new)
            s = success(z) & ~done
            out[s] = x_new[s]
            done |= s
            n_incr += (val_new > val).to(val.dtype)
            improved = val_new > loss_best
            x_best[improved] = x_new[improved]
            grad_best[improved] = grad[improved]
            loss_best = torch.where(improved, val_new, loss_best)
            x_adv, val = x_new, val_new
            counter += 1
            if counter == k:
                osc = n_incr < 0.75 * k
                stall = ~reduced_at_check & (best_at_check >= loss_best)
                red = osc | stall
                reduced_at_check = red.clone()
                best_at_check = loss_best.clone()
                if red.any():
                    step[red] /= 2.0
                    x_adv = x_adv.clone()
                    x_adv[red] = x_best[red]
                    grad = grad.clone()
                    grad[red] = grad_best[red]
                counter, n_incr = 0, torch.zeros_like(val)
                k = max(k - decr, nmin)
        if bool(done.all()):
            break
        out[~done] = x_best[~done]
    return out


def top_targets(model, x: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
    """The 2nd, 3rd, ... most likely classes at the clean point (AutoAttack's targets)."""
    with torch.no_grad():
        z, _ = _forward(model, x)
    order = z.argsort(1, descending=True)
    return [order[:, j] for j in range(1, min(n_targets + 1, z.shape[1]))]


def apgd_suite(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
               n_targets: int = 9, alpha_weight: float = 0.0, n_restarts: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD-CE then targeted APGD-DLR over the top ``n_targets`` classes, each with the optional alpha term.

    Runs only on the examples still correctly classified (AutoAttack's cascade) and returns per-example the
    first successful adversarial input (else the last attempt).
    """
    x = x.detach()
    x_out = x.clone()
    with torch.no_grad():
        z, _ = _forward(model, x)
    alive = z.argmax(1) == y
    if alive.any():
        xa = apgd(model, x[alive], y[alive], eps=eps, norm=norm, n_iter=n_iter,
                  loss=make_loss("ce", alpha_weight), n_restarts=n_restarts, generator=generator)
        x_out[alive] = xa
        with torch.no_grad():
            still = _forward(model, xa)[0].argmax(1) == y[alive]
        idx = alive.nonzero().squeeze(1)
        alive = torch.zeros_like(alive)
        alive[idx[still]] = True
    kind = "dlr-targeted" if z.shape[1] >= 3 else "ce-targeted"
    for t_all in top_targets(model, x, n_targets):
        if not alive.any():
            break
        sel = alive.nonzero().squeeze(1)
        xa = apgd(model, x[sel], y[sel], eps=eps, norm=norm, n_iter=n_iter, loss=make_loss(kind, alpha_weight),
                  target=t_all[sel], n_restarts=n_restarts, generator=generator)
        with torch.no_grad():
            broken = _forward(model, xa)[0].argmax(1) != y[sel]
        x_out[sel[broken]] = xa[broken]
        alive[sel[broken]] = False
    return x_out


def _aa_seed_device(generator: torch.Generator | None, device, x: torch.Tensor) -> tuple[int, str]:
    """pyautoattack's seed (drawn from ``generator``, on the generator's own device) and its device string."""
    seed = 0
    if generator is not None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
    return seed, str(device if device is not None else x.device)


def _adversary(model, x: torch.Tensor, *, eps: float, norm: str, version: str, attacks, generator, device):
    """A quiet pyautoattack AutoAttack on ``model``, seeded from ``generator``; returns (adversary, seed, device)."""
    from pyautoattack import AutoAttack

    seed, dev = _aa_seed_device(generator, device, x)
    adversary = AutoAttack(model, norm=norm, eps=eps, version=version, attacks=attacks, device=dev, seed=seed)
    adversary.verbose = False
    return adversary, seed, dev


def autoattack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
               version: str = "standard", attacks: list[str] | None = None, batch: int = 500,
               generator: torch.Generator | None = None, device=None, n_restarts: int | None = None,
               n_iter: int | None = None) -> torch.Tensor:
    """Setting C: pyautoattack's AutoAttack on the end-to-end mixture (global RNG seeded from ``generator``).

    ``attacks`` (a subset of apgd-ce, apgd-t, fab-t, square, ...) switches to ``version="custom"``;
    ``n_restarts`` overrides APGD-CE's restarts (custom mode keeps 5); ``n_iter`` rebuilds both APGD parts with
    that many iterations (AutoAttack's standard is 100).
    """
    if attacks is not None:
        version = "custom"
    adversary, seed, dev = _adversary(model, x, eps=eps, norm=norm, version=version, attacks=attacks,
                                      generator=generator, device=device)
    if n_iter is not None:  # APGD fixes its step schedule at construction: rebuild both APGD parts
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        adversary.apgd = APGDAttack(model, n_restarts=5, n_iter=int(n_iter), eps=eps, norm=norm, eot_iter=1,
                                    rho=0.75, seed=seed, device=dev)
        adversary.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=int(n_iter), eps=eps, norm=norm,
                                                      eot_iter=1, rho=0.75, seed=seed, device=dev)
        if version != "custom":
            adversary._set_version(version)  # re-apply the version's restarts/targets to the new objects
    if n_restarts is not None:
        adversary.apgd.n_restarts = int(n_restarts)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch)
    return x_adv.detach()


def fab_square(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
               n_targets: int = 9, n_queries: int = 5000, batch: int = 500,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The rest of standard AutoAttack after its APGD parts: FAB-T then Square (pyautoattack's cascade, with
    AutoAttack's standard parameters: FAB-T 1 restart, ``n_targets`` targets, ``n_iter`` iterations; Square
    ``n_queries`` queries, 1 restart). Runs only on the examples ``model`` still classifies as ``y``."""
    adversary, _, _ = _adversary(model, x, eps=eps, norm=norm, version="custom", attacks=["fab-t", "square"],
                                 generator=generator, device=device)
    adversary.fab.n_restarts = 1
    adversary.fab.n_iter = int(n_iter)
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    adversary.fab.n_target_classes = max(1, min(int(n_targets), k - 1))
    adversary.square.n_queries = int(n_queries)
    adversary.square.n_restarts = 1
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch)
    return x_adv.detach()


def attack_mixture(model: MixedClassifier, x: torch.Tensor, y: torch.Tensor, setting: str, *, eps: float,
                   norm: str = "Linf", steps: int = 20, n_iter: int = 100, alpha_weight: float = 1.0,
                   n_targets: int = 9, n_queries: int = 5000, generator: torch.Generator | None = None,
                   device=None) -> torch.Tensor:
    """Adversarial inputs for attack setting A, B, C or D of 004 Sec. 4.2 (PGD: ``steps``; APGD and FAB:
    ``n_iter``; D's Square: ``n_queries``; D's targeted parts: ``n_targets``).

    Raises:
        UsageError: unknown setting, or setting A/D on a fixed-alpha mixture (no alpha network to detach or push).
    """
    s = str(setting).upper()
    if s not in SETTINGS:
        raise UsageError(f"unknown attack setting {setting!r}; choose A (gray-box PGD), B (white-box PGD), "
                         "C (AutoAttack) or D (adaptive AutoAttack)")
    if s in ("A", "D") and not model.adaptive:
        raise UsageError(f"attack setting {s} targets a mixing network; this mixture has a fixed alpha (use B or C)")
    model.eval()
    if s == "A":
        with model.gray_box():
            return pgd_mix(model, x, y, eps=eps, norm=norm, steps=steps)
    if s == "B":
        return pgd_mix(model, x, y, eps=eps, norm=norm, steps=steps)
    if s == "C":
        return autoattack(model, x, y, eps=eps, norm=norm, generator=generator, device=device)
    # D: adaptive AutoAttack as a cascade (per-example worst case): the APGD parts with the alpha term, the
    # plain APGD parts (only when the term is on: with w = 0 they are the same attack), then FAB-T and Square.
    x_adv = apgd_suite(model, x, y, eps=eps, norm=norm, n_iter=n_iter, n_targets=n_targets,
                       alpha_weight=alpha_weight, generator=generator)
    parts = []
    if alpha_weight:
        parts.append(lambda xs, ys: apgd_suite(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter,
                                               n_targets=n_targets, alpha_weight=0.0, generator=generator))
    parts.append(lambda xs, ys: fab_square(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, n_targets=n_targets,
                                           n_queries=n_queries, generator=generator, device=device))
    for part in parts:
        alive = robust_mask(model, x_adv, y)
        if not alive.any():
            break
        sel = alive.nonzero().squeeze(1)
        x2 = part(x[sel], y[sel])
        broken = ~robust_mask(model, x2, y[sel])
        x_adv[sel[broken]] = x2[broken]
    return x_adv


def robust_mask(model, x_adv: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per example: the model still predicts ``y`` at ``x_adv``."""
    with torch.no_grad():
        preds = torch.cat([model(x_adv[s:s + batch]).argmax(1) for s in range(0, x_adv.shape[0], batch)])
    return preds == y

