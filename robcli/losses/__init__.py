"""Training losses, registered by name. Each loss is ``fn(model, x, y, cfg, gen) -> (loss, terms)``.

``terms`` is a dict of floats (each term of the loss, for ``train_log.parquet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from robcli.utils.registry import Registry

LOSS_MODULES = ("std", "trades", "era", "dga", "noise", "cra")
LOSSES: Registry[Callable] = Registry("loss", modules=tuple(f"robcli.losses.{m}" for m in LOSS_MODULES))
"""The losses the generic training loop runs (``mixnet`` is not one: see :data:`ROUTED`)."""


def register_loss(name: str, description: str = ""):
    """Decorator registering ``fn(model, x, y, cfg, gen) -> (loss, terms)`` under ``name``."""
    return LOSSES.register(name, description)


@dataclass(frozen=True)
class LossConfig:
    """Every hyperparameter any loss reads. Validated by the finetune config."""

    eps: float = 0.0
    norm: str = "Linf"
    attack_steps: int = 10
    step_size: float | None = None  # default: eps / 4 for training (TRADES: 0.007 at 8/255 with 10 steps)
    beta: float = 1.0  # ERA / DGA / CRA weight on the robust-accuracy term (eq. 5, 9, 20)
    trades_beta: float = 6.0  # TRADES KL weight (eq. 7), batch-mean KL as in the TRADES paper
    era_adv: str = "descent"  # ERA adversarial point: 'descent' (inner targeted descent) or 'single'
    detach_weight: bool = True  # stop gradients through the soft inaccuracy weight 1 - p_y(x)
    era_steps: int | None = None  # ERA/DGA inner descent steps (None: era.DEFAULT_ERA_STEPS = 2, see losses/era.py)
    sigma: float = 0.12  # noise / CRA
    num_noise: int = 16  # CRA k
    temperature: float = 4.0  # CRA inverse softmax temperature Gamma


# losses `robcli finetune --loss` takes that do not train through the generic loop: name -> what trains them
ROUTED: dict[str, str] = {"mixnet": "robcli.mixing.run.train_adaptive_mixture (the adaptive mixing network)"}


def list_losses() -> list[str]:
    """Every name `robcli finetune --loss` takes: the registered losses and the routed ones (``mixnet``)."""
    return sorted(set(LOSSES.names()) | set(ROUTED))


def get_loss(name: str) -> Callable:
    """The loss function registered as ``name``; a UsageError naming the registered losses if there is none."""
    return LOSSES.get(name).obj
