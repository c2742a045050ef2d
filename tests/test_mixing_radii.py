"""Certified radii of mixtures (002 Thm 1/2) on an analytic linear model with closed-form smoothed probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from robcli.errors import UsageError
from robcli.mixing.radii import (
    bonferroni_levels,
    certify_lipschitz_mixture,
    certify_local_estimate,
    certify_smoothed_mixture,
    cp_upper,
    estimate_local_lipschitz,
    lipschitz_radius,
    min_estimation_samples,
    rs_lipschitz,
    simultaneous_bounds,
    smoothing_radius,
)

W = torch.tensor([0.6, 0.8])  # |w| = 1
A_THR, B_THR = 0.0, 1.0  # class 0: w.x < 0; class 1: 0 <= w.x < 1; class 2: w.x >= 1


class Thresholds(torch.nn.Module):
    """Hard 3-class classifier on s = w.x: intervals (-inf, a), [a, b), [b, inf)."""

    def forward(self, x):
        s = x @ W
        return torch.stack([A_THR - s, torch.minimum(s - A_THR, B_THR - s), s - B_THR], 1)


def exact_probs(s: float, sigma: float) -> np.ndarray:
    """Closed-form smoothed probabilities: s + sigma |w| Z with |w| = 1."""
    p0 = norm.cdf((A_THR - s) / sigma)
    p2 = 1 - norm.cdf((B_THR - s) / sigma)
    return np.array([p0, 1 - p0 - p2, p2])


def point(s: float) -> torch.Tensor:
    return (W * s).view(1, 2)  # w.x = s since |w| = 1


def true_thm2_radius(s: float, sigma: float, alpha: float) -> tuple[int, float]:
    p = exact_probs(s, sigma)
    o = np.argsort(-p)
    return int(o[0]), float(smoothing_radius(p[o[0]], p[o[1]], alpha, sigma))


# ---- closed forms ----------------------------------------------------------------------------------------


def test_lipschitz_radius_known_answer():
    p = np.array([[0.7, 0.2, 0.1]])
    # i=1: (0.8*0.5 - 0.2)/(0.8*2) = 0.125 ; i=2: (0.8*0.6 - 0.2)/1.6 = 0.175
    assert lipschitz_radius(p, 0.8, 1.0)[0] == pytest.approx(0.125)
    # per-class constants: L = (1, 3, 1): i=1: 0.2/(0.8*4) = 0.0625 ; i=2: 0.28/1.6 = 0.175
    assert lipschitz_radius(p, 0.8, np.array([1.0, 3.0, 1.0]))[0] == pytest.approx(0.0625)
    # alpha -> 1: the plain Lipschitz margin radius (p_y - p_i)/(L_y + L_i)
    assert lipschitz_radius(p, 1.0, 2.0)[0] == pytest.approx(0.5 / 4)
    # alpha < 1/2 or alpha too small for the margin: nothing certified
    assert lipschitz_radius(p, 0.49, 1.0)[0] == 0.0
    assert lipschitz_radius(p, 1 / (1 + 0.5), 1.0)[0] == pytest.approx(0.0, abs=1e-12)


def test_smoothing_radius_reduces_to_cohen_at_alpha_one():
    for pA in (0.6, 0.9, 0.999):
        assert smoothing_radius(pA, 1 - pA, 1.0, 0.5) == pytest.approx(0.5 * norm.ppf(pA))
    # 002 Thm 2 by hand: sigma/2 (Phi^-1(0.8*0.9) - Phi^-1(0.8*0.05 + 0.2))
    want = 0.25 * 0.5 * (norm.ppf(0.72) - norm.ppf(0.24))
    assert smoothing_radius(0.9, 0.05, 0.8, 0.25) == pytest.approx(want)
    assert smoothing_radius(0.9, 0.05, 0.3, 0.25) == 0.0
    assert rs_lipschitz(0.5) == pytest.approx(math.sqrt(2 / math.pi) / 0.5)


def test_bad_alpha_and_sigma_are_usage_errors():
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        smoothing_radius(0.9, 0.1, 1.5, 0.25)
    with pytest.raises(UsageError, match=r"alpha -0.1 must lie in \[0, 1\]"):
        lipschitz_radius(np.array([[0.9, 0.1]]), -0.1, 1.0)
    with pytest.raises(UsageError, match="sigma 0.0 must be > 0"):
        smoothing_radius(0.9, 0.1, 0.8, 0.0)


@pytest.mark.parametrize("s,alpha", [(-0.3, 0.8), (0.5, 0.9), (1.4, 0.7), (0.45, 1.0)])
def test_thm2_certificate_holds_against_worst_case_core(s, alpha):
    """Move x by 0.999 r along +-w (the directions that change the smoothed probabilities most) and let g put all
    its mass on h's strongest competitor: the mixture must still predict y (Lemma 1 + Thm 2)."""
    sigma = 0.4
    y, r = true_thm2_radius(s, sigma, alpha)
    assert r > 0
    for direction in (-1.0, 1.0):
        q = exact_probs(s + direction * 0.999 * r, sigma)
        comp = [i for i in range(3) if i != y]
        worst = max(comp, key=lambda i: q[i])
        mix = alpha * q
        mix[worst] += 1 - alpha  # g = one-hot on the competitor
        assert mix.argmax() == y


