"""Table rows for mixtures: certify tables (mixture radii) and compose tables (the fixed-alpha sweep). Pure
functions returning DataFrames. Mixture attack tables come from the attack engine (``attack --attack mix-*``).
"""

from __future__ import annotations

import math

import numpy as np


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

