"""Certified accuracy with a confidence statement: known numbers, exact worst-case coverage, a negative control
(Cohen et al.'s printed formula fails its rho when n * alpha is large), the statement on simulated CERTIFY runs,
and the recipes' certify summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from robcli.analysis.certified import certified_accuracy_lower, failure_allowance
from robcli.errors import UsageError


def _k_by_hand(n: int, alpha: float, rho: float) -> int:
    """Smallest k with P(Binomial(n, alpha) > k) <= rho, summed term by term (no scipy)."""
    tail = 1.0
    for k in range(n + 1):
        tail -= math.comb(n, k) * alpha ** k * (1 - alpha) ** (n - k)
        if tail <= rho:
            return k
    return n  # pragma: no cover


@pytest.mark.parametrize("n,alpha,rho", [(10, 0.001, 0.001), (500, 0.001, 0.001), (500, 0.01, 0.05), (2000, 0.001, 0.01)])
def test_binomial_allowance_known_numbers(n, alpha, rho):
    assert failure_allowance(n, alpha, rho) == _k_by_hand(n, alpha, rho) / n


def test_known_values_cohen_setting():
    # ImageNet in Cohen et al.: n = 500, alpha = rho = 0.001. P(Bin(500, 0.001) >= 5) = 1.7e-4 <= rho < P(>= 4)
    assert failure_allowance(500, 0.001, 0.001) == 4 / 500
    assert certified_accuracy_lower(0.5, 500, 0.001, 0.001) == pytest.approx(0.492)
    # their printed formula: 0.5 - 0.001 - sqrt(0.000999 * ln(1000) / 500) - ln(1000) / 1500
    assert certified_accuracy_lower(0.5, 500, 0.001, 0.001, method="cohen") == pytest.approx(0.4906797, abs=1e-7)
    # Bernstein solved exactly: ln(1000)/1500 + sqrt((ln(1000)/1500)^2 + 2 * 0.000999 * ln(1000) / 500)
    a = math.log(1000) / 1500
    assert failure_allowance(500, 0.001, 0.001, "bernstein") == pytest.approx(0.001 + a + math.sqrt(a * a + 2 * 0.000999 * math.log(1000) / 500))
    assert certified_accuracy_lower(0.003, 500, 0.001, 0.001) == 0.0  # clipped at 0


GRID = [(n, a, r) for n in (50, 500, 10_000, 100_000) for a in (0.001, 0.01, 0.1) for r in (0.001, 0.05)]


@pytest.mark.parametrize("method", ["binomial", "bernstein"])
def test_worst_case_coverage_is_at_least_one_minus_rho(method):
    """When every certificate is false with probability exactly alpha (the worst case), the number of false ones
    exceeds n * allowance with probability at most rho."""
    for n, a, rho in GRID:
        allow = failure_allowance(n, a, rho, method)
        k = math.floor(n * allow + 1e-9)
        assert binom.sf(k, n, a) <= rho, (method, n, a, rho)


def test_binomial_allowance_is_tight():
    # one example less allowance and the worst case exceeds rho: the bound is as high as it can be
    for n, a, rho in GRID:
        k = round(failure_allowance(n, a, rho) * n)
        assert k == 0 or binom.sf(k - 1, n, a) > rho


def test_negative_control_cohens_printed_formula_overstates_at_large_n_alpha():
    """Cohen et al.'s formula drops Bernstein's factor 2: with n = 10,000 (a full CIFAR-10 test set) and
    alpha = rho = 0.001 the worst-case probability that it overstates the certified accuracy is 1.6e-3 > rho."""
    n, a, rho = 10_000, 0.001, 0.001
    k = math.floor(n * failure_allowance(n, a, rho, "cohen") + 1e-9)
    assert binom.sf(k, n, a) == pytest.approx(1.58e-3, rel=0.02) and binom.sf(k, n, a) > rho
    # and where it does hold (n = 500), the exact bound is tighter than both Bernstein-style ones
    assert failure_allowance(500, a, rho) < failure_allowance(500, a, rho, "cohen") < failure_allowance(500, a, rho, "bernstein")


def test_statement_holds_on_simulated_certify_runs():
    """Simulate CERTIFY (Clopper-Pearson at alpha) on n examples whose true top-class probability is 0.6, so g is
    right with true radius sigma * Phi^-1(0.6). Just above that radius the true certified accuracy is 0, and the
    observed one counts only false certificates: the lower bound must stay at 0 in >= 1 - rho of the runs. A bound
    without the allowance (the plain fraction) claims more in most runs (negative control)."""
    from scipy.stats import beta, norm

    rng = np.random.default_rng(0)
    reps, n, N, p, alpha, rho, sigma = 4000, 200, 100, 0.6, 0.05, 0.05, 0.5
    n_a = rng.binomial(N, p, size=(reps, n))
    p_low = np.where(n_a > 0, beta.ppf(alpha, np.maximum(n_a, 1), N - n_a + 1), 0.0)
    radius = np.where(p_low >= 0.5, sigma * norm.ppf(np.clip(p_low, 0.5, 1 - 1e-12)), 0.0)
    r = sigma * norm.ppf(p) + 1e-9
    acc = (radius >= r).mean(axis=1)  # every counted example holds a false certificate
    assert acc.max() > 0  # false certificates do occur
    allow = failure_allowance(n, alpha, rho)
    lb = np.maximum(0.0, acc - allow)
    fail = float((lb > 0).mean())
    assert fail <= rho + 3 * math.sqrt(rho * (1 - rho) / reps), fail
    assert (acc > 0).mean() > 0.9  # the plain fraction overstates in nearly every run


def test_bad_arguments():
    for kw, needle in (({"rho": 0}, "--rho"), ({"rho": 1.5}, "--rho"), ({"alpha": 0}, "alpha"),
                       ({"method": "hoeffding"}, "unknown confidence bound")):
        args = {"n": 10, "alpha": 0.01, "rho": 0.01, **kw}
        with pytest.raises(UsageError, match=needle):
            failure_allowance(**args)
    with pytest.raises(UsageError, match="at least one example"):
        failure_allowance(0, 0.01)
    with pytest.raises(UsageError, match="fraction"):
        certified_accuracy_lower(1.2, 10, 0.01)


def test_recipe_certify_summary_carries_the_lower_bound(tmp_path):
    import pandas as pd

    from robcli.recipes import summarize_certify_tables
    from robcli.tables import write_table

    n = 40
    pred = np.r_[np.arange(30), -np.ones(10, int)]  # 30 right (idx == label), 10 abstain
    df = pd.DataFrame({"idx": range(n), "label": range(n), "predict": pred, "radius": np.r_[np.full(30, 0.3), np.zeros(10)],
                       "correct": pred == np.arange(n), "time": 0.0, "sigma": 0.25, "N0": 10, "N": 1000,
                       "alpha": 0.01, "nA": 900, "pA_lower": 0.9, "mode": "certify"})
    write_table(df, tmp_path / "c.parquet", "certify")
    s = summarize_certify_tables([{"label": "m", "tables": str(tmp_path / "c.parquet")}], [0, 0.25], rho=0.05)
    k = _k_by_hand(n, 0.01, 0.05)  # P(Bin(40, 0.01) > 1) = 0.061 > 0.05 >= P(> 2): k = 2
    assert k == 2
    assert list(s["certified_acc"]) == [0.75, 0.75]
    assert list(s["certified_acc_lower"]) == pytest.approx([0.75 - k / n] * 2)
    with pytest.raises(UsageError, match="--rho"):
        summarize_certify_tables([{"label": "m", "tables": str(tmp_path / "c.parquet")}], rho=2)
