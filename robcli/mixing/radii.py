"""Certified radii of a fixed-alpha mixture h^alpha (the mixing paper's Lemma 1, Thm 1, Thm 2; the adaptive-smoothing paper's Lemma 3.2, Thm 3.5, A.2).

All results certify that argmax_i h^alpha_i(x + delta) = y := argmax_i h_i(x) for ||delta|| <= r, whatever the
core model g does (Lemma 1: g is an adversary here). They need alpha >= 1/2; below, or when r <= 0, there is no
certificate (radius 0, ``certified`` False).

* Lipschitz-based (the mixing paper's Thm 1 / the adaptive-smoothing paper's Thm 3.5), any l_p norm:
      r = min_{i != y} (alpha (h_y - h_i) + alpha - 1) / (alpha (Lip(h_y) + Lip(h_i))).
  Lipschitz constants of the probabilities h_i: given by the user; sqrt(2/pi)/sigma (l_2) for a Gaussian
  randomized-smoothing h (the mixing paper's Sec. III, after Assumption 1); or a LOCAL ESTIMATE (the adaptive-smoothing paper's App. C.3, eq. 12) by
  PGD, which is not a certificate and is flagged as such.
* Smoothing-based (the mixing paper's Thm 2 / the adaptive-smoothing paper's Thm A.2), l_2, h = E[hbar(x + xi)], xi ~ N(0, sigma^2 I):
      r = sigma/2 (Phi^-1(alpha h_y) - Phi^-1(alpha h_y' + 1 - alpha)).

Monte-Carlo h (randomized smoothing): the smoothed probabilities are unknown, so — unlike the reference code,
which plugs in raw frequencies — both radii are computed from SIMULTANEOUS one-sided Clopper-Pearson bounds:
the top class y is chosen on N0 selection samples; on N fresh samples, a lower bound on h_y at level
alpha_cert/2 and an upper bound on EVERY other class at level alpha_cert/(2(K-1)) (Bonferroni). With
probability >= 1 - alpha_cert all K bounds hold at once; both radii increase in h_y and decrease in every
h_i, i != y, so the radius from the bounds is then at most the true radius. The runner-up bound is
min(max_{i != y} upper_i, 1 - lower_y), valid on the same event. hbar is the hard (one-hot) base classifier,
as in Cohen et al., so each class count is binomial and Clopper-Pearson is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from robcli.errors import UsageError
from robcli.mixing.mixed import check_alpha
from robcli.tables.schema import CERTIFIED_MIXTURE, CERTIFIED_MIXTURE_SMOOTHED_H

ABSTAIN = -1


def rs_lipschitz(sigma: float) -> float:
    """l_2 Lipschitz constant sqrt(2/pi)/sigma of each probability of a Gaussian-smoothed classifier."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"sigma {sigma!r} must be > 0")
    return math.sqrt(2.0 / math.pi) / sigma


def _top_two(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-p, axis=1, kind="stable")
    y = order[:, 0]
    return y, np.take_along_axis(p, y[:, None], 1)[:, 0], order


def lipschitz_radius(p_h: np.ndarray, alpha: float, lip, *, y: np.ndarray | None = None) -> np.ndarray:
    """Thm 1 of 002 (Thm 3.5 of 004) with exact probabilities of h.

    Args:
        p_h: (B, K) probabilities of the robust model h at x.
        alpha: mixing weight.
        lip: Lipschitz constant of every h_i (float), per class (K,), or per example and class (B, K).
        y: the class to certify (default argmax p_h).

    Returns:
        (B,) radii, 0 where nothing is certified (alpha < 1/2 or a non-positive bound).
    """
    a = check_alpha(alpha)
    p = np.asarray(p_h, dtype=np.float64)
    B, K = p.shape
    L = np.broadcast_to(np.asarray(lip, dtype=np.float64), (B, K)) if np.ndim(lip) < 2 else np.asarray(lip, np.float64)
    if np.any(~np.isfinite(L)) or np.any(L <= 0):
        raise UsageError("Lipschitz constants must be positive and finite")
    if y is None:
        y = p.argmax(1)
    if a < 0.5 or K < 2:
        return np.zeros(B)
    py = p[np.arange(B), y][:, None]
    Ly = L[np.arange(B), y][:, None]
    r = (a * (py - p) + a - 1.0) / (a * (Ly + L))
    r[np.arange(B), y] = np.inf
    return np.maximum(r.min(1), 0.0)


