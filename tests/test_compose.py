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
              rows(lab, pred, [1, 1, 1, 0], E, attack="apgd-conf",
                   clean_conf=[0.9, 0.9, 0.95, 0.6], adv_conf=[0.88, 0.85, 0.92, 0.4]),
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
    # tau=.8 (eq. 16): lowest confidence on B_eps .88, .85, .92, .4 -> selected: 0,1,2; on B_2eps .85, .5, .9, .3
    # -> robustly selected: 0, 2. ex1: not robustly selected, R right at x, C robust+right -> counts; ex2:
    # robustly selected, R wrong; ex3: R right at x but C not robust -> not counted
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
    conf_eps = rows(lab, pred, [1, 1, 1], E, attack="apgd-conf", clean_conf=0.9, adv_conf_other=0.04)
    conf_eps["adv_margin"] = 3.0  # max softmax 0.04 * e^3 = 0.80 on B_eps: all three selected at tau 0.6
    r = write(tmp_path / "r.parquet", [rows(lab, pred, [1, 1, 1], E), conf_eps, conf, ce2])
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0, 0], [1, 1, 1], E)])
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.6", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out).df.iloc[0]
    # before the cap: 0 (0.80 from apgd-conf) and 1 (0.9 of the other class) counted as robustly selected
    assert row["selection_rate"] == pytest.approx(1.0)
    assert row["robust_selection"] == pytest.approx(1 / 3)
    assert row["selected_robust_acc"] == pytest.approx(1.0)


def test_eps_and_2eps_parts_of_different_models_are_refused(tmp_path, cli, one_line_error):
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
        one_line_error(cli("compose", "-r", spec, "-c", c, "--eps", "2/255", "--out", out), needle)
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
def test_bad_input(cli, one_line_error, bad, tmp_path, args, needle):
    out = tmp_path / "never.parquet"
    args = [bad.get(a, a) for a in args]
    one_line_error(cli("compose", *args, "--eps", "2/255", "--out", out), needle)
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


def test_export_pointwise_softmax_response_composite_routes_by_threshold(tmp_path, cli):
    import json

    import torch

    from robcli.models import load_model

    sd, r, c, rrun, crun = _export_setup(tmp_path, 8)
    exp = tmp_path / "composite"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr-pointwise", "--threshold", "0.5",
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
    assert len(lm.files) == 2 and lm.card["composite"]["selector"] == "softmax-response-pointwise"
    assert "inner_attack" not in lm.card["composite"]
    # a card written before eq. 16 (selector softmax-response, no inner attack) computed this rule and still does
    card = json.loads((exp / "card.json").read_text())
    card["composite"]["selector"] = "softmax-response"
    (exp / "card.json").write_text(json.dumps(card))
    with torch.no_grad():
        assert torch.allclose(load_model(str(exp)).model(x), want, atol=1e-6)


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


def test_softmax_response_is_eq16_the_ball_decides_selection(tmp_path, cli):
    """Issue 9's example: tau 0.8, clean confidence 0.9, lowest confidence on B_eps 0.7. Eq. 16 abstains, so the
    core model answers; the pointwise rule (clean confidence >= tau) would route x to the robust model."""
    lab = [0, 0]
    r_pred = [1, 0]  # the robust model is wrong on example 0, right on example 1
    conf_eps = rows(lab, r_pred, [1, 1], E, attack="apgd-conf", clean_conf=[0.9, 0.95], adv_conf=[0.7, 0.9])
    conf_2eps = rows(lab, r_pred, [1, 1], 2 * E, attack="apgd-conf", clean_conf=[0.9, 0.95], adv_conf=[0.6, 0.85])
    r = write(tmp_path / "r.parquet", [conf_eps, conf_2eps])
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0], [1, 1], E)])
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.8", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out).df.iloc[0]
    assert row["selector"] == "softmax-response"
    assert row["selection_rate"] == pytest.approx(1 / 2)  # only example 1 (0.9 >= 0.8 on B_eps); 0 goes to the core
    assert row["nat_acc"] == pytest.approx(1.0)           # the core answers example 0 correctly
    assert row["robust_selection"] == pytest.approx(1 / 2)  # example 1: 0.85 on B_2eps
    # example 0: not robustly selected, and the robust model may select somewhere in B_eps(x), where (tau > 1/2)
    # it outputs R(x) = 1, wrong: not counted although the core model is robust and accurate
    assert row["robust_acc"] == pytest.approx(1 / 2)


