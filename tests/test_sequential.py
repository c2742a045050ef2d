"""The sequential certification engine (robcli.certify.sequential) on models with known answers.

* the analytic linear classifier (p_A = Phi(margin / sigma) exactly): false certificates through the whole
  engine at p = p0 and just below, the engine's decisions distributed exactly as the plan's DP says, radii
  never above the true radius beyond the binomial allowance (both --against modes and the adaptive mode);
* reproducibility independent of the batch size, shards and resume; forward passes full across examples;
* --against label semantics, selection samples never counted; configuration errors; the table schema.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from robcli.certify import anytime as at
from robcli.certify.bounds import ABSTAIN, cp_lower
from robcli.certify.sequential import (
    COLUMNS,
    SequentialConfig,
    check_flags,
    run_sequential,
    sample_summary,
)
from robcli.data.registry import DataInfo, SplitData
from robcli.errors import UsageError


class Linear2(torch.nn.Module):
    """Logits (w.x + b, 0): class 0 iff w.x + b > 0. Smoothed: p_0 = Phi((w.x + b) / (sigma ||w||))."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([s, torch.zeros_like(s)], 1)


def _at_margin(margins, d: int = 3):
    """Examples at signed distances ``margins`` from the hyperplane x_0 = 0.5 (class 0 when positive)."""
    margins = torch.as_tensor(margins, dtype=torch.float32)
    n = margins.numel()
    x = torch.full((n, d), 0.5)
    x[:, 0] += margins
    y = (margins <= 0).long()
    info = DataInfo("linear", 2, (d,), ("pos", "neg"), None, None, is_image=False)
    return Linear2(torch.tensor([1.0] + [0.0] * (d - 1)), -0.5), SplitData(info, "test", x, y, torch.arange(n))


def _binomial_band(k: int, n: int, p: float, tail: float = 1e-6) -> bool:
    return binom.ppf(tail, n, p) <= k <= binom.isf(tail, n, p)


# ------------------------------------------------------------------------------------------ known answers


def _engine_at_p0(offset: float, n: int, cap: int):
    # n examples whose true radius is exactly the target (p = p0) or just inside it; alpha inflated to
    # 0.05. The engine's false-certificate count must not prove a rate above alpha (CP lower bound at 1e-6),
    # and must be a plausible draw from the exact DP of the plan (so the engine runs the plan exactly)
    sigma, r, alpha = 0.25, 0.25, 0.05
    model, data = _at_margin(np.full(n, r + offset * sigma))
    cfg = SequentialConfig(sigmas=(sigma,), radii=(r,), against="label", N=cap, alpha=alpha, batch=50_000, seed=4)
    df = run_sequential(model, data, cfg, device="cpu")
    assert len(df) == n and (df["N0"] == 0).all()
    k = int((df["radius"] >= r).sum())
    assert cp_lower(k, n, 1e-6) <= alpha, f"{k}/{n} false certificates at alpha {alpha}"
    p = float(norm.cdf(r / sigma + offset))
    exact = at.plan_outcome(cfg.plan(sigma), p, 0)
    assert _binomial_band(k, n, exact["certified"]), (k / n, exact)
    assert abs(df["N"].mean() - exact["mean_n"]) < 6 * df["N"].std() / math.sqrt(n)


@pytest.mark.parametrize("offset", [0.0, -0.01])
def test_engine_false_certification_rate_at_p0_linear_model(offset):
    _engine_at_p0(offset, 3000, 500)


@pytest.mark.slow
@pytest.mark.parametrize("offset", [0.0, -0.01])
def test_engine_false_certification_rate_at_p0_linear_model_10k(offset):
    _engine_at_p0(offset, 10_000, 2000)


