"""Selectors of the paper (Sec. 5, 7.2) reduced to the per-example facts a sound evaluation needs.

Each robust model of a composition becomes a :class:`Member` holding, per example:

* ``sel``   -- the selector's decision at the clean input x (used for natural accuracy);
* ``rsel``  -- robust selection, eq. 14: the selector selects at every x' in B_eps(x);
* ``ok``    -- every input of B_eps(x) that the selector could route to this model gets the label y;
* ``pred``  -- the model's prediction F(x);
* ``const`` -- wherever the selector selects inside B_eps(x), the model outputs ``pred`` (robust inaccuracy).

Robustness indicator (eq. 12, empirical; eq. 13, certified): S(x) = 1{F constant on B_eps(x)}.
  sel = robust at eps; rsel = robust at 2*eps (the 2*eps rule of eq. 14: S(x') = 1 for all x' in B_eps(x)
  iff F is constant on B_2eps(x)). Key fact used for ``ok``: if S(x') = 1 then F is constant on
  B_eps(x'), which contains x, so F(x') = F(x). Hence wherever this selector selects inside the ball, the
  model outputs F(x): ``ok`` = 1{F(x) = y}. For the certified selector, Cohen's abstain (predict = -1)
  gives ``ok`` = False (the value is unknown). The paper states radius >= eps suffices for the certified
  selector; robust selection here uses radius >= 2*eps by default, the same argument as eq. 14
  (``check='eps'`` reproduces the paper's criterion and is labelled as such).

Softmax response, ``--selector sr`` (eq. 16, as the paper states it): S(x) = 1{for all x' in B_eps(x):
  max_c f(x')_c >= tau}. The selector contains the ball, so
  sel  = the lowest max-softmax found on B_eps(x) >= tau, and
  rsel = the lowest max-softmax found on B_2eps(x) >= tau (the 2*eps rule of eq. 14: B_2eps(x) contains
  B_eps(x') for every x' in B_eps(x), so confidence >= tau on B_2eps(x) gives S(x') = 1 on all of B_eps(x)).
  "Lowest found" = the minimum over x itself, APGD-conf (eq. 21) and every other attack row at that radius
  (and our confidence-minimising PGD when the model is given), capped at 0.5 wherever an attack flipped the
  prediction (the two top classes tie on the segment to the flipped point): see :mod:`robcli.compose.confidence`.
  Key fact for ``ok`` when tau > 1/2 (and f continuous): if S(x') = 1 then the max softmax is >= tau > 1/2 on
  B_eps(x'), which contains the segment from x' to x, so the top class cannot change along it (a change needs
  a tie, where the max softmax is <= 1/2): F(x') = F(x). As for the robustness indicator, wherever this
  selector selects inside the ball the model outputs F(x): ``ok`` = 1{F(x) = y}, ``const`` = True. For
  tau <= 1/2 that argument fails and ``ok`` = F robust and accurate on B_eps(x) (every attack at eps).

Softmax response, pointwise, ``--selector sr-pointwise`` (Geifman & El-Yaniv's rule; NOT eq. 16):
  S(x) = 1{max_c f(x)_c >= tau}. sel = clean confidence >= tau; rsel = S(x') = 1 on all of B_eps(x) = the
  lowest max-softmax found on B_eps(x) >= tau (its own sound robust-selection rule: the selector looks at one
  point, so eps, not 2*eps). S(x') = 1 says nothing about F(x') versus F(x), so ``ok`` = F robust and accurate
  on B_eps(x) and ``const`` = F robust on B_eps(x).

Every "found on the ball" is an attack's upper bound on the true minimum, so ``sel`` and ``rsel`` are
optimistic in the same way as every empirical robustness number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from robcli.analysis.metrics import ModelView
from robcli.errors import UsageError
from robcli.utils.registry import Entry, Registry

SELECTORS: Registry[Callable] = Registry("selector", normalize=str.lower)
"""`compose --selector`: name -> the builder of its :class:`Member` (meta ``column``: the ``selector`` column
of compose tables, None where the member names its own, ri-empirical / ri-certified). Filled below."""


def list_selectors() -> list[str]:
    return SELECTORS.names()


def get_selector(name: str) -> Entry[Callable]:
    """The entry of a selector (aliases and any case accepted); UsageError naming the choices if unknown."""
    return SELECTORS.get(parse_selector(name))


def parse_selector(name: str) -> str:
    """The registered name a user's spelling of a selector stands for."""
    key = SELECTORS.resolve(str(name))
    if key is None:
        choices = [f"{e.name} ({e.description})" for e in SELECTORS.entries()]
        raise UsageError(f"unknown selector {name!r}; choose {', '.join(choices[:-1])} or {choices[-1]}")
    return key