def _issue_example_tables(tmp_path):
    """Two examples; lowest confidence on B_eps 0.7 / 0.9, on B_2eps 0.6 / 0.85 (example 0 is issue 9's)."""
    lab, r_pred = [0, 0], [1, 0]
    conf_eps = rows(lab, r_pred, [1, 1], E, attack="apgd-conf", clean_conf=[0.9, 0.95], adv_conf=[0.7, 0.9])
    conf_2eps = rows(lab, r_pred, [1, 1], 2 * E, attack="apgd-conf", clean_conf=[0.9, 0.95], adv_conf=[0.6, 0.85])
    r = write(tmp_path / "r.parquet", [conf_eps, conf_2eps])
    c = write(tmp_path / "c.parquet", [rows(lab, [0, 0], [1, 1], E)])
    return r, c


def test_softmax_response_sweep_uses_the_eq16_rule(tmp_path, cli):
    r, c = _issue_example_tables(tmp_path)
    out, one = tmp_path / "sweep.parquet", tmp_path / "one.parquet"
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--sweep", "--out", out).exit_code == 0
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.8", "--out", one).exit_code == 0
    df = read_table(out).df
    low_eps, low_2eps = np.array([0.7, 0.9]), np.array([0.6, 0.85])
    for _, row in df.iterrows():
        t = row["threshold"]
        assert row["selection_rate"] == pytest.approx(float((low_eps >= t).mean())), t
        assert row["robust_selection"] == pytest.approx(float((low_2eps >= t).mean())), t
        # example 0 goes to the (right) core model exactly where eq. 16 abstains at x
        assert row["nat_acc"] == pytest.approx(0.5 if t <= 0.7 else 1.0), t
    swept = df[np.isclose(df["threshold"], 0.8)].iloc[0]
    single = read_table(one).df.iloc[0]
    for k in ("nat_acc", "robust_acc", "robust_selection", "selection_rate", "robust_inaccuracy"):
        assert swept[k] == pytest.approx(single[k]), k


def test_softmax_response_pointwise_is_its_own_selector(tmp_path, cli):
    """sr-pointwise selects on the clean confidence and robustly selects on B_eps (not B_2eps)."""
    r, c = _issue_example_tables(tmp_path)
    out = tmp_path / "pw.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr-pointwise", "--threshold", "0.8", "--out", out)
    assert res.exit_code == 0, res.output
    row = read_table(out).df.iloc[0]
    assert row["selector"] == "softmax-response-pointwise" and row["selection_check"] == "eps"
    assert row["selection_rate"] == pytest.approx(1.0)   # 0.9 and 0.95 at x
    assert row["nat_acc"] == pytest.approx(0.5)          # example 0 is routed to the (wrong) robust model
    assert row["robust_selection"] == pytest.approx(1 / 2)  # B_eps: 0.7 < 0.8, 0.9 >= 0.8
    # at 0.86 B_2eps (0.85) would refuse example 1, B_eps (0.9) does not: the pointwise rule is B_eps
    res = cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr-pointwise", "--threshold", "0.86",
              "--out", out, "--force")
    assert res.exit_code == 0 and read_table(out).df.iloc[0]["robust_selection"] == pytest.approx(1 / 2)
    # it needs only the eps confidences
    r_eps = write(tmp_path / "r_eps.parquet", [read_table(r).df.query("eps < 0.01")])
    assert cli("compose", "-r", r_eps, "-c", c, "--eps", "2/255", "--selector", "sr-pointwise", "--threshold", "0.8",
               "-q").exit_code == 0
    res = cli("compose", "-r", r_eps, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", "0.8", "-q")
    assert res.exit_code == 2 and "confidences at 0.0156863" in res.stderr


@pytest.mark.parametrize("tau,counted", [(0.8, True), (0.5, False)])
def test_softmax_response_ok_rule_depends_on_threshold_above_half(tmp_path, cli, tau, counted):
    """R right at x but flipped inside B_eps (lowest confidence capped at 0.5: never selected at x, never robustly),
    core robust and right. tau > 1/2: wherever eq. 16 selects inside the ball R outputs R(x) = y, so the example
    counts; tau <= 1/2: that argument fails, R must be robust and accurate, and it is not."""
    lab, pred = [0], [0]
    conf_eps = rows(lab, pred, [0], E, attack="apgd-conf", clean_conf=[0.95], adv_conf_other=[0.6])
    conf_2eps = rows(lab, pred, [0], 2 * E, attack="apgd-conf", clean_conf=[0.95], adv_conf_other=[0.7])
    r = write(tmp_path / "r.parquet", [conf_eps, conf_2eps])
    c = write(tmp_path / "c.parquet", [rows(lab, [0], [1], E)])
    out = tmp_path / "o.parquet"
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--selector", "sr", "--threshold", str(tau),
               "--out", out).exit_code == 0
    row = read_table(out).df.iloc[0]
    assert row["robust_acc"] == pytest.approx(1.0 if counted else 0.0)
    assert row["selection_rate"] == pytest.approx(1.0 if tau <= 0.5 else 0.0)


