"""The statistics of sequential certification (robcli.certify.anytime), checked against exact answers.

* the mixture's closed form against direct quadrature and high-precision mpmath; its (super)martingale
  property exactly, step by step;
* the dynamic program (exact boundary-crossing probability) against brute-force enumeration of every path,
  and against simulation;
* the exact crossing probability <= alpha at p = p0 (the worst case of H0) for several p0, caps and look
  schedules, including a look after every single sample (Ville's inequality itself);
* a Bernoulli oracle with exact p driving the same decision code as the engine: the false-certification
  rate over >= 10,000 trials at an inflated alpha fails the test only when its binomial lower confidence
  bound exceeds alpha; a NEGATIVE CONTROL (a fixed-N Clopper-Pearson bound re-checked at every look) in the
  same harness, which must be caught;
* nested radii, futility, power, and numerics up to a cap of 10^7.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.stats import binom, norm

from robcli.certify import anytime as at
from robcli.certify.bounds import cp_lower

SIGMA = 0.25

# ------------------------------------------------------------------------------------------ the oracle harness


def simulate(plan: at.Plan, p: float, trials: int, seed: int = 0):
    """A Bernoulli(p) oracle (exact p) run through ``plan.decide``, the decision code the engine uses.

    Counts between looks are drawn as Binomial(n_k - n_{k-1}, p): exactly the law of the counts of i.i.d.
    Bernoulli(p) samples at the looks, which is all the decisions see.

    Returns:
        (status (trials, R), estimation samples drawn per trial).
    """
    rng = np.random.default_rng(seed)
    status = plan.initial(trials)
    S = np.zeros(trials, dtype=np.int64)
    n_used = np.zeros(trials, dtype=np.int64)
    active = (status == at.UNDECIDED).any(1)
    prev = 0
    for k, n in enumerate(plan.looks.tolist()):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        S[idx] += rng.binomial(n - prev, p, size=idx.size)
        prev = n
        status[idx] = plan.decide(k, S[idx], status[idx])
        n_used[idx] = n
        active[idx] = (status[idx] == at.UNDECIDED).any(1)
    return status, n_used


def rate_exceeds(k: int, n: int, alpha: float, conf: float = 1e-6) -> bool:
    """Whether k false certificates in n trials prove a rate above alpha: the one-sided Clopper-Pearson lower
    bound at level ``conf`` exceeds alpha. A procedure with rate <= alpha trips this with probability <= conf."""
    return bool(cp_lower(k, n, conf) > alpha)


def naive_cp_plan(p0: float, alpha: float, looks) -> at.Plan:
    """The NEGATIVE CONTROL: certify as soon as the fixed-N Clopper-Pearson bound at level alpha, recomputed
    on all samples so far, reaches p0 (peeking)."""
    looks = np.asarray(looks, dtype=np.int64)
    # cp_lower is increasing in s: the first s whose bound reaches p0 (n + 1: none)
    upper = np.array([np.searchsorted(cp_lower(np.arange(n + 1), n, alpha) >= p0, True) for n in looks.tolist()])
    return at.plan_from_boundaries(looks, [p0], upper[:, None], alpha=alpha)


def plan_for(r, cap, alpha=0.05, futility=0.05, looks=None):
    return at.radii_plan(np.atleast_1d(r), SIGMA, alpha, cap, futility, looks=looks)


# ------------------------------------------------------------------------------------------ the mixture


def test_log_mixture_matches_direct_quadrature():
    from scipy.integrate import quad

    for n, s, p0 in [(10, 9, 0.6), (50, 47, 0.8413), (200, 190, 0.9), (30, 12, 0.55), (5, 5, 0.97725)]:
        # q = 1 - u^2 removes the prior's (1 - q)^(-1/2) singularity: dq q^-1/2 (1-q)^-1/2 = 2 q^-1/2 du
        def integrand(u, s=s, n=n, p0=p0):
            q = 1 - u * u
            return 2 * q ** -0.5 * (q / p0) ** s * (u * u / (1 - p0)) ** (n - s)

        top = math.sqrt(1 - p0)
        z = quad(lambda u: 2 * (1 - u * u) ** -0.5, 0, top)[0]
        num = quad(integrand, 0, top, limit=200, epsabs=0, epsrel=1e-12)[0]
        assert at.log_mixture(n, s, p0) == pytest.approx(math.log(num / z), abs=1e-7)


def test_log_mixture_matches_mpmath_to_far_below_the_threshold_slack():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40

    def exact(n, s, p0):
        a, p0, f = mpmath.mpf(1) / 2, mpmath.mpf(p0), n - s
        num = mpmath.beta(s + a, f + a) * mpmath.betainc(s + a, f + a, p0, 1, regularized=True)
        den = mpmath.beta(a, a) * mpmath.betainc(a, a, p0, 1, regularized=True) * p0 ** s * (1 - p0) ** f
        return float(mpmath.log(num / den))

    for n, p0 in [(100, norm.cdf(1.0)), (2000, 0.51), (5000, 0.55), (20_000, norm.cdf(2.0)), (50_000, norm.cdf(3.0)),
                  (100_000, norm.cdf(1.0))]:
        b = int(at.mixture_boundary(n, p0, 0.001))
        for s in (b - 1, b, min(n, b + 7)):
            assert abs(exact(n, s, p0) - float(at.log_mixture(n, s, p0))) < 1e-8, (n, s, p0)


def test_mixture_is_a_martingale_at_p0_and_a_supermartingale_below():
    # E_p[M_{n+1} | S_n = s] = p M_{n+1}(s + 1) + (1 - p) M_{n+1}(s): = M_n(s) at p = p0 (exactly: the
    # mixture of likelihood ratios), < M_n(s) for p < p0 (so Ville's inequality applies to all of H0).
    # Checked for s >= n p0 - 4 sqrt(n), where the boundary search evaluates the mixture (far below, the
    # Beta tail underflows float64 and M_n, far below 1 there, is only computed roughly)
    for p0 in (0.6, norm.cdf(1.0), norm.cdf(2.0)):
        for n in (1, 5, 40, 300, 3000):
            s = np.arange(max(0, math.floor(n * p0 - 4 * math.sqrt(n))), n + 1)
            now = at.log_mixture(n, s, p0)
            up, down = at.log_mixture(n + 1, s + 1, p0), at.log_mixture(n + 1, s, p0)
            np.testing.assert_allclose(np.logaddexp(math.log(p0) + up, math.log1p(-p0) + down), now,
                                       rtol=0, atol=1e-9)
            for p in (p0 - 0.05, p0 / 2):
                assert np.all(np.logaddexp(math.log(p) + up, math.log1p(-p) + down) <= now + 1e-12)


def test_boundary_is_the_first_count_whose_mixture_reaches_one_over_alpha():
    thr = -math.log(0.01)
    for n in (1, 7, 50, 999, 10_000):
        for p0 in (0.51, norm.cdf(1.0), norm.cdf(2.0), 0.999):
            b = int(at.mixture_boundary(n, p0, 0.01))
            assert n * p0 < b <= n + 1
            if b <= n:
                assert at.log_mixture(n, b, p0) >= thr
            if b - 1 >= 0:
                assert at.log_mixture(n, b - 1, p0) < thr + 1e-6
            # monotone in s: no count above b fails
            s = np.arange(b, n + 1)
            assert np.all(at.log_mixture(n, s, p0) >= thr)


def test_min_cap_is_exactly_where_a_radius_becomes_certifiable():
    for p0 in (0.55, norm.cdf(1.0), norm.cdf(2.0)):
        m = at.min_cap(p0, 0.001)
        assert at.mixture_boundary(m, p0, 0.001) <= m
        assert at.mixture_boundary(m - 1, p0, 0.001) == m  # m - 1 votes out of m - 1 do not suffice


# ------------------------------------------------------------------------------------------ the exact DP


def test_dp_equals_brute_force_enumeration_of_every_path():
    # 2^12 paths, a look after every sample, with certification, hopeless and unreachable absorption
    cap = 12
    plan = at.radii_plan([0.1], 0.5, 0.2, cap, 0.3, looks=np.arange(1, cap + 1))
    paths = np.array(list(itertools.product((0, 1), repeat=cap)), dtype=np.int64)  # every path, at once
    S = np.cumsum(paths, axis=1)
    status = plan.initial(len(paths))
    when = np.zeros(len(paths), dtype=np.int64)
    for k in range(cap):
        und = status[:, 0] == at.UNDECIDED
        status[und] = plan.decide(k, S[und, k], status[und])
        when[und & (status[:, 0] != at.UNDECIDED)] = k + 1
    ones = paths.sum(1)
    for p in (0.3, 0.6, 0.9):
        prob = p ** ones * (1 - p) ** (cap - ones)
        want = {name: float(prob[status[:, 0] == code].sum())
                for code, name in enumerate(at.DECISIONS) if code != at.UNDECIDED}
        want["mean_n"] = float((prob * when).sum())
        got = at.plan_outcome(plan, p, 0)
        for key, v in want.items():
            assert got[key] == pytest.approx(v, abs=1e-12), (p, key)


def test_dp_agrees_with_simulation():
    # where the certification probability is neither 0 nor 1, so the comparison has teeth
    plan = plan_for(0.25, 3000)
    trials = 20_000
    for p in (norm.cdf(1.0) + 0.02, norm.cdf(1.0) + 0.025):
        exact = at.plan_outcome(plan, p, 0)
        status, n_used = simulate(plan, p, trials, seed=1)
        for key, code in (("certified", at.CERTIFIED), ("hopeless", at.HOPELESS)):
            k = int((status[:, 0] == code).sum())
            lo, hi = binom.ppf(1e-6, trials, exact[key]), binom.isf(1e-6, trials, exact[key])
            assert lo <= k <= hi, (p, key, k / trials, exact[key])
        assert 0.2 < exact["certified"] < 0.95
        sd = n_used.std() / math.sqrt(trials)
        assert abs(n_used.mean() - exact["mean_n"]) < 6 * sd


@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_exact_crossing_probability_at_p0_is_below_alpha(alpha):
    # the boundary alone (no futility: that only removes paths), default looks and several caps and p0
    for cap in (100, 1000, 5000):
        for r in (0.05, 0.25, 0.5):
            p0 = norm.cdf(r / SIGMA)
            looks = at.look_points(cap)
            upper = at.mixture_boundary(looks, p0, alpha, norm.sf(r / SIGMA))
            res = at.crossing_probability(p0, looks, upper)
            assert res["certified"] + res["dropped"] <= alpha, (cap, r, res)
            # ...and the full plan (futility included) only certifies less
            full = at.plan_outcome(plan_for(r, cap, alpha), p0, 0)
            assert full["certified"] <= res["certified"] + 1e-15


def test_exact_crossing_probability_with_a_look_after_every_sample():
    # Ville's inequality itself: continuous monitoring up to the cap, at p = p0 and just below
    alpha = 0.05
    for cap in (200, 2000):
        looks = np.arange(1, cap + 1)
        for p0 in (0.55, norm.cdf(1.0), norm.cdf(2.0)):
            upper = at.mixture_boundary(looks, p0, alpha)
            for p in (p0, p0 - 0.01):
                res = at.crossing_probability(p, looks, upper)
                assert res["certified"] + res["dropped"] <= alpha, (cap, p0, p, res)


def test_negative_control_is_caught_by_the_exact_check():
    # the same DP finds the peeking procedure far above alpha: the exact check can fail
    alpha = 0.05
    for looks in (at.look_points(2000), np.arange(10, 1001, 10)):
        p0 = norm.cdf(1.0)
        naive = naive_cp_plan(p0, alpha, looks)
        assert at.plan_outcome(naive, p0, 0)["certified"] > 1.5 * alpha


@pytest.mark.slow
def test_exact_crossing_probability_at_p0_large_caps():
    for alpha in (0.05, 0.001):
        for cap in (20_000, 100_000):
            for r in (0.05, 0.25, 0.5, 0.75):
                plan = plan_for(r, cap, alpha, alpha)
                looks = plan.looks
                res = at.crossing_probability(plan.p0[0], looks, plan.upper[:, 0])
                assert res["certified"] + res["dropped"] <= alpha, (alpha, cap, r, res)


# ------------------------------------------------------------------------------------------ the oracle harness


@pytest.mark.parametrize("offset", [0.0, -0.005])
def test_false_certification_rate_bernoulli_oracle(offset):
    # p exactly p0 (the worst case) and just below; alpha inflated to 0.05 so that 20,000 trials can see it
    alpha, trials = 0.05, 20_000
    for r, cap, looks in ((0.25, 2000, None), (0.5, 3000, None), (0.25, 1000, np.arange(10, 1001, 10))):
        plan = plan_for(r, cap, alpha, looks=looks)
        p = float(plan.p0[0]) + offset
        status, _ = simulate(plan, p, trials, seed=int(1000 * r) + cap)
        k = int((status[:, 0] == at.CERTIFIED).sum())
        assert not rate_exceeds(k, trials, alpha), f"r={r} cap={cap}: {k}/{trials} false certificates"
        exact = at.plan_outcome(plan, p, 0)["certified"]
        assert binom.ppf(1e-6, trials, exact) <= k <= binom.isf(1e-6, trials, exact)


def test_negative_control_is_caught_by_the_oracle_harness():
    # the same harness, the same trials: the peeking procedure's rate is shown above alpha
    alpha, trials = 0.05, 20_000
    p0 = norm.cdf(1.0)
    for looks in (at.look_points(2000), np.arange(10, 1001, 10)):
        status, _ = simulate(naive_cp_plan(p0, alpha, looks), p0, trials, seed=3)
        k = int((status[:, 0] == at.CERTIFIED).sum())
        assert rate_exceeds(k, trials, alpha), f"{k}/{trials}: the harness missed the peeking procedure"


@pytest.mark.slow
def test_false_certification_rate_bernoulli_oracle_large():
    alpha, trials = 0.05, 100_000
    for r in (0.1, 0.25, 0.5):
        plan = plan_for(r, 100_000, alpha)
        for offset in (0.0, -0.002):
            status, _ = simulate(plan, float(plan.p0[0]) + offset, trials, seed=7)
            k = int((status[:, 0] == at.CERTIFIED).sum())
            assert not rate_exceeds(k, trials, alpha), (r, offset, k)


# ------------------------------------------------------------------------------------------ several radii


def test_nested_boundaries_make_certified_a_prefix_and_given_up_a_suffix():
    plan = plan_for([0.1, 0.2, 0.25, 0.3, 0.5], 3000)
    assert np.all(np.diff(plan.upper, axis=1) >= 0) and np.all(np.diff(plan.lower, axis=1) >= 0)
    for p in (0.6, norm.cdf(1.0), 0.9, 0.99):
        status, _ = simulate(plan, p, 4000, seed=5)
        cert = status == at.CERTIFIED
        out = (status == at.HOPELESS) | (status == at.UNREACHABLE) | (status == at.CAPPED)
        assert np.all(np.diff(cert.astype(int), axis=1) <= 0)  # prefix
        assert np.all(np.diff(out.astype(int), axis=1) >= 0)  # suffix
        assert not (status == at.UNDECIDED).any()


def test_running_max_nests_boundaries_that_are_not_nested():
    # raw boundaries where the larger radius is easier at look 1: the plan must not certify it alone
    looks = np.array([10, 20])
    raw = np.array([[9, 8], [15, 17]])
    plan = at.plan_from_boundaries(looks, [0.6, 0.7], raw, alpha=0.05)
    assert plan.upper.tolist() == [[9, 9], [15, 17]]
    st = plan.decide(0, np.array([8]), plan.initial(1))
    assert st.tolist() == [[at.UNDECIDED, at.UNDECIDED]]


def test_any_false_claim_among_radii_is_at_most_alpha_with_no_split():
    # true p between the radii's p0: any false claim implies the claim at the smallest radius above p,
    # whose exact probability is <= alpha; the simulated any-false rate equals that claim's rate trial by trial
    alpha, trials = 0.05, 20_000
    radii = [0.1, 0.2, 0.3, 0.4, 0.5]
    plan = plan_for(radii, 2000, alpha)
    for p in (norm.cdf(0.15 / SIGMA), float(plan.p0[2])):
        kstar = int(np.searchsorted(plan.p0, p, side="right"))  # smallest index with p0 > p
        status, _ = simulate(plan, p, trials, seed=11)
        false_any = (status[:, kstar:] == at.CERTIFIED).any(1)
        np.testing.assert_array_equal(false_any, status[:, kstar] == at.CERTIFIED)
        exact = at.plan_outcome(plan, p, kstar)["certified"]
        assert exact <= alpha
        assert not rate_exceeds(int(false_any.sum()), trials, alpha)


# ------------------------------------------------------------------------------------------ futility and power


def test_hopeless_rule_gives_up_on_a_certifiable_example_at_most_futility():
    # at p = p0 (the hardest case for the futility test), exactly
    for fut in (0.05, 0.001):
        for r in (0.1, 0.25, 0.5):
            plan = plan_for(r, 20_000, 0.001, fut)
            assert at.plan_outcome(plan, float(plan.p0[0]), 0)["hopeless"] <= fut


def test_power_early_stop_far_above_and_far_below_p0():
    # alpha 0.001 and the default cap, exactly (DP): the obvious examples need a few hundred samples
    cap = 100_000
    plan = plan_for([0.25], cap, 0.001, 0.001)
    p0 = float(plan.p0[0])
    up = at.plan_outcome(plan, 0.97, 0)
    assert up["certified"] > 0.999 and up["mean_n"] < cap / 200, up
    down = at.plan_outcome(plan, 0.70, 0)
    assert down["hopeless"] + down["unreachable"] > 0.999 and down["mean_n"] < cap / 200, down
    # all votes on one class: certified at the first look that the boundary allows
    assert plan.upper[:, 0].tolist()[0] <= plan.looks[0]
    # near p0 every sound test is weak: most of the cap is used
    assert at.plan_outcome(plan, p0, 0)["mean_n"] > cap / 2


def test_unreachable_radius_is_decided_before_any_sample():
    plan = plan_for([0.25, 3.0], 1000, 0.001)
    st = plan.initial(1)
    assert st.tolist() == [[at.UNDECIDED, at.UNREACHABLE]]
    # and once S falls too far behind, the smaller one too
    st = plan.decide(len(plan.looks) - 2, np.array([0]), st)
    assert st[0, 0] in (at.HOPELESS, at.UNREACHABLE)


# ------------------------------------------------------------------------------------------ adaptive grid


def test_grid_lower_bound_is_a_confidence_sequence():
    # P(the certified grid radius exceeds the true radius at any look) = P(the first grid p0 above p ever
    # crosses) <= alpha, exactly, for true p anywhere (between grid points, on one)
    alpha = 0.05
    plan = at.grid_plan(SIGMA, alpha, 3000, alpha, 0.02 * SIGMA / 4)
    assert np.all(np.diff(plan.radii) > 0) and plan.upper[-1, -1] <= plan.cap
    for r_true in (0.0, 0.1, 0.2013, float(plan.radii[40])):
        p = norm.cdf(r_true / SIGMA)
        k = int(np.searchsorted(plan.p0, p, side="right"))
        res = at.crossing_probability(p, plan.looks, plan.upper[:, k])
        assert res["certified"] + res["dropped"] <= alpha


def test_grid_plan_reaches_about_the_largest_certifiable_radius():
    plan = at.grid_plan(SIGMA, 0.001, 20_000, 0.001, 0.005 * SIGMA)
    # all votes at the cap certify the top grid radius, one grid step more is out of reach
    assert plan.upper[-1, -1] <= plan.cap
    top = float(plan.radii[-1])
    nxt = at.mixture_boundary(plan.cap, norm.cdf((top + 0.005 * SIGMA) / SIGMA), 0.001,
                              norm.sf((top + 0.005 * SIGMA) / SIGMA))
    assert nxt > plan.cap
    assert top < at.max_radius(SIGMA, 0.001, 20_000)


# ------------------------------------------------------------------------------------------ numerics


def test_numerics_up_to_a_cap_of_ten_million():
    cap = 10**7
    looks = at.look_points(cap)
    assert looks[-1] == cap and len(looks) < 700 and looks.dtype == np.int64
    assert np.all(np.diff(looks) > 0) and np.all(np.diff(looks) <= cap // 100 + at.LATE_BLOCK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings anywhere
        plan = plan_for([0.01, 0.25, 0.5, 1.0], cap, 0.001, 0.001)
    for arr in (plan.upper, plan.lower, plan.reach):
        assert arr.dtype == np.int64
    assert np.all(plan.upper <= plan.looks[:, None] + 1) and np.all(plan.lower >= -1)
    assert np.all(np.diff(plan.upper, axis=0) >= 0)  # nondecreasing in n
    # far out, the boundary is p0 n + O(sqrt(n log n)): the excess shrinks relative to n
    excess = plan.upper[-1] / cap - plan.p0
    assert np.all(excess > 0) and np.all(excess < 0.01)
    # the log-mixture at n = 10^7 agrees with an independent log-space quadrature (no betainc)
    from scipy.special import logsumexp

    for j in range(3):
        n, s, p0 = cap, int(plan.upper[-1, j]), float(plan.p0[j])
        q = np.linspace(p0, 1.0, 4_000_001)[1:-1]
        logf = (s * np.log(q / p0) + (n - s) * np.log((1 - q) / (1 - p0))
                - 0.5 * np.log(q) - 0.5 * np.log(1 - q))
        logz = math.log(2 * math.asin(math.sqrt(1 - p0)))  # int_{p0}^1 q^-1/2 (1-q)^-1/2 dq
        direct = logsumexp(logf) + math.log(q[1] - q[0]) - logz
        assert at.log_mixture(n, s, p0) == pytest.approx(direct, abs=1e-3)


def test_decisions_at_a_cap_of_ten_million_are_exact_integer_comparisons():
    plan = plan_for([0.25], 10**7, 0.001, 0.001)
    b = int(plan.upper[-1, 0])
    k = len(plan.looks) - 1
    assert plan.decide(k, np.array([b]), plan.initial(1))[0, 0] == at.CERTIFIED
    assert plan.decide(k, np.array([b - 1]), plan.initial(1))[0, 0] != at.CERTIFIED
    # the boundary is exactly the first count whose mixture reaches 1/alpha, at n = 10^7 too
    n = int(plan.looks[-1])
    assert at.log_mixture(n, b, plan.p0[0]) >= -math.log(0.001)
    assert at.log_mixture(n, b - 1, plan.p0[0]) < -math.log(0.001) + 1e-6


def test_schedule_blocks_and_looks():
    for cap in (1, 49, 50, 51, 1000, 1234, 100_000, 250_500):
        blocks = at.estimation_blocks(cap)
        looks = at.look_points(cap)
        assert blocks.sum() == cap and np.all(blocks >= 1) and np.all(blocks <= at.LATE_BLOCK)
        assert set(looks.tolist()) <= set(np.cumsum(blocks).tolist()) and looks[-1] == cap
    # a smaller cap's stream is a prefix of a larger one's, block for block
    assert at.estimation_blocks(100_000)[:50].tolist() == at.estimation_blocks(200_000)[:50].tolist()
    assert at.look_points(100_000)[:6].tolist() == [50, 100, 200, 300, 500, 1000]
