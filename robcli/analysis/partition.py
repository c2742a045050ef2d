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