def _hand_tables(tmp_path, model, x, y, idx, eps):
    """Attack tables that carry the models' clean predictions and nothing about confidences (robust everywhere)."""
    import torch

    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    frames = [rows(y, pred, [1] * len(y), e) for e in (eps, 2 * eps)]
    for f in frames:
        f["idx"] = idx
    return frames


def test_export_softmax_response_runs_eq16_and_agrees_with_the_table(tmp_path, cli):
    """The exported sr composite selects when the lowest confidence its inner attack finds on B_eps(x) is >= tau
    (not the clean confidence), and routes exactly as the compose table's selector does (same attack, seed)."""
    import json

    import torch

    from robcli.compose.confidence import softmax_confidences
    from robcli.data.registry import load_split
    from robcli.models import load_model

    eps, tau = 0.1, 0.9
    rrun, crun = _run_dir(tmp_path / "robust", 1, train=True), _run_dir(tmp_path / "core", 2, train=True)
    robust, core = load_model(rrun).model, load_model(crun).model
    sd = load_split("gaussians", "test").select(n_ex=64)
    x, y = sd.tensors()
    yl, idx = y.tolist(), sd.idx.tolist()
    r = write(tmp_path / "r.parquet", _hand_tables(tmp_path, robust, x, yl, idx, eps))
    c = write(tmp_path / "c.parquet", _hand_tables(tmp_path, core, x, yl, idx, eps)[:1])
    exp, out = tmp_path / "composite", tmp_path / "sr.parquet"
    res = cli("compose", "-r", r, "-c", c, "--eps", str(eps), "--selector", "sr", "--threshold", str(tau),
              "--robust-model", rrun, "--core-model", crun, "--steps", "10", "--export", exp,
              "--export-inner-steps", "10", "--export-inner-restarts", "2", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    card = json.loads((exp / "card.json").read_text())["composite"]
    assert card["selector"] == "softmax-response" and card["members"][0]["threshold"] == tau
    assert card["inner_attack"]["steps"] == 10 and card["inner_attack"]["restarts"] == 2
    assert card["inner_attack"]["eps"] == eps and card["inner_attack"]["seed"] == 0 and "eq. 16" in card["rule"]
    h = load_model(str(exp)).model
    hx = h(x)
    with torch.no_grad():
        lr, lc = torch.log_softmax(robust(x), 1), torch.log_softmax(core(x), 1)
    routed = (hx - lr).abs().amax(1) < 1e-5
    assert torch.allclose(hx[~routed], lc[~routed], atol=1e-5)
    clean, low = softmax_confidences(robust, x, eps=eps, norm="Linf", steps=10, restarts=2)
    assert np.array_equal(routed.numpy(), low >= tau)
    assert ((clean >= tau) & ~routed.numpy()).mean() > 0.1  # the pointwise rule would have selected these
    row = read_table(out).df.iloc[0]
    assert row["selection_rate"] == pytest.approx(float(routed.float().mean()))
    assert row["nat_acc"] == pytest.approx(float((hx.argmax(1) == y).float().mean()))
    # batch-independent and deterministic
    assert torch.allclose(h(x[7:30]), hx[7:30], atol=1e-6) and torch.equal(h(x), hx)
    # the inner attack is pgd only: apgd-ce is the indicator's margin attack
    res = cli("compose", "-r", r, "-c", c, "--eps", str(eps), "--selector", "sr", "--threshold", str(tau),
              "--robust-model", rrun, "--core-model", crun, "--export", tmp_path / "e2", "--export-inner-attack", "apgd-ce")
    assert res.exit_code == 2 and "minimises the max softmax with pgd" in res.stderr and not (tmp_path / "e2").exists()


def test_composite_softmax_response_extremes(tmp_path):
    """eps -> 0: eq. 16 is the pointwise rule; eps = 1 (the whole box holds a decision boundary): no selection
    at any threshold above 1/2; threshold 0: always the robust model."""
    import torch

    from robcli.compose.export import CompositeModel
    from robcli.data.registry import load_split
    from robcli.models import load_model

    rm = load_model(_run_dir(tmp_path / "r", 1, train=True)).model
    cm = load_model(_run_dir(tmp_path / "c", 2, train=True)).model
    x, _ = load_split("gaussians", "test").select(n_ex=32).tensors()
    with torch.no_grad():
        lr, lc = torch.log_softmax(rm(x), 1), torch.log_softmax(cm(x), 1)
        assert len(set(rm(x).argmax(1).tolist())) > 1  # the box holds a decision boundary
    tau = float(lr.exp().amax(1).median())
    pw = CompositeModel([rm], cm, selector="softmax-response-pointwise", thresholds=[tau])(x)
    assert not torch.allclose(pw, lr) and not torch.allclose(pw, lc)  # both branches
    tiny = CompositeModel([rm], cm, selector="softmax-response", thresholds=[tau], eps=1e-7, inner_steps=5)(x)
    assert torch.allclose(tiny, pw, atol=1e-6)
    big = CompositeModel([rm], cm, selector="softmax-response", thresholds=[0.51], eps=1.0, inner_steps=20,
                         inner_restarts=3)(x)
    assert torch.allclose(big, lc, atol=1e-6)
    zero = CompositeModel([rm], cm, selector="softmax-response", thresholds=[0.0], eps=1.0)(x)
    assert torch.allclose(zero, lr, atol=1e-6)
    with pytest.raises(Exception, match="eps > 0"):
        CompositeModel([rm], cm, selector="softmax-response", thresholds=[0.5])


class _TwoClass:
    """Logits (g(x), 0): the max softmax is sigmoid(|g(x)|); the prediction flips where g changes sign."""

    def __init__(self, g):
        self.g = g

    def __call__(self, x):
        import torch

        z = self.g(x)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_ball_min_confidence_known_answers():
    import torch

    from robcli.compose.confidence import ball_min_confidence

    x = torch.tensor([[0.5, 0.5]])
    lin = _TwoClass(lambda v: 2 * v[:, 0] - v[:, 1] + 0.5)  # g(x) = 1 at x; |grad|_1 = 3
    c, low = ball_min_confidence(lin, x, eps=0.2, norm="Linf", steps=20)
    assert c.item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-6)
    assert low.item() == pytest.approx(torch.sigmoid(torch.tensor(1.0 - 0.2 * 3)).item(), abs=1e-5)  # the corner
    # one step jumps across the boundary to (0.05, 0.95), where the other class has 0.587: capped at 0.5
    _, low = ball_min_confidence(lin, x, eps=0.45, norm="Linf", steps=1)
    assert low.item() == pytest.approx(0.5)
    # every iterate counts: from 0.6, PGD (step 0.125) visits 0.5 (g = 1.2) and ends at 0.625 (g = 2.05)
    vee = _TwoClass(lambda v: 1 + 10 * (v[:, 0] - 0.52).abs())
    _, low = ball_min_confidence(vee, torch.tensor([[0.6, 0.5]]), eps=0.1, norm="Linf", steps=2)
    assert low.item() == pytest.approx(torch.sigmoid(torch.tensor(1.2)).item(), abs=1e-5)


