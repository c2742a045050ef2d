"""robcli.attacks.engine: registry dispatch, the mixture settings through the engine, TableRun resume and shards."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robcli.attacks.engine import ATTACK_REGISTRY, AttackConfig, AttackInternalError, AttackSpec, run_attack
from robcli.errors import UsageError
from robcli.tables.io import read_table
from robcli.tables.run import parts_path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A gaussians MLP run, digits members g, h, an adaptive mixture (mixing network, alpha in [0.2, 0.9]) and
    a fixed one (alpha 0.6)."""
    from robcli.data.registry import load_split
    from robcli.mixing.io import build_mixture, load_members, save_mixture
    from robcli.models import build, make_card, save_run

    d = tmp_path_factory.mktemp("engine")
    torch.manual_seed(0)
    save_run(d / "gauss", build("tiny_mlp", 3, (2,)), make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    info = load_split("digits", "test").info
    for name, seed in (("g", 0), ("h", 1)):
        torch.manual_seed(seed)
        save_run(d / name, build("tiny_cnn", 10, (1, 8, 8), mean=info.mean, std=info.std),
                 make_card("tiny_cnn", 10, (1, 8, 8), dataset="digits", mean=info.mean, std=info.std))
    lg, lh = load_members(str(d / "g"), str(d / "h"))
    torch.manual_seed(3)
    save_mixture(d / "adaptive", build_mixture(lg, lh, alpha=None, alpha_range=(0.2, 0.9), width=8),
                 core=str(d / "g"), robust=str(d / "h"), lg=lg, lh=lh)
    save_mixture(d / "fixed", build_mixture(lg, lh, alpha=0.6), core=str(d / "g"), robust=str(d / "h"), lg=lg, lh=lh)
    return {k: str(d / k) for k in ("gauss", "g", "h", "adaptive", "fixed")}


# ---- the registry ----------------------------------------------------------------------------------------------


def test_torch_free_names_equal_the_registry():
    from robcli.attacks import ATTACKS
    from robcli.attacks.engine import KNOBS, list_attacks
    from robcli.cli.attack import KNOBS as CLI_KNOBS

    assert sorted(ATTACKS) == list_attacks() and {"mix-A", "mix-B", "mix-C", "mix-D"} <= set(ATTACKS)
    assert CLI_KNOBS == KNOBS


def test_names_parse_case_insensitively():
    assert AttackConfig(attack="MIX-c", eps=("0.1",)).attack == "mix-C"
    assert AttackConfig(attack="Apgd-CE", eps=("0.1",)).attack == "apgd-ce"
    with pytest.raises(UsageError, match="unknown attack 'mix-e'"):
        AttackConfig(attack="mix-e", eps=("0.1",))


@pytest.fixture
def gauss_data():
    from robcli.data.registry import load_split

    return load_split("gaussians", "test").select(n_ex=20)


def _gauss_model(runs):
    from robcli.models import load_model

    return load_model(runs["gauss"]).model


def test_the_engine_dispatches_through_the_registry_and_verifies_every_point(runs, gauss_data, monkeypatch):
    """A registered runner is what the engine calls (known answer: the identity attack leaves everything robust
    at the clean point), and its points get verify_points (one off the ball is an internal error)."""
    calls = []

    def identity(cfg, fwd, x, y, eps, seed, num_classes, notes):
        calls.append((x.shape[0], eps, seed))
        return x.clone()

    def outside(cfg, fwd, x, y, eps, seed, num_classes, notes):
        return (x + 2 * eps).clamp(0, 1)

    for name, fn in (("test-identity", identity), ("test-outside", outside)):
        monkeypatch.setitem(ATTACK_REGISTRY._entries, name, type(ATTACK_REGISTRY.get("pgd"))(
            name, AttackSpec(fn, 7, "--steps counts nothing", ("steps",), name)))
    cfg = AttackConfig(attack="test-identity", eps=("0.05", "0.1"), batch=8)
    df = run_attack(_gauss_model(runs), gauss_data, cfg, device="cpu")
    assert len(df) == 40 and df["robust"].all() and (df["pert_norm"] == 0).all() and (df["steps"] == 7).all()
    assert (df["attack"] == "test-identity").all()
    assert [c[:2] for c in calls] == [(8, 0.05), (8, 0.1), (8, 0.05), (8, 0.1), (4, 0.05), (4, 0.1)]
    with pytest.raises(AttackInternalError, match="test-outside returned a perturbation"):
        run_attack(_gauss_model(runs), gauss_data, AttackConfig(attack="test-outside", eps=("0.05",)), device="cpu")


# ---- the mixture settings through the engine ------------------------------------------------------------------


@pytest.fixture
def digits_data():
    from robcli.data.registry import load_split

    return load_split("digits", "test").select(n_ex=24)


def _mix(runs, which="adaptive"):
    from robcli.models import load_model

    return load_model(runs[which]).model


def test_mix_settings_get_verify_points(runs, digits_data, monkeypatch):
    import robcli.mixing.attacks as A

    monkeypatch.setattr(A, "attack_mixture", lambda model, x, y, s, eps, **kw: (x + 3 * eps).clamp(0, 1))
    with pytest.raises(AttackInternalError, match="mix-B returned a perturbation"):
        run_attack(_mix(runs), digits_data, AttackConfig(attack="mix-b", eps=("0.1",), steps=2), device="cpu")


def test_mix_attacks_target_the_clean_prediction_not_the_label(runs, digits_data, monkeypatch):
    """Mixture attack tables judge robustness against the model's own prediction (as every attack table), so
    wrong predictions are attacked too and robust inaccuracy is measured."""
    import torch

    import robcli.mixing.attacks as A

    seen = []
    monkeypatch.setattr(A, "attack_mixture", lambda model, x, y, s, eps, **kw: seen.append(y.clone()) or x.clone())
    m = _mix(runs)
    df = run_attack(m, digits_data, AttackConfig(attack="mix-b", eps=("0.1",), steps=1, batch=24), device="cpu")
    x, _ = digits_data.get(torch.arange(len(digits_data)))
    with torch.no_grad():
        pred = m(x).argmax(1)
    assert torch.equal(torch.cat(seen), pred)
    assert df["robust"].all() and (df["clean_pred"].to_numpy() == pred.numpy()).all()


def test_mix_eps_sweep_is_monotone_and_records_alpha(runs, digits_data):
    cfg = AttackConfig(attack="mix-b", eps=("0.05", "0.3"), steps=5, batch=8)
    df = run_attack(_mix(runs), digits_data, cfg, device="cpu")
    assert len(df) == 48 and (df["attack"] == "mix-B").all()
    lo, hi = (df[df["eps"] == e].set_index("idx") for e in (0.05, 0.3))
    assert not (hi["robust"] & ~lo["robust"]).any()  # robust at the larger radius -> robust at the smaller
    assert (~hi["robust"]).sum() > (~lo["robust"]).sum()  # the sweep is not vacuous: 0.3 breaks more
    reused = hi[hi["reused"]]
    assert (reused["adv_pred"] == lo.loc[reused.index, "adv_pred"]).all()
    assert (reused["alpha_adv"] == lo.loc[reused.index, "alpha_adv"]).all()
    assert df["alpha_clean"].between(0.2, 0.9).all() and df["alpha_adv"].between(0.2, 0.9).all()
    assert (df["pert_norm"] <= df["eps"] + 1e-6).all()


def test_mix_settings_refuse_what_does_not_fit(runs, digits_data):
    with pytest.raises(UsageError, match="fixed alpha"):
        run_attack(_mix(runs, "fixed"), digits_data, AttackConfig(attack="mix-a", eps=("0.1",), steps=2), device="cpu")
    with pytest.raises(UsageError, match="--mix-attack-weight does not apply to --attack mix-B"):
        AttackConfig(attack="mix-b", eps=("0.1",), mix_attack_weight=0.5)
    with pytest.raises(UsageError, match="--n-targets does not apply to --attack apgd-ce"):
        AttackConfig(attack="apgd-ce", eps=("0.1",), n_targets=2)


def test_mix_attack_resumes_to_the_identical_table(cli, runs, tmp_path, monkeypatch):
    """Interrupt after 2 of 3 chunks (an exception in the progress callback), resume: the table equals an
    uninterrupted run's, and the parts of the finished chunks were not recomputed."""
    import robcli.cli.common as common

    args = ["attack", "--model", runs["adaptive"], "-d", "digits", "--attack", "mix-d", "--eps", "0.1", "--eps", "0.2",
            "--steps", "3", "--n-targets", "2", "--n-queries", "10", "--n-ex", "12", "--batch", "4", "--seed", "5", "-q"]
    full = tmp_path / "full.parquet"
    assert cli(*args, "--out", full).exit_code == 0
    out = tmp_path / "r.parquet"
    orig = common.ProgressCallback.__call__
    n = {"calls": 0}

    def dying(self, done, total, desc="working"):
        n["calls"] += 1
        if n["calls"] == 5:  # the first eps of the third chunk
            raise RuntimeError("killed")
        return orig(self, done, total, desc)

    monkeypatch.setattr(common.ProgressCallback, "__call__", dying)
    r = cli(*args, "--out", out)
    assert r.exit_code != 0 and isinstance(r.exception, RuntimeError) and str(r.exception) == "killed"
    monkeypatch.setattr(common.ProgressCallback, "__call__", orig)
    parts = sorted(p.name for p in parts_path(out).glob("chunk-*.parquet"))
    assert parts == ["chunk-000000.parquet", "chunk-000001.parquet"] and not out.exists()
    import robcli.mixing.attacks as A

    real, seen = A.attack_mixture, []
    monkeypatch.setattr(A, "attack_mixture", lambda m, x, *a, **k: seen.append(x.shape[0]) or real(m, x, *a, **k))
    r = cli(*args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert seen and seen[0] == 4 and len(seen) <= 2  # only the third chunk (4 examples), at its radii
    pd.testing.assert_frame_equal(read_table(out, "attack").df, read_table(full, "attack").df)
    assert not parts_path(out).exists()


# ---- shards ------------------------------------------------------------------------------------------------------


def test_shards_write_parts_only_and_merge_to_the_unsharded_table(cli, one_line_error, runs, tmp_path):
    base = ["attack", "--model", runs["gauss"], "-d", "gaussians", "--attack", "pgd", "--steps", "5", "--eps", "0.05",
            "--eps", "0.1", "--n-ex", "40", "--batch", "8", "-q"]
    ref, out = tmp_path / "ref.parquet", tmp_path / "s.parquet"
    assert cli(*base, "--out", ref).exit_code == 0
    r = cli(*base, "--out", out, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert not out.exists()
    assert sorted(p.name for p in parts_path(out).glob("chunk-*")) == ["chunk-000001.parquet", "chunk-000003.parquet"]
    assert cli(*base, "--out", out, "--shard", "0/2").exit_code == 0
    assert len(list(parts_path(out).glob("chunk-*"))) == 5 and not out.exists()
    r = cli(*base, "--out", out, "--resume")  # merges; computes nothing
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(read_table(out, "attack").df, read_table(ref, "attack").df)
    one_line_error(cli(*base, "--out", tmp_path / "f.parquet", "--shard", "0/2", "--force"), "--force does not apply to one shard")
    one_line_error(cli(*base, "--out", tmp_path / "f.parquet", "--shard", "2/2"), "--shard")
    assert not (tmp_path / "f.parquet").exists() and not parts_path(tmp_path / "f.parquet").exists()


def test_old_mixture_flags_are_refused_naming_the_new_spelling(cli, one_line_error, runs, tmp_path):
    out = tmp_path / "o.parquet"
    base = ["attack", "--model", runs["adaptive"], "-d", "digits", "--eps", "0.1", "--n-ex", "8", "--out", out]
    for bad, new in ((["--setting", "C"], "--attack mix-a|mix-b|mix-c|mix-d"),
                     (["--attack", "mix-d", "--alpha-weight", "2"], "--mix-attack-weight"),
                     (["--attack", "mix-b", "--alpha-max", "0.5"], "--mix-max"),
                     (["--attack", "apgd-ce", "--setting", "B"], "--attack mix-a")):
        one_line_error(cli(*base, *bad), "was renamed", new)
    one_line_error(cli(*base, "--attack", "apgd-ce", "--mix-attack-weight", "1"),
                    "--mix-attack-weight does not apply to --attack apgd-ce")
    assert not out.exists() and not parts_path(out).exists()