def test_engine_prediction_mode_at_p0_linear_model():
    # --against prediction: the class comes from N0 fresh selection samples, the test from new ones
    sigma, r, alpha, n = 0.25, 0.25, 0.05, 2000
    model, data = _at_margin(np.full(n, r))
    cfg = SequentialConfig(sigmas=(sigma,), radii=(r,), N0=20, N=500, alpha=alpha, batch=50_000, seed=5)
    df = run_sequential(model, data, cfg, device="cpu")
    k = int((df["radius"] >= r).sum())
    assert cp_lower(k, n, 1e-6) <= alpha
    assert (df["N0"] == 20).all() and (df["n_used"] == 20 + df["N"]).all()
    assert (df["counts"].apply(sum) == df["N"]).all()  # estimation votes only
    # the selection picks class 1 when at most 9 of its 20 votes are class 0 (a 10:10 tie goes to class 0);
    # testing class 1 (p = 1 - p0) then never certifies
    wrong = df["cA"] != 0
    assert _binomial_band(int(wrong.sum()), n, float(binom.cdf(9, 20, norm.cdf(1.0))))
    assert not (df["radius"][wrong] > 0).any()


def _spread(n: int, scale: float = 1.2):
    return _at_margin(np.linspace(-scale, scale, n))


@pytest.mark.parametrize("against", ["prediction", "label"])
def test_certified_radii_never_exceed_the_true_radius(against):
    sigma, alpha, n = 0.5, 0.05, 400
    model, data = _spread(n)
    radii = (0.1, 0.3, 0.5, 0.8)
    cfg = SequentialConfig(sigmas=(sigma,), radii=radii, against=against, N0=32, N=4000, alpha=alpha,
                           batch=20_000, seed=2)
    df = run_sequential(model, data, cfg, device="cpu").sort_values("idx")
    margin = np.linspace(-1.2, 1.2, n)
    true_r, true_cls = np.abs(margin), (margin <= 0).astype(int)
    cert = df["predict"].to_numpy() != ABSTAIN
    wrong = cert & ((df["predict"].to_numpy() != true_cls) | (df["radius"].to_numpy() > true_r + 1e-12))
    assert wrong.sum() <= binom.ppf(1 - 1e-6, n, alpha)
    # power: where the true radius clears a target by a wide margin, it is certified
    p = norm.cdf(true_r / sigma)
    for r in radii[:3]:
        easy = p > norm.cdf(r / sigma) + 0.08
        assert easy.sum() >= 40
        got = df["certified_radii"].apply(lambda c, r=r: r in c).to_numpy()
        assert got[easy].mean() > 0.97, r
    # the radius is the largest certified target, pA_lower its p0, and the decisions say why
    for row in df.itertuples():
        assert row.radius == (max(row.certified_radii) if len(row.certified_radii) else 0.0)
        assert row.pA_lower == pytest.approx(norm.cdf(row.radius / sigma) if row.radius > 0 else 0.0)
        assert [d == "certified" for d in row.decisions] == [t in row.certified_radii for t in radii]
        assert all(d in at.DECISIONS[1:] for d in row.decisions)
    if against == "label":
        assert (df["cA"] == df["label"]).all() and (df["N0"] == 0).all() and (df["n_used"] == df["N"]).all()
        assert df["predict"].isin([ABSTAIN]).sum() + (df["predict"] == df["label"]).sum() == n


def test_adaptive_mode_lower_bound_and_stopping():
    sigma, alpha, n = 0.5, 0.05, 150
    model, data = _spread(n, 1.0)
    cfg = SequentialConfig(sigmas=(sigma,), N0=32, N=5000, alpha=alpha, batch=50_000, seed=3)
    df = run_sequential(model, data, cfg, device="cpu").sort_values("idx")
    margin = np.linspace(-1.0, 1.0, n)
    true_r, true_cls = np.abs(margin), (margin <= 0).astype(int)
    cert = df["predict"].to_numpy() != ABSTAIN
    wrong = cert & ((df["predict"].to_numpy() != true_cls) | (df["radius"].to_numpy() > true_r + 1e-12))
    assert wrong.sum() <= binom.ppf(1 - 1e-6, n, alpha)
    assert set(df["stop"]) <= {"tolerance", "hopeless", "cap"}
    # the radius is a grid radius, and close to the true one where p is moderate (not trivially small)
    step = cfg.step(sigma)
    r = df["radius"].to_numpy()
    assert np.allclose(r / step, np.round(r / step))
    mid = (true_r > 0.2) & (true_r < 0.8)
    assert np.median(r[mid] / true_r[mid]) > 0.85
    # near the boundary (p ~ 1/2) it abstains, and stops before the cap when hopeless
    hopeless = df["stop"].to_numpy() == "hopeless"
    assert (df["radius"].to_numpy()[hopeless] == 0).all() and (df["N"].to_numpy()[hopeless] < 5000).all()
    # a coarser tolerance stops earlier
    coarse = run_sequential(model, data, SequentialConfig(**{**cfg.__dict__, "radius_tol": 0.1}), device="cpu")
    assert coarse["n_used"].mean() < 0.7 * df["n_used"].mean()