def smoothing_radius(p_top, p_runner, alpha: float, sigma: float) -> np.ndarray:
    """Thm 2 of 002 (Thm A.2 of 004): sigma/2 (Phi^-1(alpha p_y) - Phi^-1(alpha p_y' + 1 - alpha)), l_2.

    With alpha = 1 this is Cohen et al.'s sigma/2 (Phi^-1(pA) - Phi^-1(pB)). Pass a LOWER bound of the top
    probability and an UPPER bound of the runner-up for a certificate. Returns 0 where nothing is certified.
    """
    from scipy.stats import norm

    a = check_alpha(alpha)
    if not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"sigma {sigma!r} must be > 0")
    pt = np.clip(np.asarray(p_top, dtype=np.float64), 0.0, 1.0)
    pr = np.clip(np.asarray(p_runner, dtype=np.float64), 0.0, 1.0)
    if a < 0.5:
        return np.zeros(np.broadcast(pt, pr).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 0.5 * sigma * (norm.ppf(a * pt) - norm.ppf(a * pr + 1.0 - a))
    r = np.where(np.isfinite(r), r, np.where(np.isposinf(r), np.inf, 0.0))
    return np.maximum(r, 0.0)


def cp_upper(n_i, n, level: float) -> np.ndarray:
    """One-sided (1 - level) Clopper-Pearson upper bound: ``beta.ppf(1 - level, n_i + 1, n - n_i)``; 1 at n_i = n."""
    from scipy.stats import beta

    n_i = np.asarray(n_i, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), n_i.shape)
    safe_b = np.where(n_i < n, n - n_i, 1.0)
    out = beta.ppf(1.0 - level, n_i + 1.0, safe_b)
    return np.where(n_i < n, out, 1.0)


def bonferroni_levels(alpha_cert: float, num_classes: int) -> tuple[float, float]:
    """The split of ``alpha_cert`` used by :func:`simultaneous_bounds` (and so by the sample-size floor):
    (level of the top class's lower bound, level of each of the other K - 1 classes' upper bounds)."""
    return alpha_cert / 2.0, alpha_cert / (2.0 * max(int(num_classes) - 1, 1))


def min_estimation_samples(alpha_cert: float, mix_alpha: float) -> int | None:
    """Smallest estimation sample N with which a smoothed-h mixture certificate (Thm 2, or Thm 1 with
    Lip = sqrt(2/pi)/sigma) can certify anything at failure probability ``alpha_cert``; None when no N can
    (mixture weight <= 1/2).

    The best case is all N votes on one class y. Its lower bound is then the Clopper-Pearson bound at the
    top class's level l of the Bonferroni split (:func:`bonferroni_levels`; l = alpha_cert/2), lower = l^(1/N);
    every other class has 0 votes, and since its level is at most l its upper bound 1 - level^(1/N) is at
    least 1 - lower, so the runner-up bound is upper = min(..., 1 - lower) = 1 - lower, whatever K. Both
    radii are positive iff a (lower - upper) > 1 - a (Thm 2: Phi^-1(a lower) > Phi^-1(a upper + 1 - a);
    Thm 1: a (lower - upper) + a - 1 > 0), i.e. iff 2 a lower > 1: lipschitz-rs needs exactly what smoothing
    needs. So N must satisfy l^(1/N) > 1/(2a): N > ln(l) / ln(1/(2a)), strictly. At a = 1 this is
    N > log2(2/alpha_cert); at a = 0.8, alpha_cert = 0.001 it is N >= 17 (plain CERTIFY's ceil(log2(1/alpha))
    = 10 would let every input abstain). The closed form is then checked against the certification code
    itself (both radii, best-case votes), so that the floor is exactly where certifying becomes possible.
    """
    a = check_alpha(mix_alpha)
    if not (0.0 < alpha_cert < 1.0):
        raise UsageError(f"--alpha {alpha_cert:g} must lie in (0, 1) (the failure probability)")
    if a <= 0.5:
        return None
    top_level, _ = bonferroni_levels(alpha_cert, 3)
    n = max(int(math.floor(math.log(top_level) / math.log(1.0 / (2.0 * a)))) + 1, 1)
    while not _best_case_certifies(n, alpha_cert, a):  # float rounding at an exact boundary
        n += 1
    while n > 1 and _best_case_certifies(n - 1, alpha_cert, a):
        n -= 1
    return n


