"""Table rows for mixtures: attack tables (settings A-D, with alpha(x) per example), certify tables (mixture radii)
and compose tables (the fixed-alpha sweep). Pure functions returning DataFrames; the CLI writes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robcli.attacks.pgd import margin, perturbation_norm
from robcli.mixing.attacks import attack_mixture
from robcli.mixing.mixed import MixedClassifier


def attack_frame(model: MixedClassifier, x: torch.Tensor, y: torch.Tensor, idx, *, setting: str, eps: float,
                 norm: str = "Linf", steps: int = 20, n_iter: int = 100, n_targets: int = 9,
                 alpha_weight: float = 1.0, n_queries: int = 5000, batch: int = 256,
                 generator: torch.Generator | None = None, device=None, progress=None):
    """Attack-table rows (DESIGN.md columns) plus ``alpha_clean``/``alpha_adv`` (alpha(x) at x and at x_adv).

    Both members' logits must be finite: on every clean input (checked first, one forward pass each) and at
    every point the attack evaluates (watched on the device, read once per batch).

    Raises:
        NonFiniteOutput: NaN/inf logits of member ``g`` or ``h`` (``member`` says which).
    """
    import pandas as pd

    from robcli.models.finite import check_clean_logits, describe, raise_if_tripped, watching

    model.eval()
    rows = []
    n = x.shape[0]
    ids = np.asarray(idx, dtype=np.int64)
    dev = device or x.device
    for m in ("g", "h"):
        check_clean_logits(getattr(model, m), x, ids, batch=batch, device=dev, member=m)
    with watching(model, "g", "h") as watches:
        for s in range(0, n, batch):
            xb = x[s:s + batch].to(dev)
            yb = y[s:s + batch].to(xb.device)
            with torch.no_grad():
                zc, ac = model.forward_with_alpha(xb)
            pc = zc.argmax(1)
            where = (f"inside the eps-balls of examples {describe(ids[s:s + batch])} (met by attack setting "
                     f"{setting.upper()} at {norm} eps {eps:.4g}): robustness there is undefined (neither robust "
                     "nor a flip), so the attack stops and writes nothing")
            # robustness is judged against the model's own prediction (as in `robcli attack`), so the attack
            # also tries to flip wrong predictions and robust inaccuracy is measured, not assumed
            try:
                xa = attack_mixture(model, xb, pc, setting, eps=eps, norm=norm, steps=steps, n_iter=n_iter,
                                    n_targets=n_targets, alpha_weight=alpha_weight, n_queries=n_queries,
                                    generator=generator, device=device)
            except Exception:
                raise_if_tripped(watches, f"returned non-finite logits (NaN or inf) {where}")
                raise
            with torch.no_grad():
                za, aa = model.forward_with_alpha(xa)
            raise_if_tripped(watches, f"returned non-finite logits (NaN or inf) {where}")
            for w in watches.values():
                w.reset()
            pa = za.argmax(1)
            rows.append(pd.DataFrame({
                "idx": ids[s:s + batch], "label": yb.cpu().numpy(), "eps": float(eps),
                "norm": norm, "attack": f"mix-{setting.upper()}", "clean_pred": pc.cpu().numpy(),
                "adv_pred": pa.cpu().numpy(), "correct": (pc == yb).cpu().numpy(),
                "robust": (pa == pc).cpu().numpy(), "clean_margin": margin(zc, pc).cpu().numpy(),
                "adv_margin": margin(za, pc).cpu().numpy(),
                "pert_norm": perturbation_norm(xa, xb, norm).cpu().numpy(),
                "alpha_clean": ac.detach().cpu().numpy(), "alpha_adv": aa.detach().cpu().numpy(),
            }))
            if progress is not None:
                progress(min(s + batch, n), n, f"setting {setting.upper()}")
    return pd.concat(rows, ignore_index=True)


def certify_frame(cert, idx, labels, *, sigma: float, n0: int, n: int, alpha_cert: float, alpha: float,
                  seconds: float, norm: str | None = None, dim: int | None = None):
    """Certify-table rows (Cohen's columns + the mixture's) from a ``MixtureCertificate``.

    With ``norm`` (the norm the radii are stated in) the table gets a ``norm`` column, and with ``dim`` (the
    input dimension d) also ``radius_linf``, the Linf radius the certificate implies: r / sqrt(d) for an L2
    radius r (the largest Linf ball inside the L2 ball), r itself for an Linf radius.
    """
    labels = np.asarray(labels, dtype=np.int64)
    df = cert.frame()
    df.insert(0, "idx", np.asarray(idx, dtype=np.int64))
    df.insert(1, "label", labels)
    df["correct"] = df["predict"].to_numpy() == labels
    df["time"] = seconds / max(len(labels), 1)
    df["sigma"] = float(sigma) if sigma is not None else float("nan")
    df["N0"] = int(n0)
    df["N"] = int(n)
    df["alpha"] = float(alpha_cert)
    df["mix_alpha"] = float(alpha)
    df["pA_lower"] = df["pA_lower"].clip(0.0, 1.0)
    if norm is not None:
        from robcli.utils.parse import parse_norm

        norm = parse_norm(norm)
        df["norm"] = norm
        if dim is not None:
            df["radius_linf"] = df["radius"] / (math.sqrt(int(dim)) if norm == "L2" else 1.0)
    return df


def sweep_compose_frame(sweep, *, core: str, robust: str):
    """The fixed-alpha sweep as compose-table rows: one row per alpha.

    ``selector = "fixed-alpha"``, ``threshold = alpha``; ``robust_selection = alpha`` (the weight the mixture
    puts on the robust model); ``robust_acc`` = correct under all of the STD/ROB/MIX attacks;
    ``robust_inaccuracy`` = the prediction survives all attacks unchanged but is wrong (``robust_wrong``).
    """
    df = sweep.copy()
    df.insert(0, "selector", "fixed-alpha")
    df.insert(1, "threshold", df["alpha"].astype(float))
    df["robust_selection"] = df["alpha"].astype(float)
    df["selected_robust_acc"] = float("nan")
    df["robust_inaccuracy"] = df["robust_wrong"].astype(float)
    df["core_model"] = core
    df["robust_models"] = robust
    return df