# ------------------------------------------------------------------------------------------ reproducibility


def _digits(n_ex=7):
    from robcli.data.registry import load_split
    from robcli.models import load_model

    data = load_split("digits", "test").select(n_ex=n_ex)
    return load_model("tiny_cnn", dataset_info=data.info, seed=1).model, data


def _drop_time(df):
    return df.drop(columns=["time"]).reset_index(drop=True)


KW = dict(sigmas=(0.12, 0.25), radii=(0.1, 0.25), N0=30, N=1000, alpha=0.01, seed=7)


def test_same_table_whatever_the_batch_and_the_pool():
    import pandas.testing as pdt

    model, data = _digits(5)
    a = run_sequential(model, data, SequentialConfig(batch=1000, **KW), device="cpu")
    b = run_sequential(model, data, SequentialConfig(batch=333, **KW), device="cpu")
    c = run_sequential(model, data, SequentialConfig(batch=61, **KW), device="cpu")  # blocks split across passes
    pdt.assert_frame_equal(_drop_time(a), _drop_time(b))
    pdt.assert_frame_equal(_drop_time(a), _drop_time(c))
    d = run_sequential(model, data, SequentialConfig(batch=1000, **{**KW, "seed": 8}), device="cpu")
    assert not _drop_time(a)["counts"].equals(_drop_time(d)["counts"])
    assert list(a.columns) == COLUMNS and len(a) == 10
    # every decision and every stop happens at a fixed point of the example's own stream
    looks = set(at.look_points(1000).tolist()) | {0}
    assert set(a["N"]) <= looks
    assert {v for dn in a["decided_n"] for v in dn} <= looks


def test_shards_together_equal_unsharded_and_resume_equals_uninterrupted():
    import pandas as pd
    import pandas.testing as pdt

    model, data = _digits(7)
    cfg = SequentialConfig(batch=500, **{**KW, "sigmas": (0.25,)})
    full = run_sequential(model, data, cfg, device="cpu")
    parts = [run_sequential(model, data, cfg, device="cpu", shard=(i, 3)) for i in range(3)]
    joined = pd.concat(parts).sort_values(["idx", "sigma"]).reset_index(drop=True)
    pdt.assert_frame_equal(_drop_time(joined), _drop_time(full))

    saved = {}
    calls = {"n": 0}

    def progress(done, total, desc):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sequential(model, data, cfg, device="cpu", checkpoint=lambda df: saved.update(df=df),
                       progress=progress, checkpoint_seconds=1e9)
    assert 0 < len(saved["df"]) < len(full)
    seen = []
    resumed = run_sequential(model, data, cfg, device="cpu", done=saved["df"],
                             progress=lambda d, t, s: seen.append(d))
    pdt.assert_frame_equal(_drop_time(resumed), _drop_time(full))
    assert len(seen) == len(full) - len(saved["df"])  # done rows are skipped, not recomputed


