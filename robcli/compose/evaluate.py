"""Sound table-based evaluation of 2-compositional models and cascades (paper eq. 15, Sec. 6, 7.3).

H(x) = F_1(x) if S_1(x) else F_2(x) if S_2(x) else ... else F_core(x). Two members give eq. 15; more give
the cascade of the paper's future-work item (models tried in order before the core model).

Soundness rule (README "Compositions: when an example counts"). An example counts as robust and accurate for H only when every
x' in B_eps(x) gets the label y:

* let j* be the first member that robustly selects (``rsel``: selects on the whole ball). Members before
  j* might select somewhere in the ball, and j* itself does, so each member j <= j* must be ``ok``
  (for the robustness indicator and eq. 16's softmax response with threshold > 1/2: F_j(x) = y; for the
  pointwise softmax response and eq. 16 with threshold <= 1/2: F_j robust and accurate on the ball; see
  :mod:`robcli.compose.selectors`);
* if no member robustly selects, every member must be ``ok`` (we never claim that a selector abstains
  robustly: attacks cannot prove it) and the core model must be robust and accurate at eps.

Robust inaccuracy of H (eq. 3) counts examples where H is constant on the ball by the same checks (with
"outputs F_j(x)" in place of "outputs y", and the core model robust with the same prediction) and that
constant is wrong.

The numbers inherit the attacks' optimism: "robust" from an attack table is an upper bound. Built from
certify tables, a claim for one example can rest on up to m + 1 certificates (the members and the core), so it
holds with probability at least 1 - (sum of their alphas) (union bound; ``compose`` records it as
``composition_alpha``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from robcli.analysis.metrics import ModelView, summarize
from robcli.compose.selectors import Member


def evaluate_composition(members: Sequence[Member], core: ModelView) -> tuple[dict, object]:
    """Metrics of the composition and a per-example frame.

    Returns:
        (metrics dict, pandas DataFrame indexed by idx with ``pred, routed, robust_accurate, robust``).
    """
    import pandas as pd

    if not members:
        raise ValueError("a composition needs at least one robust member")
    label = core.df["label"].to_numpy("int64")
    n = label.shape[0]
    c_pred = core.df["pred"].to_numpy("int64")
    c_robacc = core.df["correct"].to_numpy(bool) & core.df["robust"].to_numpy(bool)
    c_robust = core.df["robust"].to_numpy(bool)

    # natural prediction: first member whose selector selects at x
    pred = c_pred.copy()
    routed = np.full(n, -1, dtype=np.int64)  # -1: core model
    for j in range(len(members) - 1, -1, -1):
        m = members[j]
        pred = np.where(m.sel, m.pred, pred)
        routed = np.where(m.sel, j, routed)

    ok = np.ones(n, dtype=bool)
    undecided = np.ones(n, dtype=bool)
    # constant-output bookkeeping for robust inaccuracy
    const = np.ones(n, dtype=bool)
    value = np.full(n, -2, dtype=np.int64)  # -2: nothing seen yet
    for m in members:
        ok &= ~undecided | m.ok
        same = (value == -2) | (value == m.pred)
        const &= ~undecided | (m.const & same)
        value = np.where(undecided & (value == -2), m.pred, value)
        undecided &= ~m.rsel
    ok &= ~undecided | c_robacc
    same = (value == c_pred)
    const &= ~undecided | (c_robust & same)
    robust_inacc = const & (value != label) & (value >= 0)
    rsel_any = ~undecided

    cs = summarize(core)
    nat = float((pred == label).mean())
    racc = float(ok.mean())
    n_sel = int(rsel_any.sum())
    metrics = {
        "n": n,
        "nat_acc": nat,
        "robust_acc": racc,
        "robust_selection": float(rsel_any.mean()),
        "selected_robust_acc": float(ok[rsel_any].mean()) if n_sel else math.nan,
        "robust_inaccuracy": float(robust_inacc.mean()),
        "selection_rate": float((routed >= 0).mean()),
        "core_nat_acc": cs["nat_acc"],
        "core_robust_acc": cs["robust_acc"],
        "core_robust_inaccuracy": cs["robust_inaccuracy"],
        "delta_nat_acc": nat - cs["nat_acc"],
        "delta_robust_acc": racc - cs["robust_acc"],
    }
    first = members[0].view
    if first is not None:
        rs = summarize(first)
        metrics.update({
            "robust_model_nat_acc": rs["nat_acc"],
            "robust_model_robust_acc": rs["robust_acc"],
            "robust_model_robust_inaccuracy": rs["robust_inaccuracy"],
        })
    per = pd.DataFrame({"label": label, "pred": pred, "routed": routed, "robust_accurate": ok,
                        "robust_selected": rsel_any, "robust_inaccurate": robust_inacc}, index=core.df.index)
    return metrics, per


def sweep(make_members, thresholds: Sequence[float], core: ModelView) -> list[dict]:
    """Evaluate ``make_members(tau)`` for each threshold (softmax-response sweep); one metrics dict each."""
    rows = []
    for t in thresholds:
        m, _ = evaluate_composition(make_members(float(t)), core)
        m["threshold"] = float(t)
        rows.append(m)
    return rows
