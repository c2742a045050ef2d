"""Wrappers around ``pyautoattack`` (APGD-CE/DLR, APGD-T, FAB-T, Square, AutoAttack).

Traps handled here: the package defaults to ``device='cpu'`` (we pass the model's device);
``n_iter`` fixes APGD's step-size schedule at construction (we construct a fresh attack per call); every
attack reseeds the *global* torch RNG with its ``seed`` (we pass a derived seed right before each call and
run it inside ``torch.random.fork_rng`` so the caller's RNG state is left untouched); it returns no
per-example robustness (robcli re-evaluates the model on the returned points itself); its warnings
("randomized defense", "zero gradients", "Square beat the white-box attacks") are collected, not printed.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from robcli.errors import UsageError

AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
SQUARE_P_INIT = 0.8
AA_SQUARE_QUERIES = 5000  # Square inside AutoAttack (custom too) keeps its standard query budget


def min_classes(attack: str, version: str = "standard", aa_attacks: tuple[str, ...] = ()) -> int:
    """Fewest classes an attack can handle (DLR needs 3, targeted DLR 4)."""
    if attack == "apgd-dlr":
        return 3
    if attack == "apgd-t":
        return 4
    if attack == "autoattack":
        names = {"standard": ("apgd-t",), "plus": ("apgd-t",), "rand": ("apgd-dlr",)}.get(version, aa_attacks)
        return max([min_classes(n) for n in names] + [2])
    return 2


def check_classes(attack: str, num_classes: int, version: str = "standard", aa_attacks: tuple[str, ...] = ()) -> None:
    """Raise a one-line UsageError when the model has too few classes for the attack."""
    need = min_classes(attack, version, aa_attacks)
    if num_classes < need:
        what = attack if attack != "autoattack" else f"autoattack --version {version}"
        raise UsageError(
            f"--attack {what} needs at least {need} classes (the DLR loss uses the 3rd/4th largest logit); "
            f"the model has {num_classes}: use apgd-ce, apgd-conf, pgd, fab-t or square"
            + (" (or --version custom --aa-attacks apgd-ce,fab-t,square)" if attack == "autoattack" else "")
        )


def _members(attack: str, version: str, aa_attacks: tuple[str, ...]) -> tuple[str, ...]:
    if attack != "autoattack":
        return (attack,)
    return {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
            "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
            "rand": ("apgd-ce", "apgd-dlr")}.get(version, aa_attacks)


def check_inputs(attack: str, input_shape, version: str = "standard", aa_attacks: tuple[str, ...] = ()) -> None:
    """Square Attack samples square patches: it needs image inputs (C, H, W).

    Raises:
        UsageError: square (alone or inside AutoAttack) on vector inputs.
    """
    if "square" in _members(attack, version, aa_attacks) and len(tuple(input_shape)) != 3:
        what = attack if attack != "autoattack" else f"autoattack --version {version}"
        raise UsageError(
            f"--attack {what} runs Square Attack, which needs image inputs (C,H,W); these have shape "
            f"{tuple(input_shape)}: use apgd-ce, apgd-conf, pgd, grid or --version custom without square"
        )


@contextlib.contextmanager
def _quiet(device: torch.device, notes: list[str]):
    """Fork the global RNG, and collect pyautoattack's warnings and log messages into ``notes``."""
    logger = logging.getLogger("auto-attack")

    class _Collect(logging.Handler):
        def emit(self, record):  # pragma: no cover - depends on the model
            notes.append(record.getMessage())

    h = _Collect(level=logging.WARNING)
    old_prop, old_level = logger.propagate, logger.level
    logger.addHandler(h)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    devs = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devs), warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            yield
        notes.extend(str(w.message) for w in rec)
    finally:
        logger.removeHandler(h)
        logger.propagate, logger.level = old_prop, old_level


def run_pyautoattack(
    name: str,
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    restarts: int,
    seed: int,
    num_classes: int,
    version: str = "standard",
    aa_attacks: tuple[str, ...] = (),
    notes: list[str] | None = None,
) -> torch.Tensor:
    """Run one pyautoattack attack on a batch and return its points (not trusted: the caller re-checks).

    Args:
        name: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square`` or ``autoattack``.
        y: the label to move away from (robcli passes the model's clean prediction).
        steps: APGD/FAB iterations, Square queries. restarts: runs per attack (per target class for
            targeted attacks). For ``autoattack`` with version standard/plus/rand both are the package's.
        seed: the seed the package sets the global RNG to (inside a forked RNG).
    """
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    dev = x.device
    notes = notes if notes is not None else []
    n_targets = min(9, num_classes - 1)
    check_classes(name, num_classes, version, aa_attacks)

    def apgd(loss: str):
        return APGDAttack(model, n_iter=steps, norm=norm, n_restarts=restarts, eps=eps, seed=seed, loss=loss,
                          eot_iter=1, rho=0.75, device=dev)

    def apgd_t():
        return APGDAttack_targeted(model, n_iter=steps, norm=norm, n_restarts=restarts, eps=eps, seed=seed,
                                   n_target_classes=n_targets, device=dev)

    def fab(targeted: bool):
        return FABAttack_PT(model, norm=norm, n_restarts=restarts, n_iter=steps, eps=eps, seed=seed,
                            targeted=targeted, device=dev, n_target_classes=n_targets)

    def square():
        return SquareAttack(model, norm=norm, n_queries=steps, eps=eps, p_init=SQUARE_P_INIT,
                            n_restarts=restarts, seed=seed, device=dev, resc_schedule=False)

    x = x.detach().clone()
    y = y.detach().clone()
    with _quiet(dev, notes):
        if name in ("apgd-ce", "apgd-dlr"):
            return apgd(name.split("-")[1]).perturb(x, y)
        if name == "apgd-t":
            return apgd_t().perturb(x, y)
        if name == "fab-t":
            return fab(True).perturb(x, y)
        if name == "square":
            return square().perturb(x, y)
        if name == "autoattack":
            if version == "custom":
                aa = AutoAttack(model, attacks=list(aa_attacks), device=dev, eps=eps, norm=norm, seed=seed,
                                version="custom")
                # n_iter must be set at construction: replace the sub-attacks with ones built for --steps
                aa.apgd = apgd("ce")
                aa.apgd_targeted = apgd_t()
                aa.fab = fab(False)
                aa.square = SquareAttack(model, norm=norm, n_queries=AA_SQUARE_QUERIES, eps=eps,
                                         p_init=SQUARE_P_INIT, n_restarts=1, seed=seed, device=dev,
                                         resc_schedule=False)
            else:
                aa = AutoAttack(model, device=dev, eps=eps, norm=norm, seed=seed, version=version)
                aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_targets)
                aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_targets)
            aa.verbose = False
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
            return x_adv
    raise UsageError(f"unknown pyautoattack attack {name!r}")
