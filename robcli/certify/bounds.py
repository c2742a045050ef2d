"""The statistics of Cohen et al.'s CERTIFY and PREDICT, from scipy (no hand-rolled numerics).

* One-sided Clopper-Pearson lower confidence bound on p_A at level ``alpha``:
  ``beta.ppf(alpha, nA, N - nA + 1)`` (``0`` when ``nA == 0``, where the Beta is degenerate).
* Certified L2 radius of the smoothed classifier: ``sigma * Phi^-1(pA_lower)`` when ``pA_lower >= 1/2``,
  otherwise abstain (Cohen et al. 2019, Thm. 1 and Alg. CERTIFY).
* PREDICT: two-sided binomial test of the top count against the runner-up count at ``p = 1/2``
  (``scipy.stats.binomtest``; the reference code's ``binom_test`` is gone from SciPy 1.12); abstain when
  the p-value exceeds ``alpha``.
"""

from __future__ import annotations

import math

import numpy as np

from robcli.errors import UsageError

ABSTAIN = -1


def min_samples(alpha: float, mode: str = "certify") -> int:
    """Smallest N for which CERTIFY (or PREDICT) can ever return anything but abstain at level ``alpha``.

    CERTIFY: with all N samples on class A the bound is ``alpha ** (1 / N)``, which reaches 1/2 only when
    ``N >= log2(1 / alpha)``; below ``ceil(log2(1/alpha))`` every input abstains.
    PREDICT: the smallest two-sided binomial p-value of ``n_top`` vs the runner-up among ``n <= N`` votes
    at p = 1/2 is ``2 * 2**-N`` (all N votes on one class); it is <= alpha only when
    ``N >= log2(2 / alpha)``; below ``ceil(log2(2/alpha))`` every input abstains.
    """
    if mode == "predict":
        return int(math.ceil(math.log2(2.0 / alpha)))
    return int(math.ceil(math.log2(1.0 / alpha)))


def check_sigmas(sigmas) -> None:
    """At least one noise level, none repeated, each valid (:func:`check_params`)."""
    if not sigmas:
        raise UsageError("give at least one --sigma")
    if len(set(sigmas)) != len(sigmas):
        raise UsageError("--sigma values repeat")
    for s in sigmas:
        check_params(sigma=s)


def check_params(*, sigma: float | None = None, alpha: float | None = None, n0: int | None = None,
                 n: int | None = None, mode: str = "certify") -> None:
    """Validate CERTIFY/PREDICT hyperparameters.

    Raises:
        UsageError: sigma <= 0, alpha outside (0, 1), N0 < 1 (certify mode), N too small for alpha
            (``ceil(log2(1/alpha))`` for CERTIFY, ``ceil(log2(2/alpha))`` for PREDICT).

    N0 > N is allowed: the selection sample only picks the class whose probability the N fresh estimation
    samples then bound; the bound's level holds whatever that choice was, so nothing ties N0 to N (a large N0
    with a small N is a sensible way to pick the class reliably when estimation samples are costly).
    """
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"--sigma {sigma:g} must be > 0 (the std of the Gaussian noise)")
    if alpha is not None and not (0.0 < alpha < 1.0):
        raise UsageError(f"--alpha {alpha:g} must lie in (0, 1) (the failure probability)")
    if n is not None and n < 1:
        raise UsageError(f"--N {n} must be >= 1")
    if mode == "certify":
        if n0 is not None and n0 < 1:
            raise UsageError(f"--N0 {n0} must be >= 1 (selection samples)")
        if alpha is not None and n is not None and n < min_samples(alpha):
            raise UsageError(
                f"--N {n} is too small for --alpha {alpha:g}: with N < ceil(log2(1/alpha)) = {min_samples(alpha)} "
                "even N out of N votes give a lower bound below 1/2, so every input would abstain"
            )
    elif alpha is not None and n is not None and n < min_samples(alpha, "predict"):
        m = min_samples(alpha, "predict")
        raise UsageError(
            f"--N {n} is too small for --alpha {alpha:g} in predict mode: with N < ceil(log2(2/alpha)) = {m} "
            "even N out of N votes give a binomial-test p-value above alpha, so every input would abstain"
        )


def cp_lower(n_a, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion, vectorized.

    Args:
        n_a: successes, int array-like (any shape).
        n: trials, int or array broadcastable to ``n_a``.
        alpha: failure probability in (0, 1).

    Returns:
        float64 array: ``beta.ppf(alpha, nA, N - nA + 1)``, and exactly 0 where ``nA == 0``.
        At ``nA == N`` this equals ``alpha ** (1/N)``.
    """
    from scipy.stats import beta

    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), n_a.shape)
    if np.any(n_a < 0) or np.any(n_a > n):
        raise ValueError("need 0 <= nA <= N")
    safe_a = np.where(n_a > 0, n_a, 1.0)  # beta.ppf is undefined for a = 0: the bound is 0 there
    out = beta.ppf(alpha, safe_a, n - n_a + 1.0)
    return np.where(n_a > 0, out, 0.0)


def certified_radius(p_lower, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Cohen et al.'s radius ``sigma * Phi^-1(pA_lower)`` and the abstain mask ``pA_lower < 1/2``.

    Returns:
        (radius, abstain): radius is 0 where abstaining (never negative).
    """
    from scipy.stats import norm

    p = np.asarray(p_lower, dtype=np.float64)
    abstain = p < 0.5
    r = sigma * norm.ppf(np.where(abstain, 0.5, p))
    return np.where(abstain, 0.0, r), abstain


def predict_from_counts(counts: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cohen et al.'s PREDICT decision from per-class counts.

    Args:
        counts: int array (B, K) of noisy votes per class.
        alpha: test level.

    Returns:
        (prediction, top, n_top, pvalue): prediction is ``top`` or ABSTAIN (-1) when the two-sided
        binomial test of ``n_top`` vs the runner-up count at p = 1/2 has p-value > alpha. Ties for the top
        class go to the lower class index.
    """
    from scipy.stats import binomtest

    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, axis=1, kind="stable")
    top = order[:, 0]
    n1 = np.take_along_axis(counts, order[:, :1], 1)[:, 0]
    n2 = np.take_along_axis(counts, order[:, 1:2], 1)[:, 0] if counts.shape[1] > 1 else np.zeros_like(n1)
    pval = np.array([binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(n1, n2)])
    pred = np.where(pval > alpha, ABSTAIN, top)
    return pred.astype(np.int64), top.astype(np.int64), n1.astype(np.int64), pval