def _cert(path, label, predict, radius, alpha, sigma=0.25, n=1000):
    k = len(label)
    df = pd.DataFrame({"idx": np.arange(k), "label": label, "predict": predict, "radius": radius,
                       "correct": np.asarray(predict) == np.asarray(label), "time": 0.0, "sigma": sigma, "N0": 100,
                       "N": n, "alpha": alpha, "nA": n, "pA_lower": 0.9})
    write_table(df, path, "certify", config={"alpha": alpha}, prov={"data": DATA, "models": [{"path": str(path)}]})
    return str(path)


def test_certified_composition_records_the_union_bound_of_its_alphas(tmp_path, cli):
    """m robust members + the core: one example's claim can rest on m + 1 certificates, each at its own alpha."""
    lab = [0, 0, 0]
    r1 = _cert(tmp_path / "r1.parquet", lab, [0, 0, 1], [0.6, 0.3, 0.6], 0.001)
    r2 = _cert(tmp_path / "r2.parquet", lab, [0, 0, 0], [0.6, 0.6, 0.0], 0.0005)
    c = _cert(tmp_path / "c.parquet", lab, [0, 0, 0], [0.3, 0.3, 0.3], 0.002)
    out = tmp_path / "o.parquet"
    res = cli("compose", "-r", r1, "-r", r2, "-c", c, "--eps", "0.25", "--out", out)
    assert res.exit_code == 0, res.output
    t = read_table(out)
    assert t.df["composition_alpha"].tolist() == [pytest.approx(0.0035)]
    assert t.config["composition_alpha"] == pytest.approx(0.0035)
    assert [(x["role"], x["alpha"]) for x in t.config["certificates"]] == [("robust", 0.001), ("robust", 0.0005),
                                                                            ("core", 0.002)]
    assert "up to 3 certificates" in res.stderr and "A/3" in res.stderr
    # certified at alpha / (m + 1) each, the composition holds at alpha
    for name, lab_, pr, rad in (("r1", lab, [0, 0, 1], [0.6, 0.3, 0.6]), ("r2", lab, [0, 0, 0], [0.6, 0.6, 0.0]),
                                ("c", lab, [0, 0, 0], [0.3, 0.3, 0.3])):
        _cert(tmp_path / f"{name}s.parquet", lab_, pr, rad, 0.001 / 3)
    res = cli("compose", "-r", tmp_path / "r1s.parquet", "-r", tmp_path / "r2s.parquet", "-c", tmp_path / "cs.parquet",
              "--eps", "0.25", "--out", out, "--force", "-q")
    assert res.exit_code == 0 and read_table(out).df["composition_alpha"].iloc[0] == pytest.approx(0.001)
    assert res.stderr == ""  # -q
    # a deterministic certificate (no Monte-Carlo samples, N = 0) adds nothing; attack tables carry none
    det = _cert(tmp_path / "det.parquet", lab, [0, 0, 0], [0.3, 0.3, 0.3], 0.001, n=0)
    assert cli("compose", "-r", r1, "-c", det, "--eps", "0.25", "--out", out, "--force", "-q").exit_code == 0
    assert read_table(out).df["composition_alpha"].iloc[0] == pytest.approx(0.001)
    # only the chosen sigma's certificates count
    two = tmp_path / "two.parquet"
    d = pd.concat([read_table(r1).df, read_table(r1).df.assign(sigma=0.5, alpha=0.01)], ignore_index=True)
    write_table(d, two, "certify", prov={"data": DATA, "models": [{"path": "runs/two"}]})
    assert cli("compose", "-r", two, "-c", c, "--eps", "0.25", "--sigma", "0.25", "--out", out, "--force", "-q").exit_code == 0
    assert read_table(out).df["composition_alpha"].iloc[0] == pytest.approx(0.003)


