"""The four-way robustness/accuracy split of a data set (paper, Appendix A.9, Tables 8-9).

D = D_{r and a} + D_{r and not a} + D_{not r and a} + D_{not r and not a}, where "r" means the prediction
is constant on the threat ball (no attack found a change, or the certified radius reaches the ball) and
"a" means the clean prediction equals the label.
"""

from __future__ import annotations

from robcli.analysis.metrics import ModelView
from robcli.tables.schema import PARTITION_SPLITS


def split_names(correct, robust):
    """Vectorised split name per example from boolean arrays."""
    import numpy as np

    c = np.asarray(correct, dtype=bool)
    r = np.asarray(robust, dtype=bool)
    names = np.empty(c.shape, dtype=object)
    names[r & c] = "robust_accurate"
    names[r & ~c] = "robust_inaccurate"
    names[~r & c] = "nonrobust_accurate"
    names[~r & ~c] = "nonrobust_inaccurate"
    return names


def partition_view(t, *, eps=None, radius=None, sigma=None, attack=None, norm: str | None = None,
                   name: str | None = None, flag: str = "--") -> ModelView:
    """The per-example view of an attack or certify table that ``partition`` splits (one rule for the CLI and
    the API). ``eps`` for attack tables; ``radius`` (or ``eps``) and ``sigma`` for certify tables. ``name``: the
    table as the user gave it; ``flag``: how options are spelled in messages (``"--"`` on the command line,
    ``""`` for keyword arguments).

    Raises:
        UsageError: options that do not apply to the table's kind, or no threat radius for a certify table.
    """
    from robcli.analysis.metrics import view_from_table
    from robcli.errors import UsageError
    from robcli.utils.parse import parse_eps, parse_norm

    name = name or t.path
    nrm = parse_norm(norm) if norm is not None else None
    if t.kind == "attack":
        if radius is not None or sigma is not None:
            raise UsageError(f"{name} is an attack table: use {flag}eps ({flag}radius/{flag}sigma are for certify "
                             "tables)")
        e = parse_eps(str(eps), nrm or "Linf") if eps is not None else None
        return view_from_table(t, e, attack=attack, norm=nrm)
    if attack is not None:
        raise UsageError(f"{name} is a certify table: {flag}attack does not apply")
    if radius is not None and eps is not None:
        raise UsageError(f"give {flag}radius or {flag}eps, not both")
    r = radius if radius is not None else eps
    if r is None:
        raise UsageError(f"{name} is a certify table: give the threat radius with {flag}radius" + ("=" if not flag else ""))
    return view_from_table(t, parse_eps(str(r), "L2"), sigma=sigma, norm=nrm or "L2")


def partition_frame(view: ModelView):
    """One row per example: ``idx, label, split`` plus ``pred, correct, robust, eps, norm``."""
    import pandas as pd

    df = view.df
    out = pd.DataFrame({
        "idx": df.index.to_numpy().astype("int64"),
        "label": df["label"].to_numpy().astype("int64"),
        "split": split_names(df["correct"].to_numpy(), df["robust"].to_numpy()),
        "pred": df["pred"].to_numpy().astype("int64"),
        "correct": df["correct"].to_numpy(bool),
        "robust": df["robust"].to_numpy(bool),
    })
    out["eps"] = float(view.eps)
    out["norm"] = view.norm
    return out


def split_summary(part) -> dict[str, dict[str, float]]:
    """Count and fraction of each split (Table 8 rows), in the fixed order of ``PARTITION_SPLITS``."""
    n = len(part)
    counts = part["split"].value_counts()
    return {s: {"count": int(counts.get(s, 0)), "fraction": (float(counts.get(s, 0)) / n) if n else float("nan")}
            for s in PARTITION_SPLITS}
