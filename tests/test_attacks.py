"""Attacks library: known answers on linear classifiers, grid vs APGD on a thin sliver, sweep semantics,
verification of attack outputs, determinism and resume equality."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from robcli.attacks.engine import AttackConfig, AttackInternalError, run_attack, summarize, verify_points
from robcli.data.registry import DataInfo, SplitData
from robcli.errors import UsageError
from robcli.tables.io import read_table

D, K = 5, 4


def _linear(seed: int = 0, k: int = K) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(D, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, D, generator=g))
        # boundaries pass near the centre of the box, so radii spread over [0, ~0.15]
        lin.bias.copy_(-lin.weight @ torch.full((D,), 0.5) + 0.05 * torch.randn(k, generator=g))
    return lin.eval()


def _split(x: torch.Tensor, y: torch.Tensor | None = None, name: str = "lin", k: int | None = None) -> SplitData:
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    k = k or (K if name == "lin" else 2)
    info = DataInfo(name, k, tuple(x.shape[1:]), tuple(str(i) for i in range(k)), is_image=False)
    y = y if y is not None else torch.zeros(n, dtype=torch.long)
    assert d >= 1
    return SplitData(info, "test", x.float(), y, torch.arange(n))


def _true_radius(model: nn.Linear, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Exact minimal perturbation (no box) that changes a linear classifier's prediction:
    min_j (z_i - z_j) / ||w_i - w_j||_dual, dual of Linf = L1, dual of L2 = L2."""
    w, b = model.weight.detach().double(), model.bias.detach().double()
    z = x.double() @ w.T + b
    i = z.argmax(1)
    r = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for j in range(w.shape[0]):
        dw = w[i] - w[j]
        dn = dw.abs().sum(1) if norm == "Linf" else dw.norm(dim=1)
        rj = (z.gather(1, i[:, None]).squeeze(1) - z[:, j]) / dn
        r = torch.where(i == j, r, torch.minimum(r, rj))
    return r


@pytest.fixture(scope="module")
def lin_points():
    g = torch.Generator().manual_seed(1)
    x = 0.35 + 0.3 * torch.rand(100, D, generator=g)  # far from the box faces: clipping cannot bind for eps <= 0.15
    return x


@pytest.mark.parametrize("norm,eps", [("Linf", 0.02), ("L2", 0.04)])
@pytest.mark.parametrize("attack,k", [("apgd-ce", 2), ("pgd", 2), ("apgd-conf", 2), ("apgd-t", 4), ("fab-t", 4)])
def test_known_answer_linear(lin_points, norm, eps, attack, k):
    """Untargeted objectives are exact on a 2-class linear model (CE, margin and confidence are monotone in
    the one margin). With more classes, ascent on a convex objective can stop at a vertex that does not flip
    the prediction, so multi-class known answers use the targeted attacks (one linear objective per target)."""
    model = _linear(k=k)
    r = _true_radius(model, lin_points, norm)
    steps = {"pgd": 40, "fab-t": 10}.get(attack, 30)
    cfg = AttackConfig(attack=attack, eps=(eps,), norm=norm, steps=steps, batch=64, seed=3)
    df = run_attack(model, _split(lin_points, k=k), cfg, device="cpu")
    assert len(df) == len(lin_points)
    must_find = (r < eps * (1 - 1e-2)).numpy()
    cannot = (r > eps * (1 + 1e-5) + 1e-6).numpy()
    assert must_find.sum() > 10 and cannot.sum() > 10  # both cases are exercised
    robust = df["robust"].to_numpy()
    missed = np.nonzero(must_find & robust)[0]
    assert missed.size == 0, f"{attack} missed points with radius {r[missed].tolist()} < eps {eps}"
    assert robust[cannot].all(), "an adversarial example was claimed where none exists inside the ball"
    assert (df["pert_norm"] <= eps * (1 + 1e-6) + 1e-7).all()
    nonrob = ~robust
    # the perturbation found can never be smaller than the exact minimal one
    assert (df["pert_norm"].to_numpy()[nonrob] >= r.numpy()[nonrob] * (1 - 1e-4) - 1e-6).all()
    assert (df.loc[nonrob, "adv_margin"] <= 0).all() and (df.loc[~nonrob, "adv_pred"] == df.loc[~nonrob, "clean_pred"]).all()


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-dlr", "apgd-conf", "pgd"])
def test_multiclass_untargeted_never_claims_outside_ball(lin_points, attack):
    model = _linear(k=K)
    r = _true_radius(model, lin_points, "Linf")
    eps = 0.02
    df = run_attack(model, _split(lin_points), AttackConfig(attack=attack, eps=(eps,), steps=20), device="cpu")
    robust = df["robust"].to_numpy()
    assert robust[(r > eps * (1 + 1e-5) + 1e-6).numpy()].all()
    assert (~robust).sum() > 0.5 * (r < eps).sum().item()  # and it does find most of them
    assert (df["pert_norm"] <= eps * (1 + 1e-6) + 1e-7).all()