def test_forward_passes_are_full_batches_across_examples(monkeypatch):
    from robcli.certify.smoothing import VoteCounter

    sizes = []
    orig = VoteCounter._forward

    def spy(self, x):
        sizes.append(int(x.shape[0]))
        return orig(self, x)

    monkeypatch.setattr(VoteCounter, "_forward", spy)
    # examples that stop at very different times (p from 1/2 to ~1): the pool refills as they finish
    model, data = _spread(300, 1.0)
    batch = 256
    cfg = SequentialConfig(sigmas=(0.5,), radii=(0.25, 0.5), N0=30, N=2000, alpha=0.01, batch=batch, seed=1)
    df = run_sequential(model, data, cfg, device="cpu")
    assert sum(sizes) == int(df["n_used"].sum())  # every noisy input runs exactly once
    assert df["n_used"].nunique() > 5 and df["n_used"].min() < 200 and df["n_used"].max() > 1500
    partial = [i for i, s in enumerate(sizes) if s != batch]
    assert max(sizes) == batch and sum(sizes[i] for i in partial) < 0.02 * sum(sizes), partial
    # partial passes only at the very end, when the last examples run alone
    assert not partial or partial[0] > 0.9 * len(sizes)


# ------------------------------------------------------------------------------------------ semantics


def test_against_label_tests_the_label_on_the_same_estimation_stream():
    model, data = _spread(120, 1.0)
    data.y[::3] = 1 - data.y[::3]  # every third label is wrong: the label and the prediction part ways
    kw = dict(sigmas=(0.5,), radii=(0.1, 0.25), N0=30, N=3000, alpha=0.01, seed=3, batch=2000)
    pred = run_sequential(model, data, SequentialConfig(**kw), device="cpu")
    lab = run_sequential(model, data, SequentialConfig(against="label", **kw), device="cpu")
    assert (lab["against"] == "label").all() and (pred["against"] == "prediction").all()
    assert (lab["N0"] == 0).all() and (lab["n_used"] == lab["N"]).all() and (lab["cA"] == lab["label"]).all()
    assert (pred["N0"] == 30).all() and (pred["n_used"] == 30 + pred["N"]).all()
    assert (lab["predict"].isin([ABSTAIN]) | (lab["predict"] == lab["label"])).all()
    # where the selection picked the label, both test the same class on the same fresh stream: identical
    # decisions and counts (so no selection vote ever enters the test)
    same = pred["cA"] == pred["label"]
    assert same.sum() >= 20 and (~same).sum() >= 20
    for col in ("N", "nA", "radius", "predict", "decisions", "decided_n", "counts"):
        assert pred[col][same].tolist() == lab[col][same].tolist(), col
    assert (pred["counts"].apply(sum) == pred["N"]).all()
    # a wrong label far from the boundary is never certified against the label, while the prediction
    # (the other class) is: the label table measures certified accuracy, not the smoothed prediction
    margin = np.abs(np.linspace(-1.0, 1.0, 120))
    far_wrong = (np.arange(120) % 3 == 0) & (margin > 0.3)
    assert (lab["radius"][far_wrong] == 0).all()
    assert (pred["radius"][far_wrong] > 0).mean() > 0.9 and not pred["correct"][far_wrong].any()


def test_unreachable_radius_is_decided_without_samples():
    model, data = _digits(3)
    # radius 0.6 is reachable at sigma 0.5 but not at sigma 0.05 (p0 = Phi(12)) with a cap of 2000
    cfg = SequentialConfig(sigmas=(0.05, 0.5), radii=(0.6,), N0=10, N=2000, alpha=0.01, seed=0)
    df = run_sequential(model, data, cfg, device="cpu")
    small = df[df["sigma"] == 0.05]
    assert (small["n_used"] == 0).all() and (small["stop"] == "unreachable").all()
    assert (small["decisions"].apply(list) == [["unreachable"]] * len(small)).all()
    assert (small["predict"] == ABSTAIN).all() and (small["cA"] == -1).all()


