"""robcli compose: the soundness rule on hand-built tables (answers computed by hand), cascades,
softmax response, export, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robcli.tables.io import read_table, write_table

E = 2 / 255
DATA = {"dataset": "gaussians", "split": "test"}


def rows(label, pred, robust, eps, attack="apgd-ce", **extra):
    n = len(label)
    pred = np.asarray(pred)
    robust = np.asarray(robust, bool)
    df = pd.DataFrame({
        "idx": np.arange(n), "label": label, "eps": eps, "norm": "Linf", "attack": attack,
        "clean_pred": pred, "adv_pred": np.where(robust, pred, (pred + 1) % 3),
        "correct": pred == np.asarray(label), "robust": robust, "clean_margin": 1.0,
        "adv_margin": np.where(robust, 0.5, -0.5), "pert_norm": eps,
    })
    for k, v in extra.items():
        df[k] = v
    return df


def write(path, frames, data=DATA, model="runs/x", sha=None):
    write_table(pd.concat(frames, ignore_index=True), path, "attack",
                prov={"data": data, "models": [{"path": model, "sha256": sha}]})
    return str(path)


LABEL = [0, 0, 0, 0, 0, 0, 0, 0]
#            0  1  2  3  4  5  6  7
R_PRED = [0, 0, 0, 1, 1, 0, 2, 0]
R_EPS = [1, 1, 1, 1, 0, 0, 0, 0]
R_2EPS = [1, 0, 0, 1, 0, 0, 0, 0]
C_PRED = [1, 0, 0, 0, 0, 0, 2, 1]
C_EPS = [0, 1, 0, 1, 1, 1, 1, 0]


@pytest.fixture
def tables(tmp_path):
    r = write(tmp_path / "r.parquet", [rows(LABEL, R_PRED, R_EPS, E), rows(LABEL, R_PRED, R_2EPS, 2 * E)], model="runs/robust")
    c = write(tmp_path / "c.parquet", [rows(LABEL, C_PRED, C_EPS, E)], model="runs/core")
    return r, c


def test_soundness_rule_known_answer(cli, tables, tmp_path):
    r, c = tables
    out = tmp_path / "comp.parquet"
    res = cli("compose", "--robust", r, "--core", c, "--eps", "2/255", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out, "compose").df.iloc[0]
    # by hand (see the table above): H picks R where R is robust at eps (0-3), else C
    assert row["nat_acc"] == pytest.approx(5 / 8)            # 0,1,2,4,5
    assert row["robust_acc"] == pytest.approx(3 / 8)         # 0 (robustly selected, R right), 1 and 5 (R right, C robust+right)
    assert row["robust_selection"] == pytest.approx(2 / 8)   # 0, 3 robust at 2*eps
    assert row["selected_robust_acc"] == pytest.approx(1 / 2)
    assert row["robust_inaccuracy"] == pytest.approx(2 / 8)  # 3 (R robustly wrong), 6 (R and C both constant on 2)
    assert row["core_robust_acc"] == pytest.approx(4 / 8)
    assert row["delta_robust_acc"] == pytest.approx(-1 / 8)
    assert row["delta_nat_acc"] == pytest.approx(0.0)
    assert row["selector"] == "ri-empirical" and math.isnan(row["threshold"])
    assert row["robust_models"] == "runs/robust" and row["core_model"] == "runs/core"


def test_example_4_is_not_counted_even_though_core_is_robust(cli, tables, tmp_path):
    """R is wrong at x and non-robust: the selector may still select at some x' in the ball, where R(x') = R(x)."""
    from robcli.analysis.metrics import attack_view
    from robcli.compose.evaluate import evaluate_composition
    from robcli.compose.selectors import ri_member

    r, c = tables
    rv, rv2, cv = attack_view(read_table(r), E), attack_view(read_table(r), 2 * E), attack_view(read_table(c), E)
    _, per = evaluate_composition([ri_member(rv, rv2)], cv)
    assert per["robust_accurate"].tolist() == [True, True, False, False, False, True, False, False]
    assert per["routed"].tolist() == [0, 0, 0, 0, -1, -1, -1, -1]


def test_paper_eps_check_is_less_conservative(cli, tables, tmp_path):
    r, c = tables
    out = tmp_path / "comp.parquet"
    assert cli("compose", "--robust", r, "--core", c, "--eps", "2/255", "--selection-check", "eps", "--out", out).exit_code == 0
    row = read_table(out).df.iloc[0]
    assert row["robust_selection"] == pytest.approx(4 / 8)   # robust at eps: 0-3
    assert row["robust_acc"] == pytest.approx(4 / 8)         # 0, 1, 2 selected and right; 5 via core


def test_cascade_known_answer(tmp_path, cli):
    lab = [0, 0, 0, 0]
    # member 1 robustly selects 0 (right) and 1 (wrong); member 2 robustly selects 2, 3 (right)
    r1 = write(tmp_path / "r1.parquet", [rows(lab, [0, 1, 0, 2], [1, 1, 0, 0], E), rows(lab, [0, 1, 0, 2], [1, 1, 0, 0], 2 * E)])
    r2 = write(tmp_path / "r2.parquet", [rows(lab, [0, 0, 0, 0], [1, 1, 1, 1], E), rows(lab, [0, 0, 0, 0], [1, 1, 1, 1], 2 * E)])
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0, 0, 0], [1, 1, 1, 1], E)])
    out = tmp_path / "o.parquet"
    res = cli("compose", "-r", r1, "-r", r2, "--core", c, "--eps", "2/255", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out).df.iloc[0]
    # 0: r1 ok. 1: r1 robustly wrong. 2: r1 may select (R1 right) then r2 robustly selects, right.
    # 3: r1 would answer 2 wherever it selects -> not robust-accurate.
    assert row["robust_acc"] == pytest.approx(2 / 4)
    assert row["nat_acc"] == pytest.approx(3 / 4)       # routed at x: 0 r1 (right), 1 r1 (wrong), 2 and 3 r2 (right)
    assert row["robust_selection"] == pytest.approx(1.0)
    assert row["n_robust_models"] == 2


def test_softmax_response_from_table_confidences(tmp_path, cli):
    lab = [0, 0, 0, 0]
    pred = [0, 0, 1, 0]
    frames = [rows(lab, pred, [1, 1, 1, 0], E),
              rows(lab, pred, [1, 1, 1, 0], 2 * E, attack="apgd-conf",
                   clean_conf=[0.9, 0.9, 0.95, 0.6], adv_conf=[0.85, 0.5, 0.9, 0.3])]
    r = write(tmp_path / "r.parquet", frames)
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0, 0, 0], [0, 1, 0, 0], E)])
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.8", "--sweep", "--out", out)
    assert res.exit_code == 0, res.output
    df = read_table(out).df
    assert len(df) == 21  # 0.8 is on the sweep grid
    row = df[np.isclose(df["threshold"], 0.8)].iloc[0]
    # tau=.8: selected at x: 0,1,2; robustly selected: 0 (.85), 2 (.9); ok: 0 (R robust+right)
    # ex1: not robustly selected, R ok, C robust+right -> counts; ex2: robustly selected, R wrong; ex3: R not ok
    assert row["robust_selection"] == pytest.approx(2 / 4)
    assert row["robust_acc"] == pytest.approx(2 / 4)
    assert row["selected_robust_acc"] == pytest.approx(1 / 2)
    assert row["nat_acc"] == pytest.approx(3 / 4)
    t0 = df[np.isclose(df["threshold"], 0.0)].iloc[0]
    assert t0["robust_selection"] == pytest.approx(1.0)
    t1 = df[np.isclose(df["threshold"], 1.0)].iloc[0]
    assert t1["nat_acc"] == pytest.approx(t1["core_nat_acc"])


def test_flipped_apgd_conf_point_caps_min_confidence_at_half():
    """adv_margin < 0: the other class's confidence at x' is not the ball's lowest max-softmax (<= 0.5)."""
    from robcli.compose.confidence import adv_max_softmax, min_conf_bound, min_conf_over_rows

    r = pd.DataFrame({"idx": [0, 1, 2], "adv_conf_other": [0.04, 0.9, 0.04], "adv_margin": [3.0, -1.0, 3.0],
                      "robust": [True, False, True]})
    assert adv_max_softmax(r)[1] == pytest.approx(0.9)  # the value at x' (the other class on top)
    v = min_conf_bound(r)
    assert v[0] == pytest.approx(0.04 * math.exp(3.0)) and v[1] == pytest.approx(0.5)
    assert min_conf_bound(pd.DataFrame({"adv_conf": [0.3, 0.9], "adv_margin": [-1.0, -1.0]})).tolist() == [0.3, 0.5]
    # a second attack row at 2*eps that flipped example 0 (no confidences recorded) caps it too
    more = pd.concat([r, pd.DataFrame({"idx": [0], "adv_conf_other": [np.nan], "adv_margin": [-0.2], "robust": [False]})])
    assert min_conf_over_rows(more, pd.Index([0, 1, 2])).tolist() == pytest.approx([0.5, 0.5, 0.04 * math.exp(3.0)])


