"""Pareto fronts over two metrics (paper Sec. 7.1-7.3, Figures 2-4).

A point is kept when no other point is at least as good on both metrics and strictly better on one.
``robust_inaccuracy`` (and losses/times) is minimised by default; every other metric is maximised.
:data:`METRICS` lists the metrics ``robcli report --pareto X,Y`` accepts.
"""

from __future__ import annotations

MINIMIZE = frozenset({"robust_inaccuracy", "val_robust_inaccuracy", "core_robust_inaccuracy",
                      "robust_model_robust_inaccuracy", "loss", "time", "seconds"})

# metrics a report can put on a Pareto front (columns of compose tables / model summaries): True = higher is better
METRICS: dict[str, bool] = {
    "nat_acc": True,
    "robust_acc": True,
    "robust_inaccuracy": False,
    "robust_selection": True,
    "selected_robust_acc": True,
    "selection_rate": True,
    "delta_nat_acc": True,
    "delta_robust_acc": True,
}


def direction(metric: str) -> str:
    """``"higher"`` or ``"lower"``: which way ``metric`` is better."""
    return "lower" if metric in MINIMIZE or METRICS.get(metric) is False else "higher"


def parse_metrics(spec: str) -> tuple[str, str]:
    """``"X,Y"`` -> (X, Y), two distinct names of :data:`METRICS`.

    Raises:
        UsageError: not two names, or a name that is not a known metric (the message lists the valid ones).
    """
    from robcli.errors import UsageError

    parts = [p.strip() for p in str(spec).split(",")]
    valid = ", ".join(f"{m} ({direction(m)} is better)" for m in METRICS)
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--pareto {spec!r} must name two metrics as X,Y; valid: {valid}")
    bad = [p for p in parts if p not in METRICS]
    if bad:
        raise UsageError(f"--pareto: unknown metric {bad[0]!r}; valid: {valid}")
    if parts[0] == parts[1]:
        raise UsageError(f"--pareto {spec!r} names the same metric twice")
    return parts[0], parts[1]


def pareto_mask(xs, ys, *, maximize_x: bool = True, maximize_y: bool = True):
    """Boolean mask of the non-dominated points (NaN points are never kept).

    Ties (identical points) are all kept. O(n log n).
    """
    import numpy as np

    x = np.asarray(xs, dtype=float) * (1 if maximize_x else -1)
    y = np.asarray(ys, dtype=float) * (1 if maximize_y else -1)
    n = x.shape[0]
    keep = np.zeros(n, dtype=bool)
    ok = ~(np.isnan(x) | np.isnan(y))
    order = [i for i in np.lexsort((-y, -x)) if ok[i]]  # x descending, then y descending
    best_y = -np.inf
    prev = None
    for i in order:
        if prev is not None and x[i] == x[prev] and y[i] == y[prev]:
            keep[i] = keep[prev]
            continue
        if y[i] > best_y:
            keep[i] = True
            best_y = y[i]
        prev = i
    return keep


def pareto_front(df, x: str, y: str, *, maximize_x: bool | None = None, maximize_y: bool | None = None):
    """The rows of ``df`` on the Pareto front of columns ``x`` and ``y``, sorted by ``x``.

    Directions default to: minimise ``robust_inaccuracy`` (and losses/times), maximise everything else.
    """
    from robcli.errors import UsageError

    for c in (x, y):
        if c not in df.columns:
            raise UsageError(f"no column {c!r} to build a Pareto front (have: {', '.join(df.columns)})")
    mx = (x not in MINIMIZE) if maximize_x is None else maximize_x
    my = (y not in MINIMIZE) if maximize_y is None else maximize_y
    mask = pareto_mask(df[x].to_numpy(), df[y].to_numpy(), maximize_x=mx, maximize_y=my)
    return df[mask].sort_values(x, kind="stable")