class _Sliver(nn.Module):
    """2-D, 2 classes: class 1 only inside a band |x_0 - 0.62| < 0.001 where its gradient is nonzero."""

    def forward(self, x):
        z1 = 2000.0 * torch.relu(0.001 - (x[:, 0] - 0.62).abs()) - 1.0
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_grid_finds_thin_sliver_apgd_misses():
    x = torch.tensor([[0.5, 0.5], [0.52, 0.3], [0.55, 0.7], [0.48, 0.45]])
    data = _split(x, name="sliver")
    apgd = run_attack(_Sliver(), data, AttackConfig(attack="apgd-ce", eps=(0.15,), steps=20, batch=8), device="cpu")
    grid = run_attack(_Sliver(), data, AttackConfig(attack="grid", eps=(0.15,), steps=20, grid_points=401, batch=8),
                      device="cpu")
    assert apgd["robust"].all()  # gradient is zero outside the sliver: APGD cannot find it
    assert not grid["robust"].any()
    assert (grid["adv_pred"] == 1).all() and (grid["pert_norm"] <= 0.15 + 1e-7).all()


@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 0.07)])
def test_grid_matches_exact_answer_on_2d_linear(norm, eps):
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 0.2]]))
        lin.bias.copy_(torch.tensor([-0.6, 0.45]))
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(200, 2, generator=g)
    w = lin.weight.detach().double()
    z = x.double() @ w.T + lin.bias.detach().double()
    dw = (w[0] - w[1]).abs().sum() if norm == "Linf" else (w[0] - w[1]).norm()
    r = (z[:, 0] - z[:, 1]).abs() / dw
    df = run_attack(lin.eval(), _split(x, name="two"), AttackConfig(attack="grid", eps=(eps,), norm=norm, steps=5,
                                                                       batch=50), device="cpu")
    rob = df["robust"].to_numpy()
    assert not rob[(r < eps * (1 - 0.03)).numpy()].any()
    assert rob[(r > eps * (1 + 1e-5)).numpy()].all()


def test_grid_refuses_high_dimensional_inputs(lin_points):
    with pytest.raises(UsageError, match="dimension <= 3"):
        run_attack(_linear(), _split(lin_points), AttackConfig(attack="grid", eps=(0.1,)), device="cpu")


