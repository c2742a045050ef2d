"""Attacks: training-time PGD, AutoAttack/APGD wrappers, APGD-conf, grid search, the mixture settings, eps sweeps.

``ATTACKS`` lists the names :data:`robcli.attacks.engine.ATTACK_REGISTRY` holds (a test checks they agree).
Importing this package loads torch (the PGD primitives below); the engine, pyautoattack and the mixture
attacks load on first use.
"""

from robcli.attacks.pgd import margin, perturbation_norm, pgd, project

ATTACKS: tuple[str, ...] = (
    "pgd", "apgd-ce", "apgd-t", "apgd-dlr", "apgd-conf", "fab-t", "square", "autoattack", "grid",
    "mix-A", "mix-B", "mix-C", "mix-D",
)

__all__ = ["ATTACKS", "margin", "perturbation_norm", "pgd", "project"]
