"""Randomized smoothing: bounds (scipy known answers), the engine on a linear classifier with an exact
smoothed classifier, reproducibility across batch/shard/resume, and the CLI's bad-input handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm

from robcli.certify.bounds import (
    ABSTAIN,
    certified_radius,
    check_params,
    cp_lower,
    min_samples,
    predict_from_counts,
)
from robcli.certify.smoothing import COLUMNS, CertifyConfig, noise_seed, run_certify, summarize
from robcli.data.registry import DataInfo, SplitData
from robcli.errors import UsageError

# ----------------------------------------------------------------------------------------------- bounds


def test_cp_lower_matches_scipy_exact_interval():
    # the one-sided (1-alpha) CP lower bound is the lower end of the two-sided (1-2 alpha) exact interval
    for n, alpha in [(10, 0.05), (100, 0.001), (1000, 0.01)]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            want = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
            assert cp_lower(k, n, alpha) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cp_lower_edge_cases():
    assert cp_lower(0, 100, 0.001) == 0.0
    assert cp_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
    v = cp_lower(np.array([[0, 5], [10, 10]]), 10, 0.05)
    assert v.shape == (2, 2) and v[0, 0] == 0 and 0 < v[0, 1] < 0.5 and v[1, 0] == v[1, 1]
    with pytest.raises(ValueError):
        cp_lower(11, 10, 0.05)


def test_min_samples_is_exactly_where_certificates_become_possible():
    for alpha in (0.001, 0.01, 0.05, 1e-6):
        m = min_samples(alpha)
        assert m == math.ceil(math.log2(1 / alpha))
        assert cp_lower(m, m, alpha) >= 0.5
        assert cp_lower(m - 1, m - 1, alpha) < 0.5


def test_min_samples_predict_is_exactly_where_the_binomial_test_can_reject():
    for alpha in (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1e-6):
        m = min_samples(alpha, "predict")
        assert m == math.ceil(math.log2(2 / alpha))
        # all m votes on one class: the test rejects; all m - 1 votes on one class: it cannot
        assert predict_from_counts(np.array([[m, 0]]), alpha)[0][0] == 0
        assert predict_from_counts(np.array([[m - 1, 0]]), alpha)[0][0] == ABSTAIN
        check_params(alpha=alpha, n=m, mode="predict")
        with pytest.raises(UsageError, match=r"predict mode.*log2\(2/alpha\)"):
            check_params(alpha=alpha, n=m - 1, mode="predict")


def test_radius_and_abstain():
    r, ab = certified_radius(np.array([0.3, 0.5, 0.9, norm.cdf(2.0)]), 0.25)
    assert list(ab) == [True, False, False, False]
    assert r[0] == 0 and r[1] == 0
    assert r[2] == pytest.approx(0.25 * norm.ppf(0.9)) and r[3] == pytest.approx(0.5)


def test_predict_from_counts_binomial_test():
    counts = np.array([[60, 40, 0], [0, 990, 10], [50, 50, 0], [3, 0, 0]])
    pred, top, n1, p = predict_from_counts(counts, 0.05)
    assert list(top) == [0, 1, 0, 0] and list(n1) == [60, 990, 50, 3]
    assert p[0] == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert list(pred) == [ABSTAIN, 1, ABSTAIN, ABSTAIN]  # 3 vs 0: p = 0.25 > 0.05


@pytest.mark.parametrize(
    "kw, word",
    [({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
     ({"alpha": 0.001, "n": 9}, "log2"), ({"n0": 0, "n": 10}, "N0")],
)
def test_check_params_refuses(kw, word):
    with pytest.raises(UsageError, match=word):
        check_params(**kw)


def test_n0_may_exceed_n():
    # nothing in CERTIFY ties the selection sample to the estimation sample (issue 9, item 7c)
    check_params(alpha=0.01, n0=5000, n=100, mode="certify")
    check_params(alpha=0.01, n0=5000, n=100, mode="predict")


def test_group_size_bounds_the_round_by_the_larger_sample():
    from robcli.certify.smoothing import NOISE_BLOCK, group_size

    # N0 <= N: as before, the estimation sample fills the batch
    assert group_size(CertifyConfig(N0=100, N=200, alpha=0.01, batch=1000)) == 5
    # N0 > N: the selection round holds group x min(N0, NOISE_BLOCK) inputs, so the group shrinks to keep
    # it at about --batch (grouping does not change results: each example has its own noise generator)
    cfg = CertifyConfig(N0=1000, N=20, alpha=0.01, batch=1000)
    assert group_size(cfg) * min(cfg.N0, NOISE_BLOCK) <= cfg.batch
    # predict mode has no selection sample
    assert group_size(CertifyConfig(N0=1000, N=20, alpha=0.1, batch=1000, mode="predict")) == 50


def test_certify_with_n0_above_n_keeps_its_error_rate():
    # N0 = 400 selection samples, N = 100 estimation samples: the certificates still hold at level alpha
    n, sigma, alpha = 1000, 0.5, 0.05
    model, data, margin, _ = _linear_problem(n)
    cfg = CertifyConfig(sigmas=(sigma,), N0=400, N=100, alpha=alpha, batch=40_000, seed=5)
    df = run_certify(model, data, cfg, device="cpu")
    assert (df["N0"] == 400).all() and (df["counts"].apply(sum) == 100).all()
    true_cls = (margin <= 0).astype(int)
    d = df.sort_values("idx")
    cert = d["predict"].to_numpy() != ABSTAIN
    wrong = cert & ((d["predict"].to_numpy() != true_cls) | (d["radius"].to_numpy() > np.abs(margin) + 1e-12))
    assert cert.sum() > n / 3  # not trivially abstaining
    _assert_few_wrong(int(wrong.sum()), n, alpha, 1e-4)


def test_noise_seed_depends_on_every_key():
    base = noise_seed(0, 5, 0.12, "estimate")
    assert base == noise_seed(0, 5, 0.12, "estimate")
    others = {noise_seed(1, 5, 0.12, "estimate"), noise_seed(0, 6, 0.12, "estimate"),
              noise_seed(0, 5, 0.25, "estimate"), noise_seed(0, 5, 0.12, "select")}
    assert base not in others and len(others) == 4


# ------------------------------------------------------------------ a linear classifier: exact answers


class Linear2(torch.nn.Module):
    """Logits (w.x + b, 0): class 0 iff w.x + b > 0. Smoothed: p_0 = Phi((w.x + b) / (sigma ||w||))."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([s, torch.zeros_like(s)], 1)