@dataclass
class Member:
    """One robust model with its selector, as per-example boolean/int arrays aligned on sorted idx."""

    name: str
    selector: str  # ri-empirical | ri-certified | softmax-response | softmax-response-pointwise
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


def _check_tau(tau: float) -> float:
    if not 0.0 <= tau <= 1.0:
        raise UsageError(f"threshold {tau!r} is outside [0, 1]")
    return float(tau)


def sr_member(at_eps: ModelView, clean_conf, min_conf_eps, min_conf_check, tau: float,
              name: str | None = None) -> Member:
    """Softmax-response member, eq. 16 (the ball is part of the selector), at threshold ``tau``.

    Args:
        at_eps: the robust model's worst case over the attacks at eps.
        clean_conf: max softmax at x, per example.
        min_conf_eps: lowest max softmax found on B_eps(x) (decides ``sel``).
        min_conf_check: lowest max softmax found on the check ball, B_2eps(x) by default (decides ``rsel``).
    """
    tau = _check_tau(tau)
    cc = np.asarray(clean_conf, dtype=float)
    lo_eps = np.minimum(np.asarray(min_conf_eps, dtype=float), cc)
    # B_eps is inside B_2eps: the check ball's lowest confidence is never above the eps ball's
    lo_chk = np.minimum(np.asarray(min_conf_check, dtype=float), lo_eps)
    sel = lo_eps >= tau
    rsel = lo_chk >= tau
    df = at_eps.df
    pred = df["pred"].to_numpy("int64")
    correct = df["correct"].to_numpy(bool)
    robust = df["robust"].to_numpy(bool)
    if tau > 0.5:  # wherever S selects in the ball, F outputs F(x) (module docstring)
        ok, const = correct, np.ones_like(robust)
    else:
        ok, const = correct & robust, robust
    return Member(name or at_eps.model, "softmax-response", sel, rsel, ok, pred, const, tau, at_eps)


def sr_pointwise_member(at_eps: ModelView, clean_conf, min_conf_eps, tau: float, name: str | None = None) -> Member:
    """Pointwise softmax-response member (S(x) = 1{max_c f(x)_c >= tau}; not eq. 16) at threshold ``tau``.

    Args:
        at_eps: the robust model's worst case over the attacks at eps.
        clean_conf: max softmax at x (decides ``sel``).
        min_conf_eps: lowest max softmax found on B_eps(x) (decides ``rsel``: S(x') = 1 on all of B_eps(x)).
    """
    tau = _check_tau(tau)
    cc = np.asarray(clean_conf, dtype=float)
    lo_eps = np.minimum(np.asarray(min_conf_eps, dtype=float), cc)
    df = at_eps.df
    robust = df["robust"].to_numpy(bool)
    ok = df["correct"].to_numpy(bool) & robust
    return Member(name or at_eps.model, "softmax-response-pointwise", cc >= tau, lo_eps >= tau, ok,
                  df["pred"].to_numpy("int64"), robust, tau, at_eps)


SELECTORS.add("ri", ri_member, "robustness indicator", aliases=("robustness-indicator", "robust"), column=None)
SELECTORS.add("sr", sr_member, "softmax response, eq. 16", aliases=("softmax-response", "softmax"),
              column="softmax-response")
SELECTORS.add("sr-pointwise", sr_pointwise_member, "clean confidence only",
              aliases=("softmax-response-pointwise", "pointwise"), column="softmax-response-pointwise")
