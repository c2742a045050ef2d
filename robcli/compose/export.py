"""Export a selector composition as a model that ``robcli attack`` can load and attack end to end.

A composite run directory holds only ``card.json`` with ``arch: "composite"`` and the member run
directories (stored relative to the composite's directory when possible, so that moving the tree together
keeps it loadable; absolute otherwise); ``robcli.models.load.load_model`` loads it through
:func:`load_composite`.

Three selectors can be exported:

* ``robustness-indicator`` (eq. 12): for each input x an *inner attack* (our seeded PGD or APGD from
  :mod:`robcli.attacks`, at the composition's eps and norm, against the robust model's own prediction at x)
  decides whether the robust model is robust at x; robust -> the robust model's output, else the next
  member's, else the core model's. The composite is then the model whose robust accuracy the compose table
  estimates, so attacking it checks the table's number (an attack on H is only as strong as the inner
  attack: a weak inner attack makes H select where the true indicator would not).
* ``softmax-response`` (eq. 16, ``compose --selector sr``): for each input x an inner attack (our seeded
  confidence-minimising PGD at the composition's eps and norm,
  :func:`robcli.compose.confidence.ball_min_confidence`) looks for the lowest max softmax on B_eps(x): x
  itself and every iterate count, a point where the prediction flipped counts as at most 0.5; member j is
  used when that lowest confidence is >= its threshold. As for the indicator, the composite is only as strict
  as its inner attack, and the compose table (which also takes every attack row at eps) is at least as strict
  when it ran the same attack (``--steps``, seed).
* ``softmax-response-pointwise`` (``compose --selector sr-pointwise``, not eq. 16): member j is used when its
  max softmax at the input is >= its threshold. Cards written before eq. 16 was implemented (selector
  ``softmax-response`` without an ``inner_attack``) computed this and load as it.

The forward returns the routed model's log-probabilities (valid logits), so gradients flow through the
chosen branch; the selector decision is piecewise constant and gives no gradient (use black-box attacks
such as Square as well).

The default inner attack ``pgd`` (the only one for softmax response) starts at x and then (``restarts > 1``) from seeded random offsets shared by
all examples, so the decision at x does not depend on the other inputs of the batch. ``apgd-ce`` draws its
random start per forward call from a generator seeded with the card's seed: deterministic for a given batch,
but the start of an example depends on the batch it sits in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from robcli.errors import ModelError, UsageError

ARCH = "composite"
SELECTORS = ("robustness-indicator", "softmax-response", "softmax-response-pointwise")
INNER_ATTACKS = ("pgd", "apgd-ce")
SR_INNER_ATTACKS = ("pgd",)
SR_RULE = ("eq. 16: select when the lowest max-softmax found on B_eps(x) (x and every iterate of the inner "
           "attack; 0.5 where the prediction flipped) is >= the threshold")


class CompositeModel(nn.Module):
    """H(x) = F_j(x) for the first member j whose selector selects at x, else F_core(x) (eq. 15 / cascade).

    Args:
        members: robust models, tried in order.
        core: the core model.
        selector: ``robustness-indicator`` or ``softmax-response`` (eq. 16; both run an inner attack at
            ``eps``/``norm``), or ``softmax-response-pointwise`` (clean confidence only).
        thresholds: softmax-response thresholds, one per member.
        inner_attack, inner_steps, inner_restarts, seed: the inner attack (softmax response: ``pgd`` only).
    """

    def __init__(self, members: Sequence[nn.Module], core: nn.Module, *, selector: str = "softmax-response",
                 thresholds: Sequence[float] | None = None, eps: float | None = None, norm: str = "Linf",
                 inner_attack: str = "pgd", inner_steps: int = 20, inner_restarts: int = 1, seed: int = 0):
        super().__init__()
        if not members:
            raise ModelError("a composite needs at least one robust member")
        if selector not in SELECTORS:
            raise ModelError(f"unknown composite selector {selector!r}; choose one of {', '.join(SELECTORS)}")
        self.members = nn.ModuleList(members)
        self.core = core
        self.selector = selector
        if selector.startswith("softmax-response"):
            if thresholds is None or len(thresholds) != len(members):
                raise ModelError("a softmax-response composite needs one threshold per robust member")
            self.register_buffer("thresholds", torch.tensor([float(t) for t in thresholds]))
        if selector != "softmax-response-pointwise":
            if eps is None or not eps > 0:
                raise ModelError(f"a {selector} composite needs eps > 0")
            allowed = SR_INNER_ATTACKS if selector == "softmax-response" else INNER_ATTACKS
            if inner_attack not in allowed:
                raise ModelError(f"inner attack {inner_attack!r} is not available for the {selector} selector; "
                                 f"choose {' or '.join(allowed)}")
            if int(inner_steps) < 1 or int(inner_restarts) < 1:
                raise ModelError("the inner attack needs steps >= 1 and restarts >= 1")
        self.eps = float(eps) if eps is not None else None
        self.norm = norm
        self.inner_attack = inner_attack
        self.inner_steps = int(inner_steps)
        self.inner_restarts = int(inner_restarts)
        self.seed = int(seed)

    def robust_at(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The empirical robustness indicator: the inner attack found no other class on B_eps(x)."""
        from robcli.attacks.apgd import apgd
        from robcli.attacks.pgd import margin, pgd
        from robcli.compose.confidence import shared_offset
        from robcli.utils.seeding import make_generator

        if torch.is_inference_mode_enabled():  # e.g. certify: the inner attack needs autograd, so leave it here
            with torch.inference_mode(False):
                return self.robust_at(model, x.clone())
        xd = x.detach()
        with torch.no_grad():
            y = model(xd).argmax(1)
        gen = make_generator(self.seed, xd.device)
        robust = torch.ones(xd.shape[0], dtype=torch.bool, device=xd.device)
        if self.inner_attack == "apgd-ce":
            xa = apgd(model, xd, y, "ce", eps=self.eps, norm=self.norm, steps=self.inner_steps,
                      restarts=self.inner_restarts, generator=gen)
            with torch.no_grad():
                return model(xa).argmax(1) == y

        def objective(logits, _x):  # every iterate PGD visits counts, not only its last one
            robust.logical_and_(logits.detach().argmax(1) == y)
            return -margin(logits, y)

        for r in range(self.inner_restarts):
            if r == 0:
                start = xd
            else:  # one seeded offset for every example: the decision at x does not depend on the batch
                start = (xd + shared_offset(gen, xd, self.eps, self.norm)).clamp(0, 1)
            xa = pgd(model, xd, objective, eps=self.eps, norm=self.norm, steps=self.inner_steps, x_init=start)
            with torch.no_grad():
                robust &= model(xa).argmax(1) == y
        return robust

    def confident_on_ball(self, model: nn.Module, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Eq. 16 with the inner attack: the lowest max softmax found on B_eps(x) is >= ``tau``."""
        from robcli.compose.confidence import ball_min_confidence

        _, low = ball_min_confidence(model, x, eps=self.eps, norm=self.norm, steps=self.inner_steps,
                                     restarts=self.inner_restarts, seed=self.seed)
        return low >= tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.log_softmax(self.core(x), 1)
        chosen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for j, m in enumerate(self.members):
            lp = torch.log_softmax(m(x), 1)
            if self.selector == "softmax-response-pointwise":
                take = lp.exp().amax(1) >= self.thresholds[j]
            else:
                take = torch.zeros_like(chosen)
                todo = torch.nonzero(~chosen).flatten()
                if todo.numel():
                    take[todo] = (self.robust_at(m, x[todo]) if self.selector == "robustness-indicator"
                                  else self.confident_on_ball(m, x[todo], self.thresholds[j]))
            take = take & ~chosen
            out = torch.where(take.view(-1, 1), lp, out)
            chosen = chosen | take
        return out


def _stored_path(p: str | Path, out_dir: Path) -> str:
    """``p`` relative to the composite's directory when possible (else absolute)."""
    a = Path(p).resolve()
    try:
        return os.path.relpath(a, out_dir.resolve())
    except ValueError:  # e.g. another drive on Windows
        return str(a)


def _resolve(p: str, run_dir: Path) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else (run_dir / q))


