"""Anytime-valid sequential tests for randomized smoothing: "is the certified radius >= r?" decided as soon
as the noise samples allow, with the same guarantee as a fixed-N Clopper-Pearson bound for ANY stopping.

The question (Cohen et al. 2019, Thm. 1): with X_i = 1{f(x + eta_i) = c} i.i.d. Bernoulli(p), the smoothed
classifier is certified at radius r around x iff p >= p0 = Phi(r / sigma). A certificate at r rejects
H0: p < p0.

The test: a mixture likelihood ratio. For q > p0, L_n(q) = (q/p0)^S (q'/p0')^(n-S) (primes: 1 - .) has
E_p[L_1(q)] = p q/p0 + (1-p)(1-q)/(1-p0) <= 1 for every p <= p0 (linear in p, = 1 at p0), so L_n(q) is a
non-negative supermartingale under H0, and so is its mixture M_n over a prior on [p0, 1] fixed in advance;
we take the Krichevsky-Trofimov prior Beta(1/2, 1/2) truncated to [p0, 1]:

    M_n(S) = B(S + 1/2, n - S + 1/2) * P(Beta(S + 1/2, n - S + 1/2) > p0)
             / (B(1/2, 1/2) * P(Beta(1/2, 1/2) > p0) * p0^S * (1 - p0)^(n - S)).

Ville's inequality: P_p(M_n >= 1/alpha for some n) <= alpha for every p < p0, so certifying the first time
M_n >= 1/alpha has level alpha whatever the stopping rule (early stop, futility, the cap). M_n grows with S
(each L_n(q), q > p0, does), so the test is an integer boundary b_n = min{S : M_n(S) >= 1/alpha}, computed once
per (p0, alpha, looks) in log space (scipy ``betaln`` / ``betainc``) by bisection, and compared with integer
counts afterwards (``int64``; no overflow for caps of 10^7 and far beyond). At S <= n p0 every L_n(q) <= 1, so
the bisection starts there.

Several radii at once, with no split of alpha: the boundaries of increasing p0 are made nested by a running
maximum over the radii (which only raises a boundary: each test stays valid). Then a false claim at some
radius (p < p0_j, S >= b(j)) implies S >= b(k) for the smallest radius k with p0_k > p, itself a false claim:
P(any false claim of one example) <= P(test k ever crosses) <= alpha.

Futility costs no validity (only "certified" needs alpha): a radius is given up when it cannot be crossed at
any later look even if every remaining sample succeeds ("unreachable", exact), or when the mirrored mixture
test of H0': p >= p0 rejects at level ``futility`` ("hopeless"; so an example with p >= p0 is given up on
this way with probability <= futility). The futility boundaries are nested by a running minimum from the top,
so at every look the certified radii are a prefix and the given-up radii a suffix of the sorted radii.

Without target radii (the adaptive mode), the same construction on a fine grid of radii r_j = j * step is a
confidence sequence: the largest certified grid radius is a (1 - alpha) lower bound on the true radius that
holds simultaneously at every look (the nested argument above, over the grid).

Looks: the tests are only evaluated at fixed points of each example's own noise stream (``look_points``), the
ends of fixed generation blocks (``estimation_blocks``), never at batch boundaries. Looking less often than
Ville allows only costs a little power.

The exact check: ``crossing_probability`` runs the dynamic program over the count lattice (the distribution
of S over the paths not yet absorbed, one binomial step per look) and returns the exact probability of each
outcome under Bernoulli(p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRIOR = 0.5  # Beta(1/2, 1/2), the Krichevsky-Trofimov prior, truncated to [p0, 1]
EARLY_BLOCKS = (50, 50, 100, 100, 200, 500)  # fine blocks for early looks (an easy example stops at 100-500)
LATE_BLOCK = 1000  # then blocks of NOISE_BLOCK samples, as fixed-N CERTIFY
SPARSE_FROM = 100_000  # beyond, looks every LATE_BLOCK * (n // SPARSE_FROM) samples (~1% overshoot at most)
_THRESHOLD_SLACK = 1e-6  # log-space safety margin over -log(alpha): far above float64 error (tested), harmless

# per-radius decisions
UNDECIDED, CERTIFIED, HOPELESS, UNREACHABLE, CAPPED = 0, 1, 2, 3, 4
DECISIONS = ("undecided", "certified", "hopeless", "unreachable", "cap")
_BIG = np.iinfo(np.int64).max // 4


# ------------------------------------------------------------------------------------------ noise schedule


def estimation_blocks(cap: int) -> np.ndarray:
    """Sizes of the generator calls of one example's estimation stream, up to ``cap`` samples.

    The fine early blocks, then blocks of ``LATE_BLOCK``; the last block is cut at the cap. The stream is a
    fixed function of (seed, idx, sigma, phase) and the cap: never of the batch, the pool, shards or resume.
    """
    if cap < 1:
        raise ValueError("cap must be >= 1")
    sizes = []
    n = 0
    for b in EARLY_BLOCKS:
        if n >= cap:
            break
        sizes.append(min(b, cap - n))
        n += sizes[-1]
    if n < cap:
        full, rest = divmod(cap - n, LATE_BLOCK)
        sizes += [LATE_BLOCK] * full + ([rest] if rest else [])
    return np.asarray(sizes, dtype=np.int64)


def look_points(cap: int) -> np.ndarray:
    """The estimation sample counts at which an example's tests are evaluated (increasing, last = ``cap``).

    Every block end up to ``SPARSE_FROM`` samples; beyond, every ``LATE_BLOCK * (n // SPARSE_FROM)`` samples
    (at most ~1% overshoot, and about 620 looks for a cap of 10^7). Always a subset of the block ends.
    """
    ends = np.cumsum(estimation_blocks(cap))
    looks = []
    nxt = 0
    for e in ends.tolist():
        if e >= nxt or e == cap:
            looks.append(e)
            nxt = e + LATE_BLOCK * max(1, e // SPARSE_FROM) if e >= SPARSE_FROM else e
    return np.asarray(looks, dtype=np.int64)


# ------------------------------------------------------------------------------------------ the mixture


def log_mixture(n, s, p0, q0=None) -> np.ndarray:
    """log M_n(s) of the truncated-KT mixture likelihood ratio against p0 (vectorized, float64).

    ``q0`` = 1 - p0, given separately when p0 is close to 1 (e.g. ``norm.sf(r / sigma)``) to keep precision.
    Accurate to ~1e-9 (tested against mpmath) wherever the Beta tail P(Beta(s + 1/2, n - s + 1/2) > p0) does
    not underflow float64, which includes every s >= n p0 - 4 sqrt(n), so every count the boundary search
    evaluates; far below (where M_n << 1) the tail may underflow and the value is only rough (or -inf).
    """
    from scipy.special import betainc, betaln

    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    p0 = np.asarray(p0, dtype=np.float64)
    q0 = 1.0 - p0 if q0 is None else np.asarray(q0, dtype=np.float64)
    a = PRIOR
    f = n - s
    with np.errstate(divide="ignore", invalid="ignore"):
        # P(Beta(s + a, f + a) > p0) = I_{q0}(f + a, s + a): accurate for p0 near 1 given q0
        out = (betaln(s + a, f + a) - betaln(a, a)
               + np.log(betainc(f + a, s + a, q0)) - np.log(betainc(a, a, q0))
               - s * np.log(p0) - f * np.log(q0))
    return np.where(np.isnan(out), -np.inf, out)


def mixture_boundary(n, p0, alpha: float, q0=None) -> np.ndarray:
    """b_n = min{s : log M_n(s) >= log(1/alpha)} (``n + 1`` when no s <= n crosses), int64, vectorized.

    Bisection on the integers: M_n is increasing in s, and M_n(s) <= 1 < 1/alpha for s <= n * p0.
    """
    n = np.asarray(n, dtype=np.int64)
    p0 = np.asarray(p0, dtype=np.float64)
    q0 = 1.0 - p0 if q0 is None else np.asarray(q0, dtype=np.float64)
    n, p0, q0 = np.broadcast_arrays(n, p0, q0)
    if np.any(n < 1) or np.any(~(p0 > 0)) or np.any(~(q0 >= 0)):
        raise ValueError("need n >= 1 and 0 < p0 <= 1")
    thr = -math.log(alpha) + _THRESHOLD_SLACK
    hi = n + 1  # virtual crossing point
    lo = np.maximum(np.floor(n * p0).astype(np.int64) - 1, -1)  # certainly not crossing
    impossible = q0 <= 0.0  # p0 == 1: nothing certifies
    lo = np.where(impossible, n, lo)
    while True:
        act = hi - lo > 1
        if not act.any():
            break
        mid = np.where(act, (lo + hi) // 2, lo)
        ok = np.zeros(mid.shape, dtype=bool)
        ok[act] = log_mixture(n[act], mid[act], p0[act], q0[act]) >= thr
        hi = np.where(act & ok, mid, hi)
        lo = np.where(act & ~ok, mid, lo)
    return hi


def min_cap(p0: float, alpha: float, q0: float | None = None) -> int:
    """The smallest cap N at which the test can certify p0 at all (N successes out of N cross at look N)."""
    q0 = 1.0 - p0 if q0 is None else q0
    thr = -math.log(alpha) + _THRESHOLD_SLACK

    def ok(n: int) -> bool:
        return bool(log_mixture(n, n, p0, q0) >= thr)  # increasing in n: each (q/p0)^n is

    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > 2**62:  # pragma: no cover - p0 == 1
            return _BIG
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Plan:
    """The precomputed, nested integer boundaries of one set of tests (one sigma, one set of radii).

    Attributes:
        looks: (K,) int64 estimation sample counts at the looks; the last is the cap.
        p0: (R,) increasing null values Phi(r / sigma).
        radii: (R,) the radii (for reporting; NaN when built from raw p0).
        upper: (K, R) int64: certify radius j at look k when S >= upper[k, j] (``looks[k] + 1``: impossible
            there). Nondecreasing in j.
        lower: (K, R) int64: radius j is hopeless at look k when S <= lower[k, j] (-1: never). Nondecreasing
            in j.
        reach: (K + 1, R) int64: after i looks (i = 0: before any sample) radius j can still be certified only
            when S - n_i >= reach[i, j]; reach[K] is huge (nothing follows the cap).
        alpha, futility: the levels.
    """

    looks: np.ndarray
    p0: np.ndarray
    radii: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    reach: np.ndarray
    alpha: float
    futility: float

    @property
    def cap(self) -> int:
        return int(self.looks[-1])

    @property
    def num_radii(self) -> int:
        return int(self.p0.shape[0])

    def initial(self, m: int = 1) -> np.ndarray:
        """Decisions of ``m`` examples before any sample: the radii that no look can ever certify."""
        status = np.zeros((m, self.num_radii), dtype=np.int8)
        status[:, self.reach[0] > 0] = UNREACHABLE
        return status

    def decide(self, k, S, status: np.ndarray) -> np.ndarray:
        """Update the decisions of examples at their look ``k`` with estimation successes ``S``.

        Args:
            k: look index per example (int array, or one int for all).
            S: successes among the first ``looks[k]`` estimation samples, per example.
            status: (E, R) int8 decisions so far (UNDECIDED, CERTIFIED, ...); not modified.

        Returns:
            the new (E, R) decisions. Decided radii stay decided; at the last look every undecided radius
            becomes CAPPED. Certified radii are always a prefix, given-up ones a suffix.
        """
        S = np.asarray(S, dtype=np.int64).reshape(-1, 1)
        k = np.broadcast_to(np.asarray(k, dtype=np.int64), (S.shape[0],))
        und = status == UNDECIDED
        n = self.looks[k][:, None]
        cert = und & (S >= self.upper[k])
        hop = und & ~cert & (S <= self.lower[k])
        unr = und & ~cert & ~hop & (S - n < self.reach[k + 1])
        out = status.copy()
        out[cert] = CERTIFIED
        out[hop] = HOPELESS
        out[unr] = UNREACHABLE
        last = (k == len(self.looks) - 1)[:, None] & (out == UNDECIDED)
        out[last] = CAPPED
        return out

    def projected_count(self, U) -> np.ndarray:
        """How many radii the last look would certify if a fraction ``U`` of all cap samples succeeded."""
        s = np.floor(np.asarray(U, dtype=np.float64) * self.cap).astype(np.int64)
        return np.searchsorted(self.upper[-1], s, side="right")


def _nest_and_reach(looks, upper, lower):
    upper = np.maximum.accumulate(upper, axis=1)
    lower = np.minimum.accumulate(lower[:, ::-1], axis=1)[:, ::-1]
    slack = upper - looks[:, None]  # S - n must reach this at some later look
    reach = np.empty((len(looks) + 1, upper.shape[1]), dtype=np.int64)
    reach[-1] = _BIG
    reach[:-1] = np.minimum.accumulate(slack[::-1], axis=0)[::-1]
    return upper, lower, reach


def plan_from_boundaries(looks, p0, upper, lower=None, *, alpha: float = float("nan"),
                         futility: float = float("nan"), radii=None) -> Plan:
    """A plan from raw (K, R) boundaries (nested here by the running max / min): for comparisons and tests,
    e.g. a naive procedure in the same harness."""
    looks = np.asarray(looks, dtype=np.int64)
    upper = np.asarray(upper, dtype=np.int64).reshape(len(looks), -1)
    lower = (np.full(upper.shape, -1, dtype=np.int64) if lower is None
             else np.asarray(lower, dtype=np.int64).reshape(upper.shape))
    p0 = np.atleast_1d(np.asarray(p0, dtype=np.float64))
    upper, lower, reach = _nest_and_reach(looks, upper, lower)
    radii = np.full(p0.shape, np.nan) if radii is None else np.asarray(radii, dtype=np.float64)
    return Plan(looks, p0, radii, upper, lower, reach, float(alpha), float(futility))


def make_plan(p0, alpha: float, cap: int, futility: float, *, q0=None, radii=None, looks=None) -> Plan:
    """Build the nested boundaries for null values ``p0`` (increasing) at level ``alpha``.

    Args:
        p0: increasing null values in (0, 1).
        alpha: certification level (the probability of any false certificate of one example).
        cap: the most estimation samples.
        futility: level of the "hopeless" test (power loss per radius <= futility).
        q0: 1 - p0 computed accurately (optional).
        radii: the radii the p0 stand for (recorded).
        looks: the look points (default :func:`look_points`); must be increasing and end at ``cap``.
    """
    p0 = np.atleast_1d(np.asarray(p0, dtype=np.float64))
    q0 = 1.0 - p0 if q0 is None else np.atleast_1d(np.asarray(q0, dtype=np.float64))
    if p0.size == 0 or np.any(np.diff(p0) <= 0) or np.any(p0 <= 0) or np.any(q0 < 0):
        raise ValueError("p0 must be increasing values in (0, 1]")
    if not (0 < alpha < 1 and 0 < futility < 1):
        raise ValueError("alpha and futility must lie in (0, 1)")
    looks = look_points(cap) if looks is None else np.asarray(looks, dtype=np.int64)
    if looks.ndim != 1 or looks[0] < 1 or np.any(np.diff(looks) <= 0) or looks[-1] != cap:
        raise ValueError("looks must increase from >= 1 to the cap")
    nn = looks[:, None]
    upper = mixture_boundary(nn, p0[None, :], alpha, q0[None, :])
    # the mirror test (failures as successes, p0 -> 1 - p0) rejects p >= p0 when S <= n - b'_n
    lower = nn - mixture_boundary(nn, q0[None, :], futility, p0[None, :])
    upper, lower, reach = _nest_and_reach(looks, upper, lower)
    radii = np.full(p0.shape, np.nan) if radii is None else np.asarray(radii, dtype=np.float64)
    return Plan(looks, p0, radii, upper, lower, reach, float(alpha), float(futility))


def radii_plan(radii, sigma: float, alpha: float, cap: int, futility: float, looks=None) -> Plan:
    """The plan testing the (increasing) L2 ``radii`` at noise level ``sigma``: p0 = Phi(r / sigma)."""
    from scipy.stats import norm

    r = np.asarray(radii, dtype=np.float64)
    return make_plan(norm.cdf(r / sigma), alpha, cap, futility, q0=norm.sf(r / sigma), radii=r, looks=looks)


def max_radius(sigma: float, alpha: float, cap: int) -> float:
    """An upper bound on every radius certifiable with ``cap`` samples: M_N(N) <= (1/p0)^N must reach 1/alpha."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(math.exp(math.log(alpha) / cap)))


def grid_plan(sigma: float, alpha: float, cap: int, futility: float, step: float, looks=None) -> Plan:
    """The adaptive mode's plan: radii ``step, 2 step, ...`` up to the largest one the cap can certify."""
    J = int(max_radius(sigma, alpha, cap) // step) + 1
    plan = radii_plan(step * np.arange(1, J + 1), sigma, alpha, cap, futility, looks=looks)
    keep = int(np.searchsorted(plan.upper[-1], plan.cap, side="right"))  # certifiable at the cap
    if keep == 0:
        raise ValueError("no grid radius is certifiable at this cap")
    return Plan(plan.looks, plan.p0[:keep], plan.radii[:keep], plan.upper[:, :keep], plan.lower[:, :keep],
                plan.reach[:, :keep], plan.alpha, plan.futility)


# ------------------------------------------------------------------------------------------ exact check


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if min(a.size, b.size) <= 64 or a.size * b.size <= 1 << 18:
        return np.convolve(a, b)
    from scipy.signal import fftconvolve

    return np.clip(fftconvolve(a, b), 0.0, None)


def crossing_probability(p: float, looks, upper, lower=None, reach=None, *, tiny: float = 1e-17) -> dict:
    """Exact outcome probabilities of one radius's test under i.i.d. Bernoulli(p) samples.

    The dynamic program over the count lattice: the distribution of S over the paths not yet absorbed,
    advanced by one binomial step per look (``binom.pmf``), the mass at or above ``upper[k]`` moved to
    "certified", at or below ``lower[k]`` to "hopeless", and (with ``reach``: after look k, S - n_k <
    reach[k + 1]) to "unreachable". Edges of the band with mass below ``tiny`` are dropped and their total is
    returned as ``dropped`` (so ``certified + dropped`` bounds the true crossing probability from above).

    Returns:
        dict with ``certified``, ``hopeless``, ``unreachable``, ``cap`` (undecided at the last look),
        ``dropped`` and ``mean_n`` (expected estimation samples until this radius is decided).
    """
    from scipy.stats import binom

    looks = np.asarray(looks, dtype=np.int64)
    upper = np.asarray(upper, dtype=np.int64)
    lower = np.full(looks.shape, -1, dtype=np.int64) if lower is None else np.asarray(lower, dtype=np.int64)
    dist = np.ones(1)  # P(S_n = off + i, not absorbed)
    off = 0
    out = {"certified": 0.0, "hopeless": 0.0, "unreachable": 0.0, "cap": 0.0, "dropped": 0.0, "mean_n": 0.0}
    if reach is not None and reach[0] > 0:
        out["unreachable"] = 1.0
        return out
    prev = 0
    pmfs: dict[int, np.ndarray] = {}
    for k, n in enumerate(looks.tolist()):
        d = n - prev
        prev = n
        if d not in pmfs:
            pmfs[d] = binom.pmf(np.arange(d + 1), d, p)
        dist = _convolve(dist, pmfs[d])
        s = off + np.arange(dist.size)
        cert = s >= upper[k]
        hop = ~cert & (s <= lower[k])
        unr = ~cert & ~hop & ((s - n < reach[k + 1]) if reach is not None else False)
        gone = cert | hop | unr
        out["certified"] += float(dist[cert].sum())
        out["hopeless"] += float(dist[hop].sum())
        out["unreachable"] += float(dist[unr].sum())
        out["mean_n"] += n * float(dist[gone].sum())
        dist = np.where(gone, 0.0, dist)
        nz = np.flatnonzero(dist > tiny)
        if nz.size == 0:
            out["dropped"] += float(dist.sum())
            dist = np.zeros(0)
            break
        a, b = nz[0], nz[-1] + 1
        out["dropped"] += float(dist[:a].sum() + dist[b:].sum())
        dist = dist[a:b]
        off += int(a)
    if dist.size:
        out["cap"] = float(dist.sum())
        out["mean_n"] += int(looks[-1]) * out["cap"]
    return out


def plan_outcome(plan: Plan, p: float, j: int = 0, **kw) -> dict:
    """:func:`crossing_probability` of radius ``j`` of ``plan`` (its nested boundaries and futility rules)."""
    return crossing_probability(p, plan.looks, plan.upper[:, j], plan.lower[:, j], plan.reach[:, j], **kw)