def test_thm1_rs_lipschitz_certificate_holds_and_is_smaller_than_thm2():
    sigma, alpha, s = 0.4, 0.85, 0.5
    p = exact_probs(s, sigma)
    r1 = lipschitz_radius(p[None], alpha, rs_lipschitz(sigma))[0]
    _, r2 = true_thm2_radius(s, sigma, alpha)
    assert 0 < r1 <= r2  # 002 Sec. IV-B: the RS-based bound is tighter


# ---- Monte-Carlo certificates -----------------------------------------------------------------------------


def test_cp_upper_matches_lower_by_symmetry():
    from robcli.certify.bounds import cp_lower

    n, k = 200, np.array([0, 3, 50, 199, 200])
    up = cp_upper(k, n, 0.01)
    assert np.allclose(up, 1 - cp_lower(n - k, n, 0.01))
    assert up[-1] == 1.0


def test_simultaneous_bounds_use_bonferroni_split():
    from robcli.certify.bounds import cp_lower

    counts = np.array([[800, 150, 50]])
    lo, up = simultaneous_bounds(counts, np.array([0]), 0.01)
    assert lo[0] == pytest.approx(cp_lower(800, 1000, 0.005))
    assert up[0] == pytest.approx(cp_upper(150, 1000, 0.0025))
    assert lo[0] < 0.8 and up[0] > 0.15


def test_mc_radius_close_to_and_below_true_radius():
    sigma, alpha, s = 0.4, 0.8, 0.5
    y, r_true = true_thm2_radius(s, sigma, alpha)
    cert = certify_smoothed_mixture(Thresholds(), point(s), alpha=alpha, sigma=sigma, n0=100, n=20000,
                                    alpha_cert=0.001, batch=20000, seed=3)
    assert cert.predict[0] == y
    assert 0.8 * r_true < cert.radius[0] <= r_true
    assert not cert.estimate
    lip = certify_smoothed_mixture(Thresholds(), point(s), alpha=alpha, sigma=sigma, n0=100, n=20000,
                                   alpha_cert=0.001, batch=20000, seed=3, method="lipschitz")
    assert 0 < lip.radius[0] < cert.radius[0]


def _violation_rates(trials: int, n: int, alpha_cert: float, s: float, alpha: float, seed: int):
    sigma = 0.4
    y, r_true = true_thm2_radius(s, sigma, alpha)
    x = point(s).repeat(trials, 1)
    cert = certify_smoothed_mixture(Thresholds(), x, alpha=alpha, sigma=sigma, n0=20, n=n, alpha_cert=alpha_cert,
                                    batch=50000, seed=seed, idx=range(trials))
    bad = (cert.predict != -1) & ((cert.predict != y) | (cert.radius > r_true + 1e-12))
    # what the reference code does: raw Monte-Carlo frequencies plugged into Thm 2 (an estimate)
    from robcli.certify.smoothing import VoteCounter, noise_seed

    vc = VoteCounter(Thresholds(), 3, "cpu", 50000, channels_last=False)
    c = vc.counts(x, [noise_seed(seed, i, sigma, "mix-estimate") for i in range(trials)], n, sigma).numpy()
    f = c / n
    order = np.argsort(-f, 1)
    ar = np.arange(trials)
    r_raw = smoothing_radius(f[ar, order[:, 0]], f[ar, order[:, 1]], alpha, sigma)
    raw_bad = (r_raw > 0) & ((order[:, 0] != y) | (r_raw > r_true + 1e-12))
    return bad.mean(), raw_bad.mean()


def test_certified_radius_exceeds_true_one_at_most_at_rate_alpha():
    trials, alpha_cert = 400, 0.2
    rate, raw_rate = _violation_rates(trials, n=200, alpha_cert=alpha_cert, s=0.5, alpha=0.8, seed=11)
    slack = 3 * math.sqrt(alpha_cert * (1 - alpha_cert) / trials)
    assert rate <= alpha_cert + slack
    assert raw_rate > 0.3  # raw frequencies overstate the radius about half of the time: the check has power


@pytest.mark.slow
@pytest.mark.parametrize("s,alpha", [(0.5, 0.8), (-0.2, 0.9), (0.9, 0.75)])
def test_certified_radius_rate_thorough(s, alpha):
    trials, alpha_cert = 3000, 0.05
    rate, _ = _violation_rates(trials, n=500, alpha_cert=alpha_cert, s=s, alpha=alpha, seed=5)
    assert rate <= binom.ppf(0.999, trials, alpha_cert) / trials