def test_softmax_response_flipped_points_are_not_robustly_selected(tmp_path, cli):
    lab, pred = [0, 0, 0], [0, 0, 0]
    conf = rows(lab, pred, [1, 0, 1], 2 * E, attack="apgd-conf", clean_conf=[0.9, 0.9, 0.9],
                adv_conf_other=[0.04, 0.9, 0.04])
    conf["adv_margin"] = [3.0, -1.0, 3.0]
    ce2 = rows(lab, pred, [0, 0, 1], 2 * E)  # apgd-ce at 2*eps flips example 0
    r = write(tmp_path / "r.parquet", [rows(lab, pred, [1, 1, 1], E), conf, ce2])
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0, 0], [1, 1, 1], E)])
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.6", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out).df.iloc[0]
    # before the cap: 0 (0.80 from apgd-conf) and 1 (0.9 of the other class) counted as robustly selected
    assert row["robust_selection"] == pytest.approx(1 / 3)
    assert row["selected_robust_acc"] == pytest.approx(1.0)


def test_eps_and_2eps_parts_of_different_models_are_refused(tmp_path, cli):
    c = write(tmp_path / "c.parquet", [rows(LABEL, C_PRED, C_EPS, E)], sha="c" * 64)
    a = write(tmp_path / "a.parquet", [rows(LABEL, R_PRED, R_EPS, E)], sha="a" * 64)
    b = write(tmp_path / "b.parquet", [rows(LABEL, R_PRED, R_2EPS, 2 * E)], sha="b" * 64)
    same = write(tmp_path / "b2.parquet", [rows(LABEL, R_PRED, R_2EPS, 2 * E)], sha="a" * 64)
    other_pred = write(tmp_path / "p.parquet", [rows(LABEL, C_PRED, R_2EPS, 2 * E)], sha="a" * 64)
    other_path = write(tmp_path / "q.parquet", [rows(LABEL, R_PRED, R_2EPS, 2 * E)], model="runs/other")
    no_sha = write(tmp_path / "n.parquet", [rows(LABEL, R_PRED, R_EPS, E)], model="runs/x")
    out = tmp_path / "o.parquet"
    assert cli("compose", "-r", f"{a},{same}", "-c", c, "--eps", "2/255", "-q").exit_code == 0
    for spec, needle in [(f"{a},{b}", "different models (weights sha256 differ)"),
                         (f"{a},{other_pred}", "disagree on the clean prediction of 4 shared example(s) (e.g. idx 0)"),
                         (f"{no_sha},{other_path}", "different models (runs/other vs runs/x)")]:
        res = cli("compose", "-r", spec, "-c", c, "--eps", "2/255", "--out", out)
        assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
        assert not out.exists()
    res = cli("compose", "-r", f"{a},{same}", "-c", f"{c},{b}", "--eps", "2/255", "--out", out)  # core side too
    assert res.exit_code == 2 and "different models" in res.stderr


