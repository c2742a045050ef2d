"""Adaptive attacks on mixed classifiers (the adaptive-smoothing paper's Sec. 4.2, settings A-D), registered as ``robcli attack --attack
mix-a|mix-b|mix-c|mix-d`` (tables: ``mix-A`` .. ``mix-D``) in the attack engine's registry.

* A — gray-box PGD: gradients of g and h, none through the mixing network (alpha(x) detached).
* B — white-box PGD through the whole mixture, alpha(x) included.
* C — AutoAttack on the mixture (pyautoattack, end-to-end gradients).
* D — adaptive AutoAttack. the adaptive-smoothing paper's Sec. 4.2: "we add an APGD loss component that aims to decrease alpha into
  AutoAttack to specifically target the mixing network", i.e. standard AutoAttack (APGD-CE, APGD-T, FAB-T,
  Square) whose APGD losses carry the extra term ``w * log(1 - alpha(x))`` that pushes alpha(x) down
  (towards the non-robust g), in BOTH the untargeted and the targeted APGD parts. Here, as AutoAttack's
  cascade (:func:`robcli.attacks.cascade.cascade`: each part runs on the examples all earlier parts failed on):
  adaptive APGD-CE -> adaptive APGD-T (top ``n_targets`` classes) -> the same APGD cascade WITHOUT the term
  (so the term can never make D weaker than plain APGD) -> FAB-T -> Square (pyautoattack, AutoAttack's
  standard parameters: FAB-T 1 restart over 9 targets, Square 5000 queries). FAB and Square have no loss
  to add the term to, so they run unchanged, exactly as in standard AutoAttack.

The APGD is robcli's one implementation (:func:`robcli.attacks.apgd.apgd`): the mixture is wrapped in
:class:`robcli.attacks.apgd.WithAlpha`, which hands APGD the logits and keeps alpha(x) of the same forward pass
for the objective's alpha term; the PGD is :func:`robcli.attacks.pgd.pgd`. :func:`apgd` and :func:`pgd_mix`
below are the loss-of-(logits, alpha, y, target) spellings of those two (used by mixnet training).

All attacks return adversarial inputs inside the eps-ball and [0, 1]; randomness comes from an explicit
``torch.Generator`` (pyautoattack reseeds the global RNG; we seed it from the generator for settings C and D).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robcli.attacks import apgd as _apgd
from robcli.attacks.apgd import WithAlpha, alpha_term, obj_dlr, obj_dlr_targeted
from robcli.attacks.cascade import cascade, still_robust
from robcli.attacks.pgd import pgd
from robcli.errors import UsageError
from robcli.mixing.mixed import MixedClassifier

SETTINGS = ("A", "B", "C", "D")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_loss(kind: str, alpha_weight: float = 0.0) -> LossFn:
    """A per-example loss of (logits, alpha, y, target) to MAXIMIZE: ``ce``, ``dlr``, ``ce-targeted``,
    ``dlr-targeted``, plus ``alpha_weight * log(1 - alpha(x))`` (setting D's extra term)."""
    if kind not in ("ce", "dlr", "ce-targeted", "dlr-targeted"):
        raise UsageError(f"unknown APGD loss {kind!r}")

    def fn(logits, alpha, y, t):
        if kind == "ce":
            val = F.cross_entropy(logits, y, reduction="none")
        elif kind == "dlr":
            val = obj_dlr(logits, y)
        elif kind == "ce-targeted":
            val = -F.cross_entropy(logits, t, reduction="none")
        else:
            val = obj_dlr_targeted(logits, y, t)
        if alpha_weight:
            val = val + alpha_weight * alpha_term(alpha)
        return val

    return fn


def _objective(wrapped: WithAlpha, loss: LossFn):
    """``loss(logits, alpha, y, target)`` as an objective of (logits, y[, target]) reading ``wrapped.alpha``."""
    return lambda z, y, t=None: loss(z, wrapped.alpha, y, t)


def _forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = WithAlpha(model)
    return w(x), w.alpha


def pgd_mix(model, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "Linf", steps: int = 20,
            step_size: float | None = None, loss: LossFn | None = None, rand_init: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`robcli.attacks.pgd.pgd` maximizing ``loss(logits, alpha, y, None)`` (default CE) through ``model``.

    ``eps`` may be a float or a (B,) tensor (randomized training radii). The default step size is
    2.5 eps / steps (Madry et al.). With ``rand_init=False`` it starts at x (004's "fixed initialization").
    """
    loss = loss or make_loss("ce")
    x = x.detach()
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(x.shape[0])
    if rand_init:
        if float(eps_t.min()) != float(eps_t.max()):
            raise ValueError("pgd_mix: a random start needs one radius for the batch")  # a bug in the caller
        eps_arg = float(eps_t[0]) if eps_t.numel() else 0.0
    else:
        eps_arg = eps_t
    step = (2.5 * eps_t / steps) if step_size is None and steps > 0 else step_size
    wrapped = WithAlpha(model)
    obj = _objective(wrapped, loss)
    return pgd(wrapped, x, lambda z, _xa: obj(z, y), eps=eps_arg, norm=norm, steps=steps, step_size=step,
               rand_init=rand_init, generator=generator)


def apgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
         loss: LossFn | None = None, target: torch.Tensor | None = None, n_restarts: int = 1,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`robcli.attacks.apgd.apgd` with a per-example loss of (logits, alpha, y, target) (default CE).

    Success is any misclassification (pred != y), for a targeted run too (AutoAttack's APGD-T).
    """
    if norm not in ("Linf", "L2"):
        raise UsageError(f"unknown norm {norm!r}; choose Linf or L2")
    wrapped = WithAlpha(model)
    obj = _objective(wrapped, loss or make_loss("ce"))
    return _apgd.apgd(wrapped, x, y, obj, eps=eps, norm=norm, steps=n_iter, restarts=n_restarts,
                      generator=generator, target=target)


def top_targets(model, x: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
    """The 2nd, 3rd, ... most likely classes at the clean point (AutoAttack's targets)."""
    with torch.no_grad():
        z, _ = _forward(model, x)
    order = z.argsort(1, descending=True)
    return [order[:, j] for j in range(1, min(n_targets + 1, z.shape[1]))]


def apgd_suite(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", n_iter: int = 100,
               n_targets: int = 9, alpha_weight: float = 0.0, n_restarts: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD-CE then targeted APGD-DLR over the top ``n_targets`` classes, each with the optional alpha term,
    as a :func:`~robcli.attacks.cascade.cascade` (each part on what the earlier ones left robust)."""
    with torch.no_grad():
        k = int(_forward(model, x[:1])[0].shape[1]) if x.shape[0] else 2
    kind = "dlr-targeted" if k >= 3 else "ce-targeted"

    def untargeted(xs, ys):
        return apgd(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, loss=make_loss("ce", alpha_weight),
                    n_restarts=n_restarts, generator=generator)

    def targeted(j):
        def part(xs, ys):
            t = top_targets(model, xs, j + 1)[j]
            return apgd(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, loss=make_loss(kind, alpha_weight),
                        target=t, n_restarts=n_restarts, generator=generator)
        return part

    n_t = max(0, min(int(n_targets), k - 1))
    return cascade(model, x, y, [untargeted, *[targeted(j) for j in range(n_t)]])


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
    """Adversarial inputs for attack setting A, B, C or D of the adaptive-smoothing paper's Sec. 4.2 (PGD: ``steps``; APGD and FAB:
    ``n_iter``; D's Square: ``n_queries``; D's targeted parts: ``n_targets``).

    ``model``: a :class:`MixedClassifier`, or a wrapper exposing its ``forward_with_alpha``, ``gray_box`` and
    ``adaptive`` (the attack engine's forward).

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
    # D: the APGD parts with the alpha term, the plain APGD parts (only when the term is on: with w = 0 they are
    # the same attack), then FAB-T and Square, as one cascade (per-example worst case)
    parts = [lambda xs, ys: apgd_suite(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, n_targets=n_targets,
                                       alpha_weight=alpha_weight, generator=generator)]
    if alpha_weight:
        parts.append(lambda xs, ys: apgd_suite(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter,
                                               n_targets=n_targets, alpha_weight=0.0, generator=generator))
    parts.append(lambda xs, ys: fab_square(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, n_targets=n_targets,
                                           n_queries=n_queries, generator=generator, device=device))
    return cascade(model, x, y, parts)


robust_mask = still_robust


# ---- the settings in the attack engine's registry: `robcli attack --attack mix-a|mix-b|mix-c|mix-d` ----------


def _runner(setting: str):
    def run(cfg, fwd, x, y, eps, seed, num_classes, notes):
        from robcli.utils.seeding import make_generator

        return attack_mixture(fwd, x, y, setting, eps=eps, norm=cfg.norm, steps=cfg.steps, n_iter=cfg.steps,
                              alpha_weight=cfg.mix_attack_weight or 0.0, n_targets=cfg.n_targets or 9,
                              n_queries=cfg.n_queries or 5000, generator=make_generator(seed, x.device),
                              device=x.device)

    return run


def _model_check(cfg, model) -> None:
    from robcli.mixing.io import is_mixnet_dir

    if not is_mixnet_dir(model):
        raise UsageError(f"--attack {cfg.attack} applies to mixture models (compose --mix, finetune --loss mixnet); "
                         f"{model} is not one")


def _load(cfg, model, dataset_info, device):
    from robcli.mixing.io import load_mixnet

    rng = (cfg.mix_min, cfg.mix_max) if cfg.mix_min is not None else None
    return load_mixnet(model, dataset_info=dataset_info, device=device, alpha_range=rng)


def _check(setting: str):
    def check(cfg, shape, num_classes) -> None:
        if setting in ("C", "D"):  # their Square part samples image patches
            from robcli.attacks.aa import check_inputs

            check_inputs("square", shape)

    return check


def _alpha_column(fwd, x) -> dict:
    with torch.no_grad():
        _, a = fwd.forward_with_alpha(x)
    return {"alpha": a.double().cpu().numpy()}


def _register() -> None:
    from robcli.attacks.engine import ATTACK_REGISTRY, AttackSpec

    what = {"A": ("gray-box PGD (alpha(x) detached)", 20, "--steps counts PGD steps", ("steps",)),
            "B": ("white-box PGD through the whole mixture", 20, "--steps counts PGD steps", ("steps",)),
            "C": ("AutoAttack (standard) on the mixture", 100, "standard AutoAttack uses its own settings", ()),
            "D": ("adaptive AutoAttack: APGD parts with the w log(1 - alpha) term, then plain AutoAttack", 100,
                  "--steps counts APGD and FAB iterations", ("steps", "mix_attack_weight", "n_targets", "n_queries"))}
    for s, (desc, steps, counts, flags) in what.items():
        name = f"mix-{s}"
        ATTACK_REGISTRY.add(name, AttackSpec(
            _runner(s), steps, counts, (*flags, "mix_min", "mix_max"), name, _check(s), _model_check, _load,
            _alpha_column, ("alpha",), ("g", "h")), f"mixture setting {s}: {desc}", aliases=(name.lower(),))


_register()