def test_mc_noise_is_independent_of_global_rng_and_batch():
    kw = dict(alpha=0.8, sigma=0.4, n0=50, n=500, alpha_cert=0.01, seed=7)
    torch.manual_seed(0)
    a = certify_smoothed_mixture(Thresholds(), point(0.5), batch=500, **kw)
    torch.manual_seed(123)
    b = certify_smoothed_mixture(Thresholds(), point(0.5), batch=37, **kw)
    assert a.radius[0] == b.radius[0] and a.n_top[0] == b.n_top[0]


class Constant(torch.nn.Module):
    """K-class classifier that votes for class 0 at every (noisy) input: the best case, all N votes on one class."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        z = torch.zeros(x.shape[0], self.k, dtype=x.dtype)
        z[:, 0] = 1.0
        return z


def test_min_estimation_samples_is_the_strict_floor_of_the_bonferroni_lower_bound():
    """The smallest N with (alpha/2)^(1/N) > 1/(2a): 17 at a = 0.8, alpha 0.001 (not ceil(log2(1/alpha)) = 10);
    log2(2/alpha) + 1 where that is an integer at a = 1 (strict inequality); no floor at a <= 1/2."""
    assert min_estimation_samples(0.001, 0.8) == 17
    assert min_estimation_samples(0.001, 1.0) == 11 == math.ceil(math.log2(2 / 0.001))
    assert min_estimation_samples(2.0 ** -10, 1.0) == 12  # (2^-11)^(1/11) = 1/2 exactly: not > 1/2
    assert min_estimation_samples(0.001, 0.5) is None and min_estimation_samples(0.001, 0.3) is None
    assert bonferroni_levels(0.001, 10) == (0.0005, 0.0005 / 9)
    for alpha_cert in (0.2, 0.05, 0.001, 1e-6):
        for a in (0.55, 0.6, 0.75, 0.8, 0.9, 0.99, 1.0):
            top, _ = bonferroni_levels(alpha_cert, 3)
            want = next(n for n in range(1, 10_000) if top ** (1 / n) > 1 / (2 * a))
            assert min_estimation_samples(alpha_cert, a) == want, (alpha_cert, a)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("alpha_cert,a", [(0.001, 0.8), (0.01, 0.95), (0.001, 1.0), (0.05, 0.6)])
def test_estimation_sample_floor_boundary(k, alpha_cert, a):
    """N = floor certifies an input whose N votes all go to one class (both methods, any K); N = floor - 1 is
    refused in one line naming the floor, and there even the best case would have certified nothing."""
    floor = min_estimation_samples(alpha_cert, a)
    x = torch.zeros(2, 2)
    for method in ("smoothing", "lipschitz"):
        cert = certify_smoothed_mixture(Constant(k), x, alpha=a, sigma=0.5, n0=1, n=floor, alpha_cert=alpha_cert,
                                        method=method, num_classes=k)
        assert (cert.predict == 0).all() and (cert.radius > 0).all() and (cert.n_top == floor).all()
        with pytest.raises(UsageError, match=rf"--N {floor - 1} is too small .* N >= {floor};"):
            certify_smoothed_mixture(Constant(k), x, alpha=a, sigma=0.5, n0=1, n=floor - 1, alpha_cert=alpha_cert,
                                     method=method, num_classes=k)
    # negative control: the refusal is not over-strict; below the floor the bounds certify nothing
    counts = np.zeros((1, k), dtype=np.int64)
    counts[0, 0] = floor - 1
    lo, up = simultaneous_bounds(counts, np.array([0]), alpha_cert)
    assert smoothing_radius(lo, up, a, 0.5)[0] == 0.0
    assert lipschitz_radius(np.array([[lo[0], up[0]]]), a, rs_lipschitz(0.5), y=np.array([0]))[0] == 0.0


def test_smoothed_certify_validates_parameters():
    with pytest.raises(UsageError, match="too small"):
        certify_smoothed_mixture(Thresholds(), point(0.5), alpha=0.8, sigma=0.4, n0=5, n=5, alpha_cert=0.001)
    with pytest.raises(UsageError, match="unknown radius method 'magic'; choose smoothing or lipschitz"):
        certify_smoothed_mixture(Thresholds(), point(0.5), alpha=0.8, sigma=0.4, method="magic", n=100)


# ---- deterministic h: given and locally estimated Lipschitz constants --------------------------------------


class Logistic(torch.nn.Module):
    """2-class linear softmax model: logits (0, w.x + b)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.tensor(w), float(b)

    def double(self):
        self.w = self.w.double()
        return self

    def forward(self, x):
        z = x @ self.w.to(x.dtype) + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def test_given_lipschitz_mixture_radius():
    """Thm 1 with h's TRUE l2 constant, checked against the worst case: g one-hot on the competitor and x moved
    along the direction that lowers h's margin fastest. The certificate holds at 0.999 r; where the slope of
    h is close to its maximum along that path (s = w.x + b near 0) the bound is nearly tight, so the mixture's
    prediction flips a little beyond r."""
    w, b, alpha = [2.0, -1.0], 0.3, 0.9
    h = Logistic(w, b).double()
    wt = torch.tensor(w, dtype=torch.float64)
    lip = math.sqrt(5) / 4  # |d sigmoid(w.x + b) / dx|_2 <= sigma'(0) |w|_2 = sqrt(5)/4 for both probabilities
    # s = 1.1 (confident, the bound is loose), s = 0.5 and s = -0.4 (near 0: nearly tight)
    x = torch.tensor([[0.5, 0.2], [0.1, 0.1], [0.1, 0.9]], dtype=torch.float64)
    cert = certify_lipschitz_mixture(h, x, alpha=alpha, lip=lip)
    p = torch.softmax(h(x), 1).numpy()
    y = p.argmax(1)
    assert np.allclose(cert.radius, lipschitz_radius(p, alpha, lip)) and (cert.radius > 0).all()
    assert (cert.predict == y).all()

    def worst_case_prediction(factor):
        # unit direction lowering p_y fastest: -w/|w| for y = 1, +w/|w| for y = 0
        sign = torch.tensor(np.where(y == 1, -1.0, 1.0), dtype=torch.float64)[:, None]
        xs = x + factor * torch.tensor(cert.radius)[:, None] * sign * wt / wt.norm()
        comp = torch.nn.functional.one_hot(torch.tensor(1 - y), 2).double()  # g votes for the competitor
        q = (1 - alpha) * comp + alpha * torch.softmax(h(xs), 1)
        return q.argmax(1).numpy()

    assert (worst_case_prediction(0.999) == y).all()
    beyond = worst_case_prediction(1.1)
    assert (beyond[1:] != y[1:]).all()  # the two nearly tight examples flip 10 % beyond the radius