@pytest.fixture
def bad(tmp_path, tables):
    r, c = tables
    only_eps = write(tmp_path / "r_eps.parquet", [rows(LABEL, R_PRED, R_EPS, E)])
    other_data = write(tmp_path / "c_dig.parquet", [rows(LABEL, C_PRED, C_EPS, E)], data={"dataset": "digits", "split": "test"})
    fewer = write(tmp_path / "c_few.parquet", [rows(LABEL[:6], C_PRED[:6], C_EPS[:6], E)])
    other_eps = write(tmp_path / "c_4.parquet", [rows(LABEL, C_PRED, C_EPS, 2 * E)])
    part = write_table(pd.DataFrame({"idx": [0], "label": [0], "split": ["robust_accurate"]}), tmp_path / "p.parquet", "partition")
    return {"r": r, "c": c, "only_eps": only_eps, "digits": other_data, "fewer": fewer, "c4": other_eps, "part": str(part)}


@pytest.mark.parametrize("args,needle", [
    (["-r", "only_eps", "-c", "c"], "robcli attack --model ROBUST_MODEL --eps 0.0156863"),
    (["-r", "r", "-c", "digits"], "is on dataset"),
    (["-r", "r", "-c", "fewer"], "different examples"),
    (["-r", "r", "-c", "c4"], "no rows at eps"),
    (["-r", "r", "-c", "part"], "expected attack or certify"),
    (["-r", "r", "-c", "c", "--selector", "sr", "--threshold", "1.5"], "outside [0.0, 1.0]"),
    (["-r", "r", "-c", "c", "--selector", "sr", "--threshold", "-0.1"], "outside"),
    (["-r", "r", "-c", "c", "--selector", "sr", "--threshold", "0.5"], "--attack apgd-conf"),
    (["-r", "r", "-c", "c", "--threshold", "0.5"], "softmax-response"),
    (["-r", "r", "-c", "c", "--selector", "bogus"], "unknown selector"),
])
def test_bad_input(cli, bad, tmp_path, args, needle):
    out = tmp_path / "never.parquet"
    args = [bad.get(a, a) for a in args]
    res = cli("compose", *args, "--eps", "2/255", "--out", out)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _run_dir(path, seed, train=False):
    import torch

    from robcli.models import build, make_card, save_run

    torch.manual_seed(seed)
    m = build("tiny_mlp", 3, (2,))
    if train:  # a few full-batch Adam steps: accurate, with some points near the decision boundaries
        from robcli.data.registry import load_split

        xt, yt = load_split("gaussians", "train").tensors()
        opt = torch.optim.Adam(m.parameters(), 0.05)
        for _ in range(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt), yt).backward()
            opt.step()
    save_run(path, m, make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    return str(path)


def _export_setup(tmp_path, n=16, train=False):
    from robcli.data.registry import load_split

    sd = load_split("gaussians", "test").select(n_ex=n)
    lab = sd.y.tolist()
    idx = sd.idx.tolist()
    rr = rows(lab, lab, [1] * n, E)
    rr2 = rows(lab, lab, [1, 0] * (n // 2), 2 * E, attack="apgd-conf", clean_conf=0.9, adv_conf_other=0.1)
    cc = rows(lab, lab, [0] * n, E)
    for f in (rr, rr2, cc):
        f["idx"] = idx
    r = write(tmp_path / "r.parquet", [rr, rr2])
    c = write(tmp_path / "c.parquet", [cc])
    rrun, crun = _run_dir(tmp_path / "robust", 1, train), _run_dir(tmp_path / "core", 2, train)
    return sd, r, c, rrun, crun


def test_export_softmax_response_composite_routes_by_threshold(tmp_path, cli):
    import torch

    from robcli.models import load_model

    sd, r, c, rrun, crun = _export_setup(tmp_path, 8)
    exp = tmp_path / "composite"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.5",
              "--robust-model", rrun, "--core-model", crun, "--export", exp, "--export-threshold", "0.4", "-q")
    assert res.exit_code == 0, res.output
    lm = load_model(str(exp))
    x, _ = sd.tensors()
    robust, core = load_model(rrun).model, load_model(crun).model
    with torch.no_grad():
        out = lm.model(x)
        pr = torch.softmax(robust(x), 1)
        want = torch.where((pr.amax(1) >= 0.4).view(-1, 1), torch.log_softmax(robust(x), 1), torch.log_softmax(core(x), 1))
    assert torch.allclose(out, want, atol=1e-6)
    assert len(lm.files) == 2 and lm.card["composite"]["selector"] == "softmax-response"


def _independent_indicator(model, x, eps, steps):
    """PGD on the margin from x, written out here: robust = the prediction survives it."""
    import torch

    x_adv = x.clone()
    with torch.no_grad():
        y = model(x).argmax(1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        z = model(x_adv)
        other = z.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
        g, = torch.autograd.grad((other - z.gather(1, y.view(-1, 1)).squeeze(1)).sum(), x_adv)
        with torch.no_grad():
            x_adv = (x + (x_adv + 2.5 * eps / steps * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def test_export_robustness_indicator_runs_an_inner_attack(tmp_path, cli):
    """The exported RI composite routes by a real robustness check at eps, not by a softmax threshold."""
    import json
    import shutil

    import torch

    from robcli.models import load_model

    sd, r, c, rrun, crun = _export_setup(tmp_path, 64, train=True)
    exp = tmp_path / "composite"
    eps = 0.1
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--robust-model", rrun, "--core-model", crun,
               "--export", exp, "--export-threshold", "0.4", "-q").exit_code == 2  # thresholds are sr-only
    # composition at eps=0.05 (tables' eps rewritten), inner PGD with 10 steps
    for f in (r, c):
        t = read_table(f)
        d = t.df.copy()
        d["eps"] = np.where(np.isclose(d["eps"], E), eps, 2 * eps)
        write(f, [d])
    res = cli("compose", "-r", r, "-c", c, "--eps", str(eps), "--robust-model", rrun, "--core-model", crun,
              "--export", exp, "--export-inner-steps", "10", "-q")
    assert res.exit_code == 0, res.output
    card = json.loads((exp / "card.json").read_text())["composite"]
    assert card["selector"] == "robustness-indicator"
    assert card["inner_attack"] == {"attack": "pgd", "objective": "margin", "steps": 10, "restarts": 1, "eps": eps,
                                    "norm": "Linf", "seed": 0, "against": "the robust model's own prediction at the input"}
    assert card["members"] == [{"run": "../robust"}] and card["core"] == "../core"  # relative to the export dir
    lm = load_model(str(exp))
    x, _ = sd.tensors()
    robust, core = load_model(rrun).model, load_model(crun).model
    ind = _independent_indicator(robust, x, eps, 10)
    assert 0 < ind.float().mean() < 1  # both branches are exercised
    out = lm.model(x)
    with torch.no_grad():
        want = torch.where(ind.view(-1, 1), torch.log_softmax(robust(x), 1), torch.log_softmax(core(x), 1))
    assert torch.allclose(out, want, atol=1e-5)
    # deterministic, and an example's output does not depend on the rest of the batch
    assert torch.equal(lm.model(x), out) and torch.allclose(lm.model(x[5:20]), out[5:20], atol=1e-6)
    # gradients flow through the chosen branch
    xg = x.clone().requires_grad_(True)
    lm.model(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    # moving the whole tree keeps the composite loadable (relative member paths)
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(tmp_path / "robust")
    assert torch.allclose(load_model(str(moved / "composite")).model(x), out, atol=1e-5)
    shutil.copytree(moved / "robust", tmp_path / "robust")

    # robcli attack attacks it end to end
    t = tmp_path / "att.parquet"
    res = cli("attack", "--model", exp, "--dataset", "gaussians", "--n-ex", "32", "--eps", str(eps),
              "--attack", "apgd-ce", "--steps", "5", "--out", t, "-q")
    assert res.exit_code == 0, res.output
    a = read_table(t).df
    assert len(a) == 32 and a["robust"].dtype == bool
    with torch.no_grad():
        assert (a.sort_values("idx")["clean_pred"].to_numpy() == out[:32].argmax(1).numpy()).all()


def test_export_failure_writes_nothing(tmp_path, cli):
    import torch

    from robcli.models import build, make_card, save_run

    sd, r, c, rrun, crun = _export_setup(tmp_path, 8)
    torch.manual_seed(0)
    save_run(tmp_path / "four", build("tiny_mlp", 4, (2,)), make_card("tiny_mlp", 4, (2,)))
    out, exp = tmp_path / "comp.parquet", tmp_path / "composite"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--robust-model", rrun, "--core-model", tmp_path / "four",
              "--export", exp, "--out", out)
    assert res.exit_code == 2 and "disagree on input shape or number of classes" in res.stderr, res.output
    assert not out.exists() and not exp.exists()


def test_help_states_the_soundness_rule(cli):
    res = cli("compose", "--help")
    flat = "".join(ch for ch in res.stdout if ch not in "│╭╮╰╯─ \n")
    for part in ("Soundnessrule:", "2*epsrule(eq.14)", "Abstaincase", "coremodelrobustandaccurateateps",
                 "radius>=2*epsbydefault,--selection-checkepsforthepaper'sradius>=eps", "cappedat0.5"):
        assert part in flat, part


@pytest.mark.parametrize("inner", ["pgd", "apgd-ce"])
def test_composite_indicator_extremes_and_determinism(tmp_path, inner):
    """Tiny eps: the robust model is robust everywhere, H = robust model; eps = 1 (the whole box): H = core."""
    import torch

    from robcli.compose.export import CompositeModel
    from robcli.data.registry import load_split
    from robcli.models import load_model

    rm = load_model(_run_dir(tmp_path / "r", 1, train=True)).model
    cm = load_model(_run_dir(tmp_path / "c", 2, train=True)).model
    x, _ = load_split("gaussians", "test").select(n_ex=32).tensors()
    with torch.no_grad():
        lr, lc = torch.log_softmax(rm(x), 1), torch.log_softmax(cm(x), 1)
    for eps, want in ((1e-7, lr), (1.0, lc)):
        h = CompositeModel([rm], cm, selector="robustness-indicator", eps=eps, inner_attack=inner, inner_steps=10,
                           inner_restarts=2).eval()
        out = h(x)
        assert torch.allclose(out, want, atol=1e-5), (inner, eps)
        assert torch.equal(h(x), out)
    with pytest.raises(Exception, match="eps > 0"):
        CompositeModel([rm], cm, selector="robustness-indicator", eps=0.0)


def test_indicator_composite_runs_under_inference_mode():
    """certify runs its forwards under torch.inference_mode; the composite's inner attack needs autograd."""
    import torch
    import torch.nn as nn

    from robcli.compose.export import CompositeModel

    torch.manual_seed(0)
    robust = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    core = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    model = CompositeModel([robust], core, selector="robustness-indicator", eps=0.05).eval()
    x = torch.rand(64, 2)
    expected = model(x)
    with torch.inference_mode():
        got = model(x.clone())
    assert torch.equal(expected, got)