def test_attack_compositions_have_no_composition_alpha(cli, tables, tmp_path):
    r, c = tables
    out = tmp_path / "o.parquet"
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--out", out).exit_code == 0
    t = read_table(out)
    assert np.isnan(t.df["composition_alpha"].iloc[0])
    assert t.config["composition_alpha"] is None and t.config["certificates"] == []


def test_help_states_the_composition_alpha(cli):
    flat = "".join(ch for ch in cli("compose", "--help").stdout if ch not in "│╭╮╰╯─ \n")
    for part in ("upto m+1", "composition_alpha", "certifyeachtableatA/(m+1)", "sr-pointwise", "eq.16"):
        assert part.replace(" ", "") in flat, part


def test_mixture_functions_are_the_library_behind_compose_mix(tmp_path):
    """robcli.compose.mixtures: the --mix/--mix-sweep checks raise typed errors before anything is written."""
    from robcli.compose.mixtures import export_mixture, sweep_mixtures
    from robcli.errors import UsageError

    with pytest.raises(UsageError, match=r"mix one --robust model with the --core model \(got 2\)"):
        export_mixture("g", ["h1", "h2"], "0.5", str(tmp_path / "mix"))
    with pytest.raises(UsageError, match="--mix-sweep needs --dataset and --eps"):
        sweep_mixtures("tiny_mlp", ["tiny_mlp"], dataset=None, eps="0.1", out=str(tmp_path / "s.parquet"))
    assert list(tmp_path.iterdir()) == []