def test_local_lipschitz_estimate_matches_closed_form_on_logistic_model():
    w, b, eps = [2.0, -1.0], 0.3, 0.05
    h = Logistic(w, b)
    x = torch.tensor([[0.5, 0.5]])
    p, y, lip = estimate_local_lipschitz(h, x, eps=eps, norm="Linf", steps=20,
                                         generator=torch.Generator().manual_seed(0))
    s = float(x @ torch.tensor(w)) + b  # 0.8 -> class 1 predicted
    assert y[0] == 1
    l1 = sum(abs(v) for v in w)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    want_y = (sig(s) - sig(s - eps * l1)) / eps  # worst decrease of p_1
    want_0 = ((1 - sig(s - eps * l1)) - (1 - sig(s))) / eps  # worst increase of p_0
    assert lip[0, 1] == pytest.approx(want_y, rel=1e-4)
    assert lip[0, 0] == pytest.approx(want_0, rel=1e-4)
    cert = certify_local_estimate(h, x, alpha=0.95, eps=eps, generator=torch.Generator().manual_seed(0))
    assert cert.estimate and cert.kind.startswith("lipschitz-local-estimate")
    assert cert.radius[0] in (0.0, eps)


def test_local_lipschitz_estimate_keeps_the_largest_change_over_the_pgd_iterates(monkeypatch):
    """PGD's last iterate can be worse than an earlier one (a step past the maximum): the estimate must keep
    the largest change seen, not the last."""
    import importlib

    P = importlib.import_module("robcli.attacks.pgd")  # the module (robcli.attacks re-exports the function)

    w, b, eps = [2.0, -1.0], 0.3, 0.05
    h = Logistic(w, b)
    x = torch.tensor([[0.5, 0.5]])  # s = 0.8: class 1
    down = torch.tensor([[-eps, eps]])  # lowers s by 3 eps: the worst point for p_1 (and best for p_0)

    def fake_pgd(model, x, objective, *, eps, norm, steps, generator=None, **kw):
        for d in (0.2 * down, down, 0.3 * down):  # the best point is visited, then left
            xa = x + d
            objective(model(xa), xa)
        return (x + 0.3 * down).detach()

    monkeypatch.setattr(P, "pgd", fake_pgd)
    _, y, lip = estimate_local_lipschitz(h, x, eps=eps, norm="Linf", steps=3)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    s = 0.8
    assert y[0] == 1
    assert lip[0, 1] == pytest.approx((sig(s) - sig(s - 3 * eps)) / eps, rel=1e-5)  # not the 0.3 * down change
    assert lip[0, 0] == pytest.approx((sig(s) - sig(s - 3 * eps)) / eps, rel=1e-5)