def _best_case_certifies(n: int, alpha_cert: float, a: float) -> bool:
    """Do both radii certify all n estimation votes on one class (K = 3: the bound min(., 1 - lower) binds)?"""
    lo, up = simultaneous_bounds(np.array([[n, 0, 0]]), np.array([0]), alpha_cert)
    return bool(smoothing_radius(lo, up, a, 1.0)[0] > 0 and _bound_lipschitz_radius(lo, up, a, 1.0)[0] > 0)


def check_estimation_samples(n: int, alpha_cert: float, mix_alpha: float) -> None:
    """Refuse an estimation sample too small for any certificate (:func:`min_estimation_samples`).

    Raises:
        UsageError: N below the floor (one line naming it), N < 1, or alpha_cert outside (0, 1).
    """
    if n < 1:
        raise UsageError(f"--N {n} must be >= 1")
    floor = min_estimation_samples(alpha_cert, mix_alpha)
    if floor is not None and n < floor:
        raise UsageError(
            f"--N {n} is too small for --alpha {alpha_cert:g} at mixture weight {float(mix_alpha):g}: a certificate "
            f"needs a lower bound (alpha/2)^(1/N) > 1/(2 * weight), i.e. N >= {floor}; with fewer samples even N "
            "votes out of N on one class certify nothing, so every input would abstain"
        )


