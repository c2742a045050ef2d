"""Fixed-alpha sweep (the mixing paper's Sec. IV-A, Fig. 2; the adaptive-smoothing paper's Sec. 5.1.1, Fig. 4): natural and attacked accuracy of h^alpha
over a grid of alpha, under PGD attacks that target g (STD), h (ROB) and the mixture itself (MIX).

STD and ROB adversarial inputs do not depend on alpha and are computed once ("transfer" attacks) on the
members as the mixture sees them, i.e. on the scaled logits s_g * g and s_h * h (App. D.1's logit scales
change the softmax temperature and hence the CE gradient); the MIX attack is recomputed for every alpha
(end-to-end gradient of h^alpha). ``robust_acc`` counts an example only
when the mixture is correct under all three attacks (the worst case over the attacks run).
"""

from __future__ import annotations

import torch

from robcli.errors import UsageError
from robcli.mixing.attacks import pgd_mix
from robcli.mixing.mixed import MixedClassifier, check_alpha, check_scale


class _Scaled(torch.nn.Module):
    """``scale * model(x)``: a member's logits as the mixture uses them."""

    def __init__(self, model: torch.nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x)


def _scaled(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    return model if scale == 1.0 else _Scaled(model, scale)


def _attack(model, x, y, *, eps, norm, steps, batch):
    out = []
    for s in range(0, x.shape[0], batch):
        out.append(pgd_mix(model, x[s:s + batch], y[s:s + batch], eps=eps, norm=norm, steps=steps))
    return torch.cat(out)


def alpha_sweep(g: torch.nn.Module, h: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, alphas, *, eps: float,
                norm: str = "Linf", steps: int = 20, mix_space: str = "prob", scale_g: float = 1.0,
                scale_h: float = 1.0, batch: int = 256, attacks=("std", "rob", "mix")):
    """One row per alpha: ``alpha, mix_space, eps, norm, steps, n, nat_acc, std_acc, rob_acc, mix_acc, robust_acc,
    robust_wrong`` (``robust_wrong``: the prediction survives every attack unchanged but is wrong).

    Accuracies are fractions in [0, 1]. Attacks are PGD-``steps`` with CE loss, start at x (no random init),
    step 2.5 eps / steps.

    Both members' logits must be finite on every clean input (checked first) and at every point the attacks
    evaluate (watched on the device, read once at the end of the sweep).

    Raises:
        UsageError: empty grid, alpha outside [0, 1], unknown attack names.
        NonFiniteOutput: NaN/inf logits of member ``g`` or ``h`` (``member`` says which).
    """
    import pandas as pd

    from robcli.models.finite import FiniteWatch, Watched, check_clean_logits, raise_if_tripped

    grid = [check_alpha(a) for a in alphas]
    scale_g, scale_h = check_scale(scale_g, "scale_g"), check_scale(scale_h, "scale_h")
    if not grid:
        raise UsageError("give at least one alpha for the sweep")
    bad = set(attacks) - {"std", "rob", "mix"}
    if bad:
        raise UsageError(f"unknown sweep attacks {sorted(bad)}; choose std, rob, mix")
    g.eval()
    h.eval()
    ids = torch.arange(x.shape[0])
    check_clean_logits(g, x, ids, batch=batch, member="g")
    check_clean_logits(h, x, ids, batch=batch, member="h")
    watches = {"g": FiniteWatch(), "h": FiniteWatch()}
    g, h = Watched(g, watches["g"]).eval(), Watched(h, watches["h"]).eval()
    adv = {}
    if "std" in attacks:
        adv["std"] = _attack(_scaled(g, scale_g), x, y, eps=eps, norm=norm, steps=steps, batch=batch)
    if "rob" in attacks:
        adv["rob"] = _attack(_scaled(h, scale_h), x, y, eps=eps, norm=norm, steps=steps, batch=batch)
    rows = []
    for a in grid:
        m = MixedClassifier(g, h, a, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h).eval()
        row = {"alpha": a, "mix_space": mix_space, "eps": float(eps), "norm": norm, "steps": int(steps),
               "n": int(x.shape[0])}
        with torch.no_grad():
            pred0 = torch.cat([m(x[s:s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
        nat = pred0 == y
        row["nat_acc"] = float(nat.float().mean())
        ok = nat.clone()
        unchanged = torch.ones_like(nat)
        for name in ("std", "rob", "mix"):
            if name not in attacks:
                row[f"{name}_acc"] = float("nan")
                continue
            xa = adv[name] if name != "mix" else _attack(m, x, y, eps=eps, norm=norm, steps=steps, batch=batch)
            with torch.no_grad():
                pa = torch.cat([m(xa[s:s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
            c = pa == y
            row[f"{name}_acc"] = float(c.float().mean())
            ok &= c
            unchanged &= pa == pred0
        row["robust_acc"] = float(ok.float().mean())
        row["robust_wrong"] = float((unchanged & ~nat).float().mean())
        rows.append(row)
    raise_if_tripped(watches, f"returned non-finite logits (NaN or inf) inside the eps-balls of the sweep's "
                              f"examples (met by its PGD attacks at {norm} eps {eps:.4g}): accuracies under attack "
                              "would be undefined, so the sweep stops and writes nothing")
    return pd.DataFrame(rows)