def test_adv_max_softmax_known_answer():
    """Max softmax at the attack point, recovered from what the attack table stores (adv_conf_other, adv_margin)."""
    import torch

    from robcli.attacks.pgd import margin
    from robcli.compose.confidence import adv_max_softmax

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 10, generator=g, dtype=torch.float64) * 4
    z[:5, 3] += 800.0  # a huge margin: the other classes' softmax underflows to 0
    y = torch.randint(0, 10, (200,), generator=g)  # the clean prediction: kept at x' for some rows, not for others
    y[:5] = 3
    p = z.softmax(1)
    other = p.scatter(1, y[:, None], float("-inf")).amax(1)
    rows = pd.DataFrame({"adv_conf_other": other.numpy(), "adv_margin": margin(z, y).numpy()})
    np.testing.assert_allclose(adv_max_softmax(rows), p.amax(1).numpy(), rtol=1e-9, atol=1e-12)
    assert np.array_equal(adv_max_softmax(pd.DataFrame({"adv_conf": [0.3, 0.9]})), [0.3, 0.9])


def test_softmax_response_compose_reads_a_real_apgd_conf_table(cli, tmp_path):
    """The documented route (attack --attack apgd-conf at 2*eps, then compose --selector sr) must work."""
    from robcli.tables.io import read_table

    run = tmp_path / "run"
    assert cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "2", "--batch", "200", "--out", run,
               "-q").exit_code == 0
    common = ["--model", run, "--dataset", "gaussians", "--n-ex", "24", "--steps", "5", "-q"]
    r_eps = tmp_path / "r_eps.parquet"
    r_conf = tmp_path / "r_conf.parquet"
    core = tmp_path / "core.parquet"
    assert cli("attack", *common, "--eps", "0.05", "--out", r_eps).exit_code == 0
    # eq. 16: the confidences on B_eps decide the selection, on B_2eps the robust selection
    assert cli("attack", *common, "--attack", "apgd-conf", "--eps", "0.05", "--eps", "0.1", "--out", r_conf).exit_code == 0
    assert cli("attack", *common, "--eps", "0.05", "--seed", "1", "--out", core).exit_code == 0
    conf = read_table(r_conf).df
    assert "adv_conf" not in conf.columns  # the attack table carries adv_conf_other + adv_margin only
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", f"{r_eps},{r_conf}", "-c", core, "--eps", "0.05", "--selector", "sr",
              "--threshold", "0", "--threshold", "1", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    t = read_table(out)
    df = t.df.sort_values("threshold")
    assert df["robust_selection"].tolist() == [1.0, 0.0]  # tau=0 selects everywhere; tau=1 only at softmax 1.0
    # provenance: one flat list of model entries (as in every other table), robust first, then core
    assert [m["role"] for m in t.meta["models"]] == ["robust", "core"]
    assert all(isinstance(m, dict) and "sha256" in m for m in t.meta["models"])


def test_compose_refuses_a_robust_model_that_did_not_make_the_table(cli, tmp_path):
    runs = {}
    for name, seed in (("a", "0"), ("b", "1")):
        runs[name] = tmp_path / name
        assert cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--batch", "200", "--seed", seed,
                   "--out", runs[name], "-q").exit_code == 0
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", runs["a"], "--dataset", "gaussians", "--n-ex", "8", "--steps", "2",
               "--eps", "0.05", "--eps", "0.1", "--out", table, "-q").exit_code == 0
    out = tmp_path / "c.parquet"
    common = ["compose", "-r", table, "-c", table, "--eps", "0.05", "--selector", "sr", "--threshold", "0.5", "--out", out]
    res = cli(*common, "--robust-model", runs["b"])
    assert res.exit_code == 2 and "sha256 differs" in res.output and not out.exists()
    assert cli(*common, "--robust-model", runs["a"], "-q").exit_code == 0
