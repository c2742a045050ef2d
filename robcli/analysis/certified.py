"""Certified accuracy of a whole test set with a confidence statement (Cohen et al. 2019, App. "high probability").

Each certificate in a certify table can be wrong with probability at most ``alpha`` (CERTIFY's guarantee, over
its Monte-Carlo noise). The plain certified accuracy at radius r, ``acc(r)`` = fraction of the n examples with
``predict == label`` and ``radius >= r``, therefore counts some examples on which the smoothed classifier g is not
in fact right and robust at r. The statement made here: with probability at least ``1 - rho`` (over the noise of
all n certifications), the fraction of the n test examples on which g is truly right and constant on the L2 ball
of radius r is at least ``acc(r) - k / n`` - for every r at once.

The argument. Let ``F_i`` = 1{the certificate of example i is false}. ``P(F_i = 1) <= alpha`` and the F_i are
independent (each example draws its own noise). An example counted at r but not truly right and robust at r has a
false certificate, whatever r, so ``true acc(r) >= acc(r) - (1/n) sum F_i`` simultaneously for all r. Bound
``S = sum F_i``:

* ``binomial`` (the default, exact): ``S`` is stochastically dominated by Binomial(n, alpha) (couple each F_i
  with a Bernoulli(alpha) variable above it), so ``P(S > k) <= rho`` for ``k = binom.ppf(1 - rho, n, alpha)``.
* ``bernstein``: Bernstein's inequality for the centred F_i (|F_i - p_i| <= 1, variance <= alpha (1 - alpha) for
  alpha <= 1/2): ``P(S/n - alpha >= t) <= exp(-n t^2 / (2 v + 2 t / 3))`` with ``v = alpha (1 - alpha)``; solved
  for ``rho``: ``t = L/(3n) + sqrt((L/(3n))^2 + 2 v L / n)``, ``L = log(1/rho)``. Looser than ``binomial``.
* ``cohen``: the formula as printed by Cohen et al. (and their ``analyze.py``):
  ``acc - alpha - sqrt(alpha (1 - alpha) L / n) - L / (3 n)``. It is Bernstein's bound with the factor 2 on
  the variance term and the linear term dropped: when ``n * alpha`` is large (n = 10,000, alpha = 0.001 already)
  the worst-case probability that it overstates the certified accuracy exceeds ``rho`` (1.6e-3 at rho = 1e-3).
  Kept to reproduce published figures, never used by default.

All three are clipped at 0. The statement is about the n test examples; it does not bound the error of the
test set as a sample of the data distribution. It holds per table and sigma (one smoothed classifier); several
sigmas or tables at once need a union bound (rho / their number).
"""

from __future__ import annotations

import math

from robcli.errors import UsageError

METHODS = ("binomial", "bernstein", "cohen")
DEFAULT_RHO = 0.001


def check_rho(rho: float) -> float:
    """Validate ``rho`` (the probability that the statement fails)."""
    rho = float(rho)
    if not (0.0 < rho < 1.0):
        raise UsageError(f"--rho {rho:g} must lie in (0, 1) (the probability that the confidence statement fails)")
    return rho


def failure_allowance(n: int, alpha: float, rho: float = DEFAULT_RHO, method: str = "binomial") -> float:
    """How much to subtract from a certified accuracy over ``n`` examples certified at ``alpha``.

    Returns ``k / n`` (binomial), ``alpha + t`` (bernstein) or Cohen et al.'s ``alpha + sqrt(...) + L/(3n)``.

    Raises:
        UsageError: ``n < 1``, ``alpha`` or ``rho`` outside (0, 1), or an unknown method.
    """
    if method not in METHODS:
        raise UsageError(f"unknown confidence bound {method!r}; choose one of {', '.join(METHODS)}")
    check_rho(rho)
    if not (0.0 < float(alpha) < 1.0):
        raise UsageError(f"alpha {alpha:g} must lie in (0, 1)")
    n = int(n)
    if n < 1:
        raise UsageError("a confidence statement needs at least one example")
    L = math.log(1.0 / rho)
    if method == "binomial":
        from scipy.stats import binom

        return float(binom.ppf(1.0 - rho, n, alpha)) / n
    v = alpha * (1.0 - alpha)
    if method == "bernstein":
        if alpha > 0.5:
            return 1.0  # the variance bound alpha (1 - alpha) needs alpha <= 1/2; nothing can be claimed then
        a = L / (3.0 * n)
        return alpha + a + math.sqrt(a * a + 2.0 * v * L / n)
    return alpha + math.sqrt(v * L / n) + L / (3.0 * n)


def certified_accuracy_lower(acc: float, n: int, alpha: float, rho: float = DEFAULT_RHO,
                             method: str = "binomial") -> float:
    """A ``1 - rho`` lower confidence bound on the true certified accuracy behind the observed fraction ``acc``.

    See the module docstring for the argument; the result is clipped at 0.
    """
    if not (0.0 <= float(acc) <= 1.0):
        raise UsageError(f"certified accuracy {acc:g} is not a fraction in [0, 1]")
    return max(0.0, float(acc) - failure_allowance(n, alpha, rho, method))
