"""Export a selector composition as a model that ``robcli attack`` can load and attack end to end.

A composite run directory holds only ``card.json`` with ``arch: "composite"`` and the member run
directories (absolute paths); ``robcli.models.io.load_model`` loads it through :func:`load_composite`.

The exported selector is a softmax response (eq. 16 without the ball): member j is used when its max
softmax at the input is >= its threshold. A robustness indicator (eq. 12) needs an attack inside every
forward pass, which a model cannot carry; the export approximates it by a softmax-response threshold
(given, or calibrated to agree most often with the robustness indicator on the evaluated examples).
The forward returns the routed model's log-probabilities, so gradients flow through the chosen branch;
the hard routing gives the selector itself no gradient (use black-box attacks such as Square as well).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from robcli.errors import ModelError

ARCH = "composite"


class CompositeModel(nn.Module):
    """H(x) = F_j(x) for the first j with max softmax f_j(x) >= tau_j, else F_core(x) (eq. 15 / cascade)."""

    def __init__(self, members: Sequence[nn.Module], thresholds: Sequence[float], core: nn.Module):
        super().__init__()
        if len(members) != len(thresholds) or not members:
            raise ModelError("a composite needs one threshold per robust member and at least one member")
        self.members = nn.ModuleList(members)
        self.core = core
        self.register_buffer("thresholds", torch.tensor([float(t) for t in thresholds]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.log_softmax(self.core(x), 1)
        chosen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for j, m in enumerate(self.members):
            lp = torch.log_softmax(m(x), 1)
            take = (lp.exp().amax(1) >= self.thresholds[j]) & ~chosen
            out = torch.where(take.view(-1, 1), lp, out)
            chosen |= take
        return out


def calibrate_threshold(conf: np.ndarray, selected: np.ndarray) -> float:
    """The threshold tau that makes 1{conf >= tau} agree with ``selected`` on the most examples."""
    cands = np.unique(np.concatenate([[0.0, 1.0], conf]))
    best, best_agree = 1.0, -1
    for t in cands:
        agree = int(((conf >= t) == selected).sum())
        if agree > best_agree:
            best, best_agree = float(t), agree
    return best


def write_composite(out_dir: str | Path, members: Sequence[str], thresholds: Sequence[float], core: str,
                    *, info: dict) -> Path:
    """Write a composite run directory (card only; members stay where they are)."""
    from robcli.models.io import CARD, _atomic_write_bytes, load_model, make_card

    lms = [load_model(p) for p in [*members, core]]
    shapes = {tuple(lm.input_shape) for lm in lms}
    classes = {lm.num_classes for lm in lms}
    if len(shapes) != 1 or len(classes) != 1:
        raise ModelError("the composed models disagree on input shape or number of classes")
    card = make_card(ARCH, classes.pop(), shapes.pop(), dataset=lms[-1].card.get("dataset"))
    card["composite"] = {
        "selector": "softmax-response",
        "members": [{"run": str(Path(p).resolve()), "threshold": float(t)} for p, t in zip(members, thresholds)],
        "core": str(Path(core).resolve()),
        **info,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out / CARD, json.dumps(card, indent=2, sort_keys=True).encode())
    return out


def load_composite(run_dir: str | Path, card: dict):
    """Build the :class:`CompositeModel` a composite card describes (called by ``load_model``)."""
    from robcli.models.io import LoadedModel, load_model

    spec = card.get("composite") or {}
    try:
        members = [(m["run"], float(m["threshold"])) for m in spec["members"]]
        core = spec["core"]
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{run_dir}: composite card is malformed") from None
    lms = [load_model(p) for p, _ in members]
    lc = load_model(core)
    model = CompositeModel([lm.model for lm in lms], [t for _, t in members], lc.model).eval()
    files = [f for lm in [*lms, lc] for f in lm.files]
    return LoadedModel(model, card, files, "run")