def test_eps_sweep_monotone_and_reuses(lin_points):
    model = _linear()
    eps = (0.0, 0.02, 0.05, 0.1)
    df = run_attack(model, _split(lin_points), AttackConfig(attack="apgd-ce", eps=eps[::-1], steps=20, batch=50),
                    device="cpu")
    assert sorted(df["eps"].unique()) == list(eps)
    assert df.loc[df["eps"] == 0, "robust"].all() and (df.loc[df["eps"] == 0, "pert_norm"] == 0).all()
    for _, g in df.groupby("idx"):
        g = g.sort_values("eps")
        rob = g["robust"].to_numpy()
        assert (np.diff(rob.astype(int)) <= 0).all()  # once non-robust, non-robust at every larger eps
        first = g.loc[~g["robust"], "eps"].min() if (~g["robust"]).any() else None
        if first is not None:
            later = g[g["eps"] > first]
            assert later["reused"].all() and (later["found_eps"] == first).all()
            base = g[g["eps"] == first].iloc[0]
            assert (later["adv_pred"] == base["adv_pred"]).all() and (later["pert_norm"] == base["pert_norm"]).all()
    s = summarize(df)
    assert (np.diff(s.sort_values("eps")["robust_acc"].to_numpy()) <= 0).all()


def test_sweep_attacks_only_remaining_examples(lin_points, monkeypatch):
    import dataclasses

    import robcli.attacks.engine as eng

    sizes = []
    entry = eng.ATTACK_REGISTRY.get("pgd")
    orig = entry.obj.runner

    def spy(cfg, fwd, x, y, eps, seed, k, notes):
        sizes.append((eps, x.shape[0]))
        return orig(cfg, fwd, x, y, eps, seed, k, notes)

    spied = dataclasses.replace(entry, obj=dataclasses.replace(entry.obj, runner=spy))
    monkeypatch.setitem(eng.ATTACK_REGISTRY._entries, "pgd", spied)
    df = run_attack(_linear(), _split(lin_points), AttackConfig(attack="pgd", eps=(0.03, 0.1), steps=10, batch=200),
                    device="cpu")
    n_small = int((~df[df["eps"] == 0.03]["robust"]).sum())
    assert sizes == [(0.03, 100), (0.1, 100 - n_small)] and n_small > 0


def test_robust_inaccuracy_uses_clean_prediction(lin_points):
    model = _linear()
    with torch.no_grad():
        pred = model(lin_points).argmax(1)
    wrong = (pred + 1) % K  # every label is wrong: robust accuracy must be 0, robust inaccuracy = robust share
    df = run_attack(model, _split(lin_points, wrong), AttackConfig(attack="pgd", eps=(0.02,), steps=20), device="cpu")
    s = summarize(df).iloc[0]
    assert s["nat_acc"] == 0 and s["robust_acc"] == 0
    assert s["robust_inacc"] == pytest.approx(df["robust"].mean()) and s["robust_inacc"] > 0
    assert (df["clean_pred"] == pred.numpy()).all()


@pytest.mark.parametrize("attack", ["apgd-ce", "pgd"])
def test_deterministic_and_resume_equals_uninterrupted(lin_points, attack, tmp_path):
    from robcli.tables.run import TableRun

    model = _linear()
    cfg = AttackConfig(attack=attack, eps=(0.02, 0.05), steps=5, batch=40, seed=7)
    full = run_attack(model, _split(lin_points), cfg, device="cpu")
    again = run_attack(model, _split(lin_points), cfg, device="cpu")
    pd.testing.assert_frame_equal(full, again)

    calls = {"n": 0}

    def killer(done, total, desc):
        calls["n"] += 1
        if calls["n"] == 3:  # the first radius of the second batch (chunk)
            raise KeyboardInterrupt

    data = _split(lin_points)
    out = tmp_path / "a.parquet"

    def table_run(resume):
        return TableRun(out, "attack", cfg.as_dict(), ids=data.idx.tolist(), chunk_size=cfg.batch, resume=resume,
                        row_keys=("eps",))

    torch.manual_seed(123)  # a different global RNG state must not matter
    with pytest.raises(KeyboardInterrupt):
        run_attack(model, data, cfg, device="cpu", run=table_run(False), progress=killer)
    run = table_run(True)
    assert run.done == {0} and not out.exists()
    resumed = run_attack(model, _split(lin_points), cfg, device="cpu", run=run)
    pd.testing.assert_frame_equal(full, resumed)
    pd.testing.assert_frame_equal(full, read_table(out, "attack").df)