def simultaneous_bounds(counts: np.ndarray, top: np.ndarray, alpha_cert: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower bound on p_top and upper bound on max_{i != top} p_i, holding together w.p. >= 1 - alpha_cert.

    Bonferroni split (:func:`bonferroni_levels`): alpha_cert/2 for the top class (one-sided Clopper-Pearson
    lower bound), alpha_cert/(2(K-1)) for each other class (one-sided upper bounds).

    Args:
        counts: (B, K) votes on the estimation sample (independent of the choice of ``top``).
        top: (B,) the class chosen on a separate selection sample.
    """
    from robcli.certify.bounds import cp_lower

    if not (0.0 < alpha_cert < 1.0):
        raise UsageError(f"alpha {alpha_cert!r} must lie in (0, 1)")
    c = np.asarray(counts, dtype=np.int64)
    B, K = c.shape
    n = c.sum(1)
    ar = np.arange(B)
    top_level, other_level = bonferroni_levels(alpha_cert, K)
    lower = cp_lower(c[ar, top], n, top_level)
    upper_all = cp_upper(c, n[:, None], other_level)
    upper_all[ar, top] = -np.inf
    upper = np.minimum(upper_all.max(1), 1.0 - lower)
    return lower, upper


@dataclass
class MixtureCertificate:
    """Per-example result: ``predict`` (-1: abstain), ``radius`` (0 when not certified), and the bounds.

    ``certified_model`` says which classifier the radii are for (``robcli.tables.schema.CERTIFIED_MODELS``):
    ``mixture`` (the mixture of the deterministic h, as a mixture run directory computes it) or
    ``mixture-with-smoothed-h`` (h replaced by its Gaussian-smoothed hard classifier). ``estimate``: the
    radii are estimates, not certificates.
    """

    predict: np.ndarray
    radius: np.ndarray
    p_top_lower: np.ndarray
    p_runner_upper: np.ndarray
    n_top: np.ndarray
    kind: str
    certified_model: str
    estimate: bool = False

    def frame(self, **cols):
        import pandas as pd

        d = {"predict": self.predict, "radius": self.radius, "pA_lower": self.p_top_lower,
             "pB_upper": self.p_runner_upper, "nA": self.n_top, "radius_kind": self.kind,
             "certified_model": self.certified_model, "radius_is_estimate": self.estimate}
        d.update(cols)
        return pd.DataFrame(d)


def certify_smoothed_mixture(base_h: torch.nn.Module, x: torch.Tensor, *, alpha: float, sigma: float,
                             n0: int = 100, n: int = 100_000, alpha_cert: float = 0.001, batch: int = 1000,
                             seed: int = 0, idx=None, method: str = "smoothing", num_classes: int | None = None,
                             device=None) -> MixtureCertificate:
    """Certified l_2 radii of h^alpha when h is the Gaussian-smoothed hard classifier of ``base_h``.

    The certified classifier is ``mixture-with-smoothed-h``: log((1-a) softmax(g) + a E[onehot(base_h(x + xi))]),
    NOT the mixture of softmax(s_h base_h) that a mixture run directory computes.

    The noise comes from dedicated per-example generators (``robcli.certify.smoothing.noise_seed``), so global
    RNG reseeding (AutoAttack) cannot touch it and results do not depend on ``batch``.

    Args:
        base_h: the base classifier hbar ([0,1] inputs -> logits), eval mode.
        x: (B, ...) inputs in [0, 1].
        alpha: the mixture's fixed weight (> 1/2 for a certificate).
        sigma: smoothing noise std of h.
        n0, n: selection and estimation samples (n >= :func:`min_estimation_samples`, else UsageError).
        alpha_cert: failure probability of each certificate.
        method: ``smoothing`` (Thm 2) or ``lipschitz`` (Thm 1 with Lip = sqrt(2/pi)/sigma).
        idx: per-example ids that seed the noise (default 0..B-1).

    Returns:
        predict = the class y certified for the mixture, or -1 when the radius would be 0.
    """
    from robcli.certify.bounds import check_params
    from robcli.certify.smoothing import VoteCounter, noise_seed

    a = check_alpha(alpha)
    check_estimation_samples(n, alpha_cert, a)
    check_params(sigma=sigma, alpha=alpha_cert, n0=n0, n=n, mode="certify")
    if method not in ("smoothing", "lipschitz"):
        raise UsageError(f"unknown radius method {method!r}; choose smoothing or lipschitz")
    dev = torch.device(device) if device is not None else x.device
    x = x.to(dev)
    K = num_classes
    if K is None:
        with torch.no_grad():
            K = int(base_h(x[:1]).shape[1])
    ids = list(range(x.shape[0])) if idx is None else [int(i) for i in idx]
    from robcli.errors import NonFiniteOutput
    from robcli.models.finite import check_clean_logits

    check_clean_logits(base_h, x, ids, batch=batch, member="h")
    counter = VoteCounter(base_h, K, dev, batch, channels_last=False)
    try:
        c0 = counter.counts(x, [noise_seed(seed, i, sigma, "mix-select") for i in ids], n0, sigma, ids).cpu().numpy()
        c1 = counter.counts(x, [noise_seed(seed, i, sigma, "mix-estimate") for i in ids], n, sigma, ids).cpu().numpy()
    except NonFiniteOutput as e:
        raise NonFiniteOutput(e.detail, member="h") from None
    top = c0.argmax(1)
    lower, upper = simultaneous_bounds(c1, top, alpha_cert)
    if method == "smoothing":
        r = smoothing_radius(lower, upper, a, sigma)
    else:
        L = rs_lipschitz(sigma)
        r = _bound_lipschitz_radius(lower, upper, a, L)
    pred = np.where(r > 0, top, ABSTAIN)
    return MixtureCertificate(pred, np.where(r > 0, r, 0.0), lower, upper, c1[np.arange(len(top)), top],
                              f"{method}-rs", CERTIFIED_MIXTURE_SMOOTHED_H)


def _bound_lipschitz_radius(lower: np.ndarray, upper: np.ndarray, alpha: float, lip: float) -> np.ndarray:
    """Thm 1 with one Lipschitz constant for all classes and bounds: (a(lo - up) + a - 1) / (2 a L)."""
    if alpha < 0.5:
        return np.zeros_like(lower)
    r = (alpha * (lower - upper) + alpha - 1.0) / (2.0 * alpha * lip)
    return np.maximum(r, 0.0)


def certify_lipschitz_mixture(h: torch.nn.Module, x: torch.Tensor, *, alpha: float, lip, scale_h: float = 1.0,
                              batch: int = 1000) -> MixtureCertificate:
    """Thm 1 for a deterministic robust model h with user-given Lipschitz constants of its probabilities.

    The certified classifier is ``mixture``: the mixture of softmax(scale_h * h), as a mixture run directory
    computes it (for any core model g).

    The constants must bound softmax(scale_h * h(x)) in the norm being certified (the user's claim: robcli
    cannot check it). ``predict`` is y = argmax h(x) where certified, else -1.
    """
    from robcli.models.finite import check_clean_logits

    a = check_alpha(alpha)
    check_clean_logits(h, x, torch.arange(x.shape[0]), batch=batch, member="h")
    probs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            probs.append(torch.softmax(scale_h * h(x[s:s + batch]), 1).double().cpu())
    p = torch.cat(probs).numpy()
    y = p.argmax(1)
    r = lipschitz_radius(p, a, lip, y=y)
    ar = np.arange(len(y))
    q = p.copy()
    q[ar, y] = -np.inf
    return MixtureCertificate(np.where(r > 0, y, ABSTAIN), r, p[ar, y], q.max(1), np.zeros(len(y), np.int64),
                              "lipschitz-given", CERTIFIED_MIXTURE)


def estimate_local_lipschitz(h: torch.nn.Module, x: torch.Tensor, *, eps: float, norm: str = "Linf",
                             steps: int = 20, scale_h: float = 1.0, generator: torch.Generator | None = None,
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """the adaptive-smoothing paper's App. C.3, eq. (12): one-sided local Lipschitz constants of softmax(h) in the eps-ball, by PGD.

    For the predicted class y, PGD maximizes the DECREASE h_y(x) - h_y(x + delta); for every other class i the
    INCREASE h_i(x + delta) - h_i(x) (classes decoupled, as in the paper). Each maximum over eps is the
    class's local constant, taken over EVERY point PGD visits (random start, each iterate, the last one), not
    only its last iterate (sign-gradient steps can step past the maximum). Returns (probs (B, K), y (B,),
    lip (B, K)). A lower estimate of the true constants (PGD may miss the maximum): radii from it are
    ESTIMATES, not certificates.
    """
    from robcli.attacks.pgd import pgd
    from robcli.models.finite import FiniteWatch, Watched, check_clean_logits, raise_if_tripped

    if eps <= 0:
        raise UsageError("the local Lipschitz estimate needs eps > 0")
    check_clean_logits(h, x, torch.arange(x.shape[0]), batch=max(1, x.shape[0]), member="h")
    watch = FiniteWatch()
    h = Watched(h, watch)  # every point PGD visits
    with torch.no_grad():
        p0 = torch.softmax(scale_h * h(x), 1)
    B, K = p0.shape
    y = p0.argmax(1)
    lip = torch.zeros(B, K, dtype=torch.float64)
    for c in range(K):
        cls = torch.full((B,), c, dtype=torch.long, device=x.device)
        sign = torch.where(cls == y, -1.0, 1.0).to(p0.dtype)
        best = [torch.full((B,), -math.inf, dtype=p0.dtype, device=p0.device)]  # max of sign * p_c seen so far

        def obj(logits, _xa, cls=cls, sign=sign, best=best):
            val = sign * torch.softmax(scale_h * logits, 1).gather(1, cls[:, None]).squeeze(1)
            best[0] = torch.maximum(best[0], val.detach())  # every point PGD evaluates lies in the ball
            return val

        xa = pgd(h, x, obj, eps=eps, norm=norm, steps=steps, generator=generator)
        with torch.no_grad():
            last = sign * torch.softmax(scale_h * h(xa), 1)[:, c]
            change = torch.maximum(best[0], last) - sign * p0[:, c]
        lip[:, c] = (change.clamp_min(0) / eps).double().cpu()
    raise_if_tripped({"h": watch}, f"returned non-finite logits (NaN or inf) inside the {norm} eps-balls "
                                   f"(eps {eps:.4g}) of the local Lipschitz estimate: it would be undefined")
    return p0.double().cpu().numpy(), y.cpu().numpy(), lip.numpy()


def certify_local_estimate(h: torch.nn.Module, x: torch.Tensor, *, alpha: float, eps: float, norm: str = "Linf",
                           steps: int = 20, scale_h: float = 1.0, generator: torch.Generator | None = None,
                           ) -> MixtureCertificate:
    """Radius ESTIMATE from App. C.3: eps where Thm 1 with the local constants gives a radius >= eps, else 0.

    The local constants only hold inside the eps-ball, so the only statement they support is "robust at
    eps" (the adaptive-smoothing paper's App. C.3, second condition). Flagged ``estimate=True``.
    """
    a = check_alpha(alpha)
    p, y, lip = estimate_local_lipschitz(h, x, eps=eps, norm=norm, steps=steps, scale_h=scale_h, generator=generator)
    lip = np.maximum(lip, 1e-12)
    r_local = lipschitz_radius(p, a, lip, y=y)
    ok = r_local >= eps
    ar = np.arange(len(y))
    q = p.copy()
    q[ar, y] = -np.inf
    return MixtureCertificate(np.where(ok, y, ABSTAIN), np.where(ok, float(eps), 0.0), p[ar, y], q.max(1),
                              np.zeros(len(y), np.int64), f"lipschitz-local-estimate-{norm}", CERTIFIED_MIXTURE,
                              estimate=True)
