"""Attacks: training-time PGD, AutoAttack/APGD wrappers, APGD-conf, grid search, eps sweeps.

Heavy modules (torch, pyautoattack) load on first use: ``ATTACKS`` is importable without torch.
"""

from robcli.attacks.pgd import margin, perturbation_norm, pgd, project

ATTACKS: tuple[str, ...] = (
    "pgd", "apgd-ce", "apgd-t", "apgd-dlr", "apgd-conf", "fab-t", "square", "autoattack", "grid",
)

__all__ = ["ATTACKS", "margin", "perturbation_norm", "pgd", "project"]
