"""Selectors of the paper (Sec. 5, 7.2) reduced to the per-example facts a sound evaluation needs.

Each robust model of a composition becomes a :class:`Member` holding, per example:

* ``sel``   -- the selector's decision at the clean input x (used for natural accuracy);
* ``rsel``  -- robust selection, eq. 14: the selector selects at every x' in B_eps(x);
* ``ok``    -- every input of B_eps(x) that the selector could route to this model gets the label y;
* ``pred``  -- the value the model outputs wherever it is selected (only meaningful when ``fixed_pred``).

Robustness indicator (eq. 12, empirical; eq. 13, certified): S(x) = 1{F constant on B_eps(x)}.
  sel = robust at eps; rsel = robust at 2*eps (the 2*eps rule of eq. 14: S(x') = 1 for all x' in B_eps(x)
  iff F is constant on B_2eps(x)). Key fact used for ``ok``: if S(x') = 1 then F is constant on
  B_eps(x'), which contains x, so F(x') = F(x). Hence wherever this selector selects inside the ball, the
  model outputs F(x): ``ok`` = 1{F(x) = y}. For the certified selector, Cohen's abstain (predict = -1)
  gives ``ok`` = False (the value is unknown). The paper states radius >= eps suffices for the certified
  selector; robust selection here uses radius >= 2*eps by default, the same argument as eq. 14
  (``check='eps'`` reproduces the paper's criterion and is labelled as such).

Softmax response (eq. 16): S(x) = 1{max_c f(x)_c >= tau}. sel = clean confidence >= tau; rsel = the lowest
  max-softmax found on B_2eps(x) (APGD-conf at 2*eps, eq. 21, or our confidence-minimising PGD) >= tau;
  the RI fact does not hold, so ``ok`` = F robust and accurate on B_eps(x) (every attack at eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robcli.analysis.metrics import ModelView
from robcli.errors import UsageError

SELECTORS = ("ri", "sr")
SELECTOR_ALIASES = {
    "ri": "ri", "robustness-indicator": "ri", "robust": "ri",
    "sr": "sr", "softmax-response": "sr", "softmax": "sr",
}


def parse_selector(name: str) -> str:
    key = str(name).strip().lower()
    if key not in SELECTOR_ALIASES:
        raise UsageError(f"unknown selector {name!r}; choose ri (robustness indicator) or sr (softmax response)")
    return SELECTOR_ALIASES[key]


@dataclass
class Member:
    """One robust model with its selector, as per-example boolean/int arrays aligned on sorted idx."""

    name: str
    selector: str  # ri-empirical | ri-certified | softmax-response
    sel: np.ndarray
    rsel: np.ndarray
    ok: np.ndarray
    pred: np.ndarray
    const: np.ndarray  # wherever selected inside B_eps(x), the model outputs ``pred``
    threshold: float = float("nan")
    view: ModelView | None = None


def ri_member(at_eps: ModelView, at_check: ModelView, name: str | None = None) -> Member:
    """Robustness-indicator member (eq. 12/13) from views at eps and at the check radius (2*eps by default)."""
    sel = at_eps.df["robust"].to_numpy(bool)
    rsel = at_check.df["robust"].to_numpy(bool)
    pred = at_eps.df["pred"].to_numpy("int64")
    ok = at_eps.df["correct"].to_numpy(bool) & (pred != -1)
    kind = "ri-certified" if at_eps.kind == "certify" else "ri-empirical"
    # robust at 2*eps implies robust at eps; a table where it does not is inconsistent (weak attack at eps)
    rsel = rsel & sel if at_check is not at_eps else rsel
    return Member(name or at_eps.model, kind, sel, rsel, ok, pred, pred != -1, view=at_eps)


def sr_member(at_eps: ModelView, clean_conf, min_conf_2eps, tau: float, name: str | None = None) -> Member:
    """Softmax-response member (eq. 16) at threshold ``tau``.

    Args:
        at_eps: the robust model's worst case over the attacks at eps (should include APGD-conf).
        clean_conf: max softmax at x, per example.
        min_conf_2eps: lowest max softmax found on B_2eps(x), per example.
    """
    if not 0.0 <= tau <= 1.0:
        raise UsageError(f"threshold {tau!r} is outside [0, 1]")
    cc = np.asarray(clean_conf, dtype=float)
    mc = np.minimum(np.asarray(min_conf_2eps, dtype=float), cc)
    sel = cc >= tau
    rsel = mc >= tau
    df = at_eps.df
    robust = df["robust"].to_numpy(bool)
    ok = df["correct"].to_numpy(bool) & robust
    return Member(name or at_eps.model, "softmax-response", sel, rsel, ok, df["pred"].to_numpy("int64"), robust,
                  float(tau), at_eps)