def prepare_composite(out_dir: str | Path, members: Sequence[str], core: str, *, selector: str,
                      thresholds: Sequence[float] | None = None, eps: float | None = None, norm: str = "Linf",
                      inner_attack: str = "pgd", inner_steps: int = 20, inner_restarts: int = 1, seed: int = 0,
                      info: dict | None = None) -> dict:
    """Load and check the models and build the composite's card; writes nothing.

    Raises:
        ModelError: a member cannot be loaded, or the models disagree on input shape or number of classes.
        UsageError: bad selector settings.
    """
    from robcli.models import load_model, make_card

    if selector not in SELECTORS:
        raise UsageError(f"unknown composite selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    if selector.startswith("softmax-response") and (thresholds is None or len(thresholds) != len(members)):
        raise UsageError("a softmax-response export needs one threshold per robust model")
    if selector == "robustness-indicator" and inner_attack not in INNER_ATTACKS:
        raise UsageError(f"unknown inner attack {inner_attack!r}; choose one of {', '.join(INNER_ATTACKS)}")
    if selector == "softmax-response" and inner_attack not in SR_INNER_ATTACKS:
        raise UsageError(f"inner attack {inner_attack!r} is a margin attack for the robustness indicator; the "
                         f"softmax-response (eq. 16) export minimises the max softmax with {' or '.join(SR_INNER_ATTACKS)}")
    lms = [load_model(p) for p in [*members, core]]
    shapes = {tuple(lm.input_shape) for lm in lms}
    classes = {lm.num_classes for lm in lms}
    if len(shapes) != 1 or len(classes) != 1:
        raise ModelError("the composed models disagree on input shape or number of classes")
    # build it once, so that a bad setting fails here and not when `robcli attack` loads it
    CompositeModel([lm.model for lm in lms[:-1]], lms[-1].model, selector=selector, thresholds=thresholds, eps=eps,
                   norm=norm, inner_attack=inner_attack, inner_steps=inner_steps, inner_restarts=inner_restarts,
                   seed=seed)
    out = Path(out_dir)
    card = make_card(ARCH, classes.pop(), shapes.pop(), dataset=lms[-1].card.get("dataset"))
    spec: dict = {"selector": selector, "core": _stored_path(core, out)}
    if selector.startswith("softmax-response"):
        spec["members"] = [{"run": _stored_path(p, out), "threshold": float(t)} for p, t in zip(members, thresholds)]
    else:
        spec["members"] = [{"run": _stored_path(p, out)} for p in members]
    if selector == "robustness-indicator":
        spec["inner_attack"] = {
            "attack": inner_attack, "objective": "margin" if inner_attack == "pgd" else "ce",
            "steps": int(inner_steps), "restarts": int(inner_restarts), "eps": float(eps), "norm": norm,
            "seed": int(seed), "against": "the robust model's own prediction at the input",
        }
    elif selector == "softmax-response":
        spec["inner_attack"] = {
            "attack": inner_attack, "objective": "minimise max_c log softmax (top class recomputed)",
            "steps": int(inner_steps), "restarts": int(inner_restarts), "eps": float(eps), "norm": norm,
            "seed": int(seed), "counts": "x, every iterate and the last point; 0.5 where the prediction flipped",
        }
        spec["rule"] = SR_RULE
    else:
        spec["rule"] = "pointwise (not eq. 16): select when the max softmax at the input is >= the threshold"
    spec.update(info or {})
    card["composite"] = spec
    return card


def write_card(out_dir: str | Path, card: dict) -> Path:
    """Write a card from :func:`prepare_composite` (atomic; the members stay where they are)."""
    from robcli.models import CARD
    from robcli.utils.fsio import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CARD, json.dumps(card, indent=2, sort_keys=True).encode())
    return out