def _linear_problem(n: int, d: int = 5, seed: int = 0, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.rand(n, d, generator=g)
    b = -float(x.mean(0) @ w)
    model = Linear2(w, b)
    margin = (x @ w + b) / w.norm()  # signed distance to the hyperplane
    # spread the points along w so the true radii cover [0, ~scale] on both sides
    target = torch.linspace(-scale, scale, n)
    x = x + ((target - margin) / w.norm()).unsqueeze(1) * w.unsqueeze(0)
    margin = (x @ w + b) / w.norm()
    true_cls = (margin <= 0).long()  # class 0 when margin > 0
    info = DataInfo("linear", 2, (d,), ("pos", "neg"), None, None, is_image=False)
    data = SplitData(info, "test", x.float(), true_cls, torch.arange(n))
    return model, data, margin.double().numpy(), true_cls.numpy()


def _wrong_certificates(df, margin, sigma):
    """Count the certificates that are wrong (wrong class, or a radius above the exact one), after checking
    that the certificates are not trivially small and that nA is a plausible binomial draw.

    Returns:
        (wrong, n): wrong certificates among n examples.
    """
    true_r = np.abs(margin)
    true_cls = (margin <= 0).astype(int)
    pA = norm.cdf(true_r / sigma)
    d = df.sort_values("idx")
    cert = d["predict"].to_numpy() != ABSTAIN
    # a certificate is wrong when it names the wrong class or claims more than the exact radius
    wrong = cert & ((d["predict"].to_numpy() != true_cls) | (d["radius"].to_numpy() > true_r + 1e-12))
    # ...and the certificates are not trivially small: where pA is comfortably inside (0.6, 1 - 1e-6),
    # the certified radius is close to the exact one
    inner = (pA > 0.75) & (pA < 1 - 1e-6)
    assert inner.sum() >= 5
    ratio = d["radius"].to_numpy()[inner] / true_r[inner]
    assert np.median(ratio) > 0.8
    # nA is a binomial draw with success probability pA (for the selected class)
    sel = cert & (d["predict"].to_numpy() == true_cls)
    N = d["N"].to_numpy()[sel]
    mean = N * pA[sel]
    sd = np.sqrt(N * pA[sel] * (1 - pA[sel])) + 1e-9
    assert np.all(np.abs(d["nA"].to_numpy()[sel] - mean) <= 6 * sd + 1)
    return int(wrong.sum()), len(d)


def _assert_few_wrong(wrong: int, n: int, alpha: float, tail: float) -> None:
    """Each certificate is wrong with probability <= alpha (Cohen et al., Thm. 1 + Clopper-Pearson), and the
    examples draw independent noise (one generator each), so the number of wrong certificates is
    stochastically dominated by Binomial(n, alpha). Allowing k = binom.ppf(1 - tail, n, alpha) makes the
    probability that a correct certifier fails this check binom.sf(k, n, alpha) <= tail (over the choice
    of seed: with a fixed seed the test is deterministic)."""
    k = binom.ppf(1 - tail, n, alpha)
    assert binom.sf(k, n, alpha) <= tail
    assert wrong <= k, f"{wrong} of {n} certificates exceed the true radius (at most {k:g} allowed, alpha {alpha:g})"


def _check_certificates(df, margin, sigma, alpha, tail=1e-6):
    _assert_few_wrong(*_wrong_certificates(df, margin, sigma), alpha, tail)


def test_certify_linear_never_exceeds_true_radius_fast():
    # 2000 points, alpha 0.05, tail 1e-4: at most k = 138 wrong certificates (6.9%) are allowed; a correct
    # certifier fails with probability binom.sf(138, 2000, 0.05) = 8.6e-5, while one whose certificates fail
    # at 2 alpha fails this check with probability > 0.999999 (the old 80-point check: 16 allowed, 0.2%).
    # About 1 s on 1 thread.
    n, sigma, alpha = 2000, 0.5, 0.05
    model, data, margin, _ = _linear_problem(n)
    cfg = CertifyConfig(sigmas=(sigma,), N0=64, N=2000, alpha=alpha, batch=40_000, seed=3)
    df = run_certify(model, data, cfg, device="cpu")
    assert list(df.columns) == COLUMNS and len(df) == n
    np.testing.assert_allclose(df["pA_lower"], cp_lower(df["nA"], 2000, alpha))
    np.testing.assert_allclose(df["radius_linf"], df["radius"] / math.sqrt(5))
    assert (df["counts"].apply(sum) == 2000).all()
    _check_certificates(df, margin, sigma, alpha, tail=1e-4)


@pytest.mark.slow
def test_certify_linear_never_exceeds_true_radius_thorough():
    # all repetitions pooled into one binomial check: 5 seeds x 2 sigmas x 1000 points = 10,000 certificates
    # at alpha 0.01, tail 1e-6: at most binom.ppf(1 - 1e-6, 10000, 0.01) = 151 wrong (1.5%); a correct
    # certifier fails with probability <= 1e-6.
    wrong = total = 0
    for seed in range(5):
        model, data, margin, _ = _linear_problem(1000, d=10, seed=seed, scale=2.0)
        for sigma in (0.25, 1.0):
            cfg = CertifyConfig(sigmas=(sigma,), N0=100, N=10_000, alpha=0.01, batch=100_000, seed=seed)
            df = run_certify(model, data, cfg, device="cpu")
            w, n = _wrong_certificates(df, margin, sigma)
            wrong, total = wrong + w, total + n
    assert total == 10_000
    _assert_few_wrong(wrong, total, 0.01, 1e-6)


def test_predict_matches_true_smoothed_classifier():
    model, data, margin, true_cls = _linear_problem(60)
    sigma, alpha = 0.5, 0.01
    cfg = CertifyConfig(sigmas=(sigma,), N=1000, alpha=alpha, mode="predict", batch=4000)
    df = run_certify(model, data, cfg, device="cpu")
    pA = norm.cdf(np.abs(margin) / sigma)
    pred = df.sort_values("idx")["predict"].to_numpy()
    clear = pA > 0.7  # the test has power ~1 there at N = 1000
    assert clear.sum() > 20
    assert (pred[clear] == true_cls[clear]).all()
    wrong = (pred != ABSTAIN) & (pred != true_cls)
    assert wrong.sum() <= binom.ppf(1 - 1e-6, len(pred), alpha)
    assert (df["radius"] == 0).all() and df["pA_lower"].isna().all() and (df["mode"] == "predict").all()


def test_points_on_the_boundary_mostly_abstain():
    d = 3
    w = torch.tensor([1.0, 0.0, 0.0])
    model = Linear2(w, -0.5)
    x = torch.full((200, d), 0.5)  # exactly on the boundary: p = 1/2
    info = DataInfo("linear", 2, (d,), ("a", "b"), None, None, is_image=False)
    data = SplitData(info, "test", x, torch.zeros(200, dtype=torch.long), torch.arange(200))
    for mode in ("certify", "predict"):
        cfg = CertifyConfig(sigmas=(0.3,), N0=50, N=500, alpha=0.01, mode=mode, batch=5000)
        df = run_certify(model, data, cfg, device="cpu")
        n_cert = int((df["predict"] != ABSTAIN).sum())
        assert n_cert <= binom.ppf(1 - 1e-6, 200, 0.01), mode


# -------------------------------------------------------------------------- reproducibility


def _digits_setup(n_ex=7):
    from robcli.data.registry import load_split
    from robcli.models import load_model

    data = load_split("digits", "test").select(n_ex=n_ex)
    lm = load_model("tiny_cnn", dataset_info=data.info, seed=1)
    return lm.model, data


def _drop_time(df):
    return df.drop(columns=["time"]).reset_index(drop=True)


def test_same_seed_same_table_and_batch_does_not_matter():
    import pandas.testing as pdt

    model, data = _digits_setup()
    kw = dict(sigmas=(0.12, 0.25), N0=30, N=1500, alpha=0.01, seed=7)
    a = run_certify(model, data, CertifyConfig(batch=1000, **kw), device="cpu")
    b = run_certify(model, data, CertifyConfig(batch=1000, **kw), device="cpu")
    c = run_certify(model, data, CertifyConfig(batch=333, **kw), device="cpu")  # other grouping, same noise
    pdt.assert_frame_equal(_drop_time(a), _drop_time(b))
    pdt.assert_frame_equal(_drop_time(a), _drop_time(c))
    d = run_certify(model, data, CertifyConfig(batch=1000, **{**kw, "seed": 8}), device="cpu")
    assert not _drop_time(a)["counts"].equals(_drop_time(d)["counts"])
    assert len(a) == 14 and list(a["sigma"][:2]) == [0.12, 0.25]


def test_shards_together_equal_unsharded_and_resume_equals_uninterrupted():
    import pandas as pd
    import pandas.testing as pdt

    model, data = _digits_setup(9)
    cfg = CertifyConfig(sigmas=(0.12,), N0=20, N=400, alpha=0.01, batch=1000, seed=2)
    full = run_certify(model, data, cfg, device="cpu")
    parts = [run_certify(model, data, cfg, device="cpu", shard=(i, 3)) for i in range(3)]
    assert sum(len(p) for p in parts) == len(full)
    assert not set(parts[0]["idx"]) & set(parts[1]["idx"])
    joined = pd.concat(parts).sort_values(["idx", "sigma"]).reset_index(drop=True)
    pdt.assert_frame_equal(_drop_time(joined), _drop_time(full))

    saved = {}

    def checkpoint(df):
        saved["df"] = df

    calls = {"n": 0}

    def progress(done, total, desc):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_certify(model, data, cfg, device="cpu", checkpoint=checkpoint, progress=progress,
                    checkpoint_seconds=1e9)
    assert 0 < len(saved["df"]) < len(full)
    resumed = run_certify(model, data, cfg, device="cpu", done=saved["df"])
    pdt.assert_frame_equal(_drop_time(resumed), _drop_time(full))


def test_empty_shard_is_a_typed_table_with_no_rows(tmp_path):
    from robcli.tables.io import read_table, write_table

    model, data = _digits_setup(2)
    cfg = CertifyConfig(sigmas=(0.12,), N0=10, N=100, alpha=0.01, batch=1000, seed=0)
    df = run_certify(model, data, cfg, device="cpu", shard=(2, 3))  # 2 examples, 3 shards: shard 2 is empty
    assert len(df) == 0 and list(df.columns) == COLUMNS
    assert df["idx"].dtype == "int64" and df["radius"].dtype == "float64" and df["correct"].dtype == bool
    write_table(df, tmp_path / "s2.parquet", "certify", config={"shard": "2/3"})
    t = read_table(tmp_path / "s2.parquet", "certify")
    assert len(t.df) == 0 and t.df["predict"].dtype == "int64"


def test_compiled_counter_checks_output_on_the_uncompiled_model(monkeypatch):
    from robcli.certify.smoothing import VoteCounter

    model, data = _digits_setup(3)
    shapes = []

    def fake_compile(m, *a, **k):
        def compiled(x):
            shapes.append(tuple(x.shape))
            return m(x)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    counter = VoteCounter(model, 10, "cpu", 64, compile=True)
    x, _ = data.get(torch.arange(3))
    counter.check_output(x)
    assert shapes == []  # no call (no second compilation) for the 2-example check
    counter.counts(x, [1, 2, 3], 30, 0.12)
    assert shapes and {s[0] for s in shapes} == {64}  # the compiled model only ever sees full batches


def test_summary_numbers():
    import pandas as pd

    df = pd.DataFrame({
        "idx": range(4), "label": [0, 1, 2, 3], "predict": [0, 2, -1, 3], "radius": [0.3, 0.5, 0.0, 0.05],
        "sigma": 0.12, "mode": "certify",
    })
    s = summarize(df, (0.0, 1.0))
    r0 = s[s["radius"] == 0].iloc[0]
    r1 = s[s["radius"] == 0.12].iloc[0]
    assert r0["certified_acc"] == 0.5 and r0["certified_robust_inacc"] == 0.25 and r0["abstain"] == 0.25
    assert r1["certified_acc"] == 0.25 and r1["certified_robust_inacc"] == 0.25


# ------------------------------------------------------------------------------------- CLI


def _ok(r):
    assert r.exit_code == 0, r.output


def test_cli_certify_writes_table_with_provenance(cli, tmp_path):
    from robcli.tables.io import read_table
    from robcli.tables.run import parts_path

    out = tmp_path / "c.parquet"
    r = cli("certify", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "5", "--sigma", "0.12",
            "--sigma", "0.25", "--n0", "20", "--n", "300", "--alpha", "0.01", "--out", out, "--quiet")
    _ok(r)
    t = read_table(out, "certify")
    assert len(t.df) == 10 and set(t.df["sigma"]) == {0.12, 0.25}
    assert t.meta["config"]["N"] == 300 and t.meta["config"]["sigmas"] == [0.12, 0.25]
    assert t.meta["data"]["dataset"] == "digits" and t.meta["seed"] == 0
    assert not parts_path(out).exists()
    # refuses to overwrite; --resume on a complete table is a no-op
    r = cli("certify", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "5", "--out", out)
    assert r.exit_code != 0 and "exists" in r.output
    r = cli("certify", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "5", "--sigma", "0.12",
            "--sigma", "0.25", "--N0", "20", "--N", "300", "--alpha", "0.01", "--out", out, "--resume")
    _ok(r)
    assert "already complete" in r.output


def test_cli_certify_accepts_n0_above_n(cli, tmp_path):
    from robcli.tables.io import read_table

    out = tmp_path / "c.parquet"
    _ok(cli("certify", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "2", "--N0", "500", "--N", "100",
            "--alpha", "0.01", "--out", out, "--quiet"))
    df = read_table(out, "certify").df
    assert (df["N0"] == 500).all() and (df["N"] == 100).all()


def _with_flag(argv, flag, value):
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_cli_shards_merge_and_resume_after_kill(cli, tmp_path, monkeypatch):
    import json

    import pandas.testing as pdt

    import robcli.certify.smoothing as sm
    from robcli.tables.io import read_table
    from robcli.tables.run import parts_path

    common = ["--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "7", "--N0", "10", "--N", "200",
              "--alpha", "0.01", "--quiet", "--seed", "4", "--batch", "200", "--chunk", "2"]
    full = tmp_path / "full.parquet"
    _ok(cli("certify", *common, "--out", full))
    a = read_table(full, "certify").df
    assert read_table(full, "certify").config["device_type"] == "cpu"
    sh = tmp_path / "sh.parquet"
    for i, batch in enumerate(("200", "350")):  # shards on different GPUs often run with different --batch
        _ok(cli("certify", *_with_flag(common, "--batch", batch), "--shard", f"{i}/2", "--out", sh))
        assert not sh.exists()
    # shard 0 took chunks 0 and 2 (examples 0-1, 4-5), shard 1 chunks 1 and 3
    assert sorted(p.name for p in parts_path(sh).glob("chunk-*")) == [f"chunk-00000{k}.parquet" for k in range(4)]
    _ok(cli("merge", parts_path(sh), "--out", sh))
    assert not parts_path(sh).exists()
    pdt.assert_frame_equal(_drop_time(a), _drop_time(read_table(sh, "certify").df))

    real = sm.certify_group
    n = {"calls": 0}

    def dying(*args, **kw):
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(sm, "certify_group", dying)
    out = tmp_path / "r.parquet"
    r = cli("certify", *common, "--out", out)
    parts = parts_path(out)
    assert r.exit_code == 130 and not out.exists() and len(list(parts.glob("chunk-*"))) == 1  # chunk 0 kept
    monkeypatch.setattr(sm, "certify_group", real)
    r = cli("certify", *common, "--out", out)
    assert r.exit_code != 0 and "pass --resume to continue it" in r.output
    r = cli("certify", *[c if c != "4" else "5" for c in common], "--out", out, "--resume")
    assert r.exit_code != 0 and "different configuration (seed: 4 vs 5)" in r.output
    r = cli("certify", *_with_flag(common, "--chunk", "3"), "--out", out, "--resume")
    assert r.exit_code != 0 and "--chunk?" in r.output
    # parts computed on CUDA (faked in the plan) cannot be continued on this CPU
    plan = json.loads((parts / "plan.json").read_text())
    real_plan = (parts / "plan.json").read_text()
    plan["config"]["device_type"] = "cuda"
    (parts / "plan.json").write_text(json.dumps(plan))
    r = cli("certify", *common, "--out", out, "--resume")
    assert r.exit_code != 0 and "computed on cuda, this run is on cpu" in r.output
    (parts / "plan.json").write_text(real_plan)
    # ...while another --batch (results do not depend on it) resumes fine
    _ok(cli("certify", *_with_flag(common, "--batch", "300"), "--out", out, "--resume"))
    assert not parts.exists()
    pdt.assert_frame_equal(_drop_time(read_table(out, "certify").df), _drop_time(a))
    # the same refusal for a complete table
    from robcli.tables.io import write_table

    t = read_table(out, "certify")
    write_table(t.df, out, "certify", config={**t.config, "device_type": "cuda"}, prov={**t.meta, "device": "cuda"})
    r = cli("certify", *common, "--out", out, "--resume")
    assert r.exit_code != 0 and "computed on cuda" in r.output


def test_cli_shard_without_chunks_writes_nothing_and_merge_checks_parts(cli, tmp_path):
    import pandas.testing as pdt

    from robcli.tables.io import read_table
    from robcli.tables.run import parts_path

    common = ["--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "2", "--N0", "10", "--N", "100",
              "--alpha", "0.01", "--seed", "1", "--chunk", "1"]
    full = tmp_path / "full.parquet"
    _ok(cli("certify", *common, "--quiet", "--out", full))
    out = tmp_path / "s.parquet"
    r = cli("certify", *common, "--shard", "2/3", "--out", out)  # 2 chunks, 3 shards: shard 2 has none
    _ok(r)
    assert "wrote the parts of shard 2/3" in r.output and "robcli merge" in r.output
    assert list(parts_path(out).glob("chunk-*")) == []
    _ok(cli("certify", *common, "--quiet", "--shard", "0/3", "--out", out))
    r = cli("merge", parts_path(out), "--out", out)
    assert r.exit_code == 2 and "lacks 1 of 2 chunks" in r.output and not out.exists()
    _ok(cli("certify", *common, "--quiet", "--shard", "1/3", "--out", out))
    _ok(cli("merge", parts_path(out), "--out", out))
    pdt.assert_frame_equal(_drop_time(read_table(out, "certify").df), _drop_time(read_table(full, "certify").df))


@pytest.fixture
def gaussians_run(tmp_path):
    from robcli.models import build, make_card, save_run

    m = build("tiny_mlp", 3, (2,))
    return save_run(tmp_path / "g_run", m, make_card("tiny_mlp", 3, (2,), dataset="gaussians"))


@pytest.mark.parametrize(
    "args, word",
    [
        (["--sigma", "0"], "sigma"),
        (["--sigma", "-0.1"], "sigma"),
        (["--alpha", "0"], "alpha"),
        (["--alpha", "1.5"], "alpha"),
        (["--N0", "0"], "N0"),
        (["--N", "5", "--N0", "5", "--alpha", "0.001"], "log2"),
        (["--mode", "predict", "--N", "10", "--alpha", "0.001"], "log2(2/alpha)"),
        (["--mode", "vote"], "mode"),
        (["--shard", "3/2"], "shard"),
        (["--dataset", "nosuchdata"], "unknown data set"),
        (["--model", "GAUSSIANS_RUN"], "shape"),
        (["--batch", "0"], "batch"),
    ],
)
def test_cli_bad_input_one_line_no_file(cli, tmp_path, gaussians_run, args, word):
    from robcli.tables.run import parts_path

    out = tmp_path / "bad.parquet"
    args = [str(gaussians_run) if a == "GAUSSIANS_RUN" else a for a in args]
    base = {"--model": "tiny_cnn", "--dataset": "digits"}
    for k in list(base):
        if k in args:
            base.pop(k)
    flat = [v for kv in base.items() for v in kv]
    r = cli("certify", *flat, "--n-ex", "2", "--N", "100", *args, "--out", out)
    assert r.exit_code != 0
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robcli: error:"), r.output
    assert word in lines[0]
    assert not out.exists() and not parts_path(out).exists()


@pytest.mark.gpu
def test_certify_on_cuda_matches_exact_linear_answers_and_is_reproducible():
    import pandas.testing as pdt

    assert torch.cuda.is_available(), "run -m gpu on a machine with CUDA"
    model, data, margin, _ = _linear_problem(200)
    cfg = CertifyConfig(sigmas=(0.5,), N0=64, N=20_000, alpha=0.01, batch=20_000, seed=1)
    a = run_certify(model, data, cfg, device="cuda")
    b = run_certify(model, data, CertifyConfig(**{**cfg.__dict__, "batch": 7000}), device="cuda")
    pdt.assert_frame_equal(_drop_time(a), _drop_time(b))
    _check_certificates(a, margin, 0.5, 0.01)


def test_certify_progress_is_per_sigma():
    """Each sigma's progress bar ends full (it stopped at 1/K of its length with K sigmas)."""
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model

    data = load_split("gaussians", "test").select(n_ex=6)
    lm = load_model("tiny_mlp", dataset_info=data.info, seed=0)
    seen: dict[str, tuple[int, int]] = {}
    cfg = CertifyConfig(sigmas=(0.1, 0.2, 0.3), N0=10, N=50, alpha=0.01, batch=100)
    run_certify(lm.model, data, cfg, device="cpu", progress=lambda d, t, desc: seen.__setitem__(desc, (d, t)))
    assert len(seen) == 3 and all(v == (6, 6) for v in seen.values()), seen