def test_table_is_a_valid_certify_table_and_summaries_read_it(tmp_path):
    from robcli.certify.smoothing import summarize
    from robcli.tables.io import read_table, write_table

    model, data = _digits(5)
    cfg = SequentialConfig(sigmas=(0.25,), radii=(0.1, 0.25), N0=20, N=2000, alpha=0.01, seed=0)
    df = run_sequential(model, data, cfg, device="cpu")
    write_table(df, tmp_path / "s.parquet", "certify", config=cfg.as_dict())
    t = read_table(tmp_path / "s.parquet", "certify")
    assert list(t.df["certified_radii"].apply(list)) == list(df["certified_radii"])
    assert t.config["sequential"] is True and t.config["radii"] == [0.1, 0.25]
    s = summarize(t.df, radii=(0.1, 0.25))
    for r in (0.1, 0.25):
        want = ((df["predict"] == df["label"]) & (df["radius"] >= r)).mean()
        assert s[s["radius"] == r]["certified_acc"].iloc[0] == pytest.approx(want)
    ss = sample_summary(df)
    assert ss["mean_n_used"].iloc[0] == pytest.approx(df["n_used"].mean())
    # an empty shard is a typed table with no rows
    empty = run_sequential(model, data, cfg, device="cpu", shard=(9, 10))
    assert len(empty) == 0 and list(empty.columns) == COLUMNS and empty["n_used"].dtype == "int64"
    write_table(empty, tmp_path / "e.parquet", "certify", config={"shard": "9/10"})
    assert len(read_table(tmp_path / "e.parquet", "certify").df) == 0


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("kw, word", [
    ({"mode": "predict"}, "--mode predict has no sequential"),
    ({"radii": (0.0,)}, "--radius 0 must be > 0"),
    ({"radii": (-0.5,)}, "--radius -0.5 must be > 0"),
    ({"radii": (0.25, 0.25)}, "repeat"),
    ({"radius_tol": 0.0}, "--radius-tol 0 must be > 0"),
    ({"radius_tol": -1.0}, "--radius-tol -1 must be > 0"),
    ({"radii": (0.25,), "radius_tol": 0.01}, "adaptive mode's tolerance"),
    ({"against": "truth"}, "--against 'truth'"),
    ({"radii": (5.0,)}, "out of reach at every --sigma"),
    ({"N": 5}, "too small for --alpha"),
    ({"N0": 0}, "--N0 0"),
    ({"alpha": 1.5}, "--alpha"),
    ({"sigmas": (0.0,)}, "--sigma"),
    ({"batch": 0}, "--batch"),
])
def test_bad_configurations_are_one_line_usage_errors(kw, word):
    base = dict(sigmas=(0.25,), N=1000, alpha=0.001)
    with pytest.raises(UsageError) as e:
        SequentialConfig(**{**base, **kw})
    assert word in str(e.value) and "\n" not in str(e.value)


def test_flags_that_need_sequential():
    for kw, word in [({"radii": (0.25,)}, "--radius needs --sequential"),
                     ({"radius_tol": 0.01}, "--radius-tol needs --sequential"),
                     ({"against": "label"}, "--against label needs --sequential")]:
        with pytest.raises(UsageError, match=word):
            check_flags(sequential=False, **kw)
    check_flags(sequential=False, against="prediction")
    check_flags(sequential=True, radii=(0.25,), against="label")


def test_config_normalizes_and_records():
    cfg = SequentialConfig(sigmas=(0.25,), radii=(0.5, 0.25), against=" Label ", N=1000)
    assert cfg.radii == (0.25, 0.5) and cfg.against == "label"
    d = cfg.as_dict()
    assert d["sequential"] is True and d["radii"] == [0.25, 0.5] and d["N"] == 1000
    ad = SequentialConfig(sigmas=(0.25, 0.5), N=1000)
    assert ad.adaptive and ad.tol(0.5) == pytest.approx(0.01) and ad.step(0.25) == pytest.approx(0.00125)


@pytest.mark.gpu
def test_sequential_on_cuda_is_reproducible_and_sound():
    import pandas.testing as pdt

    assert torch.cuda.is_available(), "run -m gpu on a machine with CUDA"
    sigma, r, alpha, n = 0.25, 0.25, 0.05, 4000
    model, data = _at_margin(np.full(n, r))
    cfg = SequentialConfig(sigmas=(sigma,), radii=(r,), against="label", N=2000, alpha=alpha, batch=65_536, seed=1)
    a = run_sequential(model, data, cfg, device="cuda")
    b = run_sequential(model, data, SequentialConfig(**{**cfg.__dict__, "batch": 10_000}), device="cuda")
    pdt.assert_frame_equal(_drop_time(a), _drop_time(b))
    k = int((a["radius"] >= r).sum())
    assert cp_lower(k, n, 1e-6) <= alpha