def write_composite(out_dir: str | Path, members: Sequence[str], core: str, **kw) -> Path:
    """:func:`prepare_composite` then :func:`write_card`."""
    return write_card(out_dir, prepare_composite(out_dir, members, core, **kw))


def load_composite(run_dir: str | Path, card: dict):
    """Build the :class:`CompositeModel` a composite card describes (called by ``load_model``)."""
    from robcli.models import LoadedModel, load_model

    run_dir = Path(run_dir)
    spec = card.get("composite") or {}
    try:
        selector = spec.get("selector", "softmax-response")
        runs = [_resolve(m["run"], run_dir) for m in spec["members"]]
        core = _resolve(spec["core"], run_dir)
        if selector == "softmax-response" and "inner_attack" not in spec:
            selector = "softmax-response-pointwise"  # a card from before eq. 16: it computed the pointwise rule
        kw: dict = {"selector": selector}
        if selector.startswith("softmax-response"):
            kw["thresholds"] = [float(m["threshold"]) for m in spec["members"]]
        if selector != "softmax-response-pointwise":
            ia = spec["inner_attack"]
            kw.update(eps=float(ia["eps"]), norm=str(ia["norm"]), inner_attack=str(ia["attack"]),
                      inner_steps=int(ia["steps"]), inner_restarts=int(ia.get("restarts", 1)),
                      seed=int(ia.get("seed", 0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ModelError(f"{run_dir}: composite card is malformed") from None
    lms = [load_model(p) for p in runs]
    lc = load_model(core)
    model = CompositeModel([lm.model for lm in lms], lc.model, **kw).eval()
    files = [f for lm in [*lms, lc] for f in lm.files]
    return LoadedModel(model, card, files, "run")