def test_global_rng_untouched_by_pyautoattack(lin_points):
    model = _linear()  # nn.Linear's own init draws from the global RNG: build it first
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    run_attack(model, _split(lin_points[:20]), AttackConfig(attack="apgd-ce", eps=(0.05,), steps=5), device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_verify_points_rejects_and_repairs():
    x = torch.full((2, 3), 0.5)
    with pytest.raises(AttackInternalError, match="perturbation of Linf norm 0.2"):
        verify_points(x + 0.2, x, 0.1, "Linf", "t")
    with pytest.raises(AttackInternalError, match=r"\[0,1\]"):
        verify_points(x + 0.6, x, 1.0, "Linf", "t")
    with pytest.raises(AttackInternalError, match="non-finite"):
        verify_points(x * float("nan"), x, 0.1, "Linf", "t")
    d = torch.tensor([[0.06, 0.08, 0.0], [0.0, 0.0, 0.0]]) * (1 + 5e-6)  # L2 norm 0.1 * (1 + 5e-6): rounding-size excess
    fixed = verify_points(x + d, x, 0.1, "L2", "t")
    assert float((fixed - x).double().norm(dim=1).max()) <= 0.1 * (1 + 1e-6) + 1e-7


def test_square_needs_images(lin_points):
    with pytest.raises(UsageError, match="image inputs"):
        run_attack(_linear(), _split(lin_points), AttackConfig(attack="square", eps=(0.1,)), device="cpu")


def test_square_on_images_never_leaves_ball():
    g = torch.Generator().manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    x = torch.rand(20, 1, 8, 8, generator=g)
    info = DataInfo("img", 4, (1, 8, 8), tuple("abcd"))
    data = SplitData(info, "test", x, torch.zeros(20, dtype=torch.long), torch.arange(20))
    for norm, eps in (("Linf", 0.1), ("L2", 0.3)):
        df = run_attack(lin.eval(), data, AttackConfig(attack="square", eps=(eps,), norm=norm, steps=100), device="cpu")
        assert (df["pert_norm"] <= eps * (1 + 1e-6) + 1e-7).all() and (~df["robust"]).any()


def test_too_few_classes_for_targeted_dlr():
    x = torch.rand(4, 2)
    with pytest.raises(UsageError, match="at least 4 classes"):
        run_attack(nn.Linear(2, 2), _split(x, name="two"), AttackConfig(attack="apgd-t", eps=(0.1,)), device="cpu")


@pytest.mark.parametrize("kw,msg", [
    ({"eps": ("-1",)}, "negative"), ({"eps": ("nan",)}, "finite"), ({"eps": ("abc",)}, "not a number"),
    ({"eps": ("2",)}, "> 1"), ({"attack": "fgsm"}, "unknown attack"), ({"norm": "L3"}, "unknown norm"),
    ({"attack": "autoattack", "steps": 10}, "--version custom"), ({"attack": "autoattack", "version": "custom"},
                                                                   "--aa-attacks"),
    ({"steps": 0}, "positive"), ({"eps": ("0.1", "1/10")}, "repeat"), ({"grid_points": 10}, "grid only"),
])
def test_config_validation(kw, msg):
    with pytest.raises(UsageError, match=msg):
        AttackConfig(**kw)


def test_config_sorts_eps_and_resolves_defaults():
    c = AttackConfig(attack="APGD-CE", eps=("8/255", "2/255"))
    assert c.eps == (2 / 255, 8 / 255) and c.steps == 100 and c.restarts == 1 and c.attack == "apgd-ce"
    assert AttackConfig(attack="pgd").steps == 40 and AttackConfig(attack="square").steps == 5000
    assert AttackConfig(attack="autoattack", version="plus").restarts == 5
