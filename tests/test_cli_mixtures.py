"""Mixtures through the six verbs, in-process: `compose --mix` (build, export) and `--mix-sweep`,
`finetune --loss mixnet`, `attack --setting`, `certify --method mix-...` give the library's results, and
mixture certify tables record which classifier they certify and who may read them as certificates; bad
input, the old spellings (`robcli mix ...`, a mixture weight called --alpha, --alpha-min/--alpha-max/
--alpha-weight) and flags given where they do not apply are refused in one line (exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robcli.models import build, make_card, save_run

# ---- members at seeded initialisation: the verbs against the library, and the refusals ---------------------


@pytest.fixture(scope="module")
def init_members(tmp_path_factory):
    """g, h (10 classes) and k7 (7 classes): tiny_cnn at seeded initialisation, untrained, with digits cards;
    "table": a file that is not a model run (refused by name)."""
    from robcli.data.registry import load_split

    d = tmp_path_factory.mktemp("spell")
    info = load_split("digits", "test").info
    paths = {}
    for name, seed, k in (("g", 0, 10), ("h", 1, 10), ("k7", 2, 7)):
        torch.manual_seed(seed)
        m = build("tiny_cnn", k, (1, 8, 8), mean=info.mean, std=info.std)
        save_run(d / name, m, make_card("tiny_cnn", k, (1, 8, 8), dataset="digits", mean=info.mean, std=info.std))
        paths[name] = str(d / name)
    table = d / "table.parquet"
    table.write_bytes(b"not read: refused by name")
    paths["table"] = str(table)
    return paths


def test_compose_mix_exports_the_same_mixture_as_the_library(cli, init_members, tmp_path):
    from safetensors.torch import load_file

    from robcli.data.registry import load_split
    from robcli.models import load_model

    a, b = tmp_path / "a", tmp_path / "b"
    res = cli("compose", "--mix", "0.3", "--core", init_members["g"], "--robust", init_members["h"], "--export", a,
              "--mix-space", "logit", "--scale-g", "2", "-q")
    assert res.exit_code == 0, res.output
    from robcli.mixing.run import build_fixed_mixture

    build_fixed_mixture(init_members["g"], init_members["h"], 0.3, b, mix_space="logit", scale_g=2.0)
    ca, cb = (json.loads((p / "card.json").read_text()) for p in (a, b))
    assert ca == cb and ca["mixnet"]["alpha"] == pytest.approx(0.3) and ca["mixnet"]["mix_space"] == "logit"
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # known answer: the logit-space mixture is (1 - a) * 2 * z_g + a * z_h, up to a per-row constant
    x, _ = load_split("digits", "test").select(n_ex=16).tensors()
    g, h, m = (load_model(p).model.eval() for p in (init_members["g"], init_members["h"], str(a)))
    with torch.no_grad():
        want = 0.7 * 2 * g(x) + 0.3 * h(x)
        got = m(x)
    assert torch.allclose(torch.log_softmax(got, 1), torch.log_softmax(want, 1), atol=1e-5)


def test_compose_mix_sweep_matches_the_library(cli, init_members, tmp_path):
    from robcli.data.registry import load_split
    from robcli.mixing.run import sweep_fixed_mixtures
    from robcli.tables.io import read_table

    common = ["--core", init_members["g"], "--robust", init_members["h"], "-d", "digits", "--eps", "0.1", "--mix-grid", "0",
              "--mix-grid", "1", "--steps", "2", "--n-ex", "32"]
    a = tmp_path / "a.parquet"
    res = cli("compose", "--mix-sweep", *common, "--out", a)
    assert res.exit_code == 0, res.output
    ta = read_table(a, "compose")
    want, _ = sweep_fixed_mixtures(init_members["g"], init_members["h"], load_split("digits", "test").select(n_ex=32), [0, 1],
                                   eps=0.1, steps=2)
    assert ta.df.equals(want) and list(ta.df["threshold"]) == [0.0, 1.0] and ta.config["alphas"] == [0.0, 1.0]
    assert ta.meta["command"][:2] == ["compose", "--mix-sweep"]
    # alpha = 0 is g alone, alpha = 1 is h alone: their natural accuracies
    from robcli.data.registry import load_split
    from robcli.models import load_model

    x, y = load_split("digits", "test").select(n_ex=32).tensors()
    with torch.no_grad():
        accs = [float((load_model(init_members[k]).model.eval()(x).argmax(1) == y).float().mean()) for k in ("g", "h")]
    assert list(ta.df["nat_acc"]) == pytest.approx(accs)


def test_finetune_loss_mixnet_then_attack_setting(cli, one_line_error, init_members, tmp_path):
    from robcli.tables.io import read_table

    run = tmp_path / "adaptive"
    res = cli("finetune", "--loss", "mixnet", "--core", init_members["g"], "--robust", init_members["h"], "-d", "digits",
              "--eps", "0.1", "--train-attack", "A", "--attack-steps", "1", "--epochs", "1", "--batch", "512",
              "--mix-min", "0.2", "--mix-max", "0.8", "--out", run, "-q")
    assert res.exit_code == 0, res.output
    card = json.loads((run / "card.json").read_text())
    assert card["arch"] == "mixnet" and card["mixnet"]["alpha"] is None
    assert card["mixnet"]["alpha_range"] == [0.2, 0.8]
    assert card["training"]["loss"] == "mixnet" and card["training"]["config"]["setting"] == "A"
    assert card["training"]["command"][:3] == ["finetune", "--loss", "mixnet"]

    a = tmp_path / "a.parquet"
    common = ["--model", run, "-d", "digits", "--eps", "0.1", "--steps", "3", "--n-ex", "24"]
    res = cli("attack", *common, "--attack", "MIX-a", "--out", a, "-q")
    assert res.exit_code == 0, res.output
    da = read_table(a, "attack").df
    assert (da["attack"] == "mix-A").all() and len(da) == 24
    assert da["alpha_clean"].between(0.2, 0.8).all()

    # setting D's knobs: the new spellings on `attack --attack mix-d`, recorded in the table's config
    c = tmp_path / "c.parquet"
    knobs = ["--mix-attack-weight", "0.5", "--n-targets", "2", "--n-queries", "10", "--mix-min", "0.1", "--mix-max", "0.6"]
    base = ["--model", run, "-d", "digits", "--eps", "0.1", "--attack", "mix-d", "--n-ex", "12"]
    res = cli("attack", *base, *knobs, "--steps", "3", "--out", c, "-q")
    assert res.exit_code == 0, res.output
    tc = read_table(c, "attack")
    assert (tc.df["attack"] == "mix-D").all() and tc.config["attack"] == "mix-D" and tc.config["steps"] == 3
    assert tc.config["mix_attack_weight"] == 0.5 and tc.config["n_targets"] == 2 and tc.config["n_queries"] == 10
    assert [tc.config["mix_min"], tc.config["mix_max"]] == [0.1, 0.6] and tc.df["alpha_clean"].between(0.1, 0.6).all()
    for bad, words in ((["--mix-attack-weight", "-1"], ["--mix-attack-weight", ">= 0"]),
                       (["--mix-attack-weight", "nan"], ["--mix-attack-weight"]),
                       (["--n-targets", "0"], ["--n-targets"]),
                       (["--mix-min", "0.9", "--mix-max", "0.1"], ["alpha_min 0.9 > alpha_max 0.1"]),
                       (["--mix-min", "0.1"], ["both --mix-min and --mix-max"]),
                       (["--alpha-weight", "0.5"], ["--alpha-weight was renamed", "--mix-attack-weight"]),
                       (["--alpha-min", "0.1", "--alpha-max", "0.5"], ["--alpha-min was renamed", "--mix-min"])):
        e = tmp_path / "e.parquet"
        one_line_error(cli("attack", *base, *bad, "--out", e), *words)
        assert not e.exists() and not (tmp_path / "e.parquet.parts").exists()


def test_listed_losses_include_mixnet_and_the_generic_ones(cli):
    from robcli.losses import LOSSES, list_losses

    assert {"std", "trades", "era", "dga", "noise", "cra", "mixnet"} <= set(list_losses())
    assert "mixnet" not in LOSSES  # routed to robcli.mixing, never run by the generic training loop
    res = cli("list", "losses")
    assert res.exit_code == 0 and "mixnet" in res.output.split()


@pytest.mark.parametrize("kind,args,words", [
    ("compose", ["--mix", "1.5"], ["--mix", "[0, 1]"]),
    ("compose", ["--mix", "-0.1"], ["[0, 1]"]),
    ("compose", ["--mix", "0.5", "--robust-k7"], ["class counts"]),
    ("compose", ["--mix", "0.5", "--core-table"], ["not tables", "--core"]),
    ("compose", ["--mix", "0.5", "--eps", "0.1"], ["--eps does not apply to --mix A", "--mix-sweep"]),
    ("compose", ["--mix", "0.5", "--selector", "sr"], ["--selector does not apply to --mix/--mix-sweep"]),
    ("compose", ["--mix", "0.5", "--mix-sweep"], ["not both"]),
    ("compose", ["--mix", "0.5", "--batch", "256"], ["--batch does not apply to --mix A"]),  # given = refused, even at the default
    ("sweep", ["--mix-grid", "2"], ["--mix-grid", "[0, 1]"]),
    ("sweep", ["--alpha", "0.5"], ["compose --alpha is gone", "--mix-grid"]),
    ("sweep", ["--export-inner-steps", "20"], ["--export-inner-steps does not apply to --mix/--mix-sweep"]),
    ("sweep", ["--robust-k7"], ["7 classes"]),
    ("sweep", ["--robust-table"], ["not tables", "--robust"]),
    ("finetune", ["--mix-min", "0.9", "--mix-max", "0.1"], ["--mix-min 0.9 > --mix-max 0.1"]),
    ("finetune", ["--alpha-min", "0.1"], ["finetune --alpha-min is gone", "use --mix-min"]),
    ("finetune", ["--alpha-max", "0.9"], ["finetune --alpha-max is gone", "use --mix-max"]),
    ("finetune", ["--alpha-weight", "0.5"], ["finetune --alpha-weight is gone", "use --mix-attack-weight"]),
    ("finetune", ["--beta", "1"], ["--beta does not apply to --loss mixnet"]),
    ("finetune", ["--weight-decay", "2e-4"], ["--weight-decay does not apply to --loss mixnet"]),
    ("finetune", ["--robust-k7"], ["7 classes"]),
    ("finetune", ["--model", "tiny_cnn"], ["--model does not apply to --loss mixnet"]),
    ("finetune", ["--train-attack", "D"], ["--train-attack", "choose A"]),
])
def test_bad_input_one_line_nothing_written(cli, one_line_error, init_members, tmp_path, kind, args, words):
    out = tmp_path / "out"
    rob = init_members["k7"] if "--robust-k7" in args else init_members["table"] if "--robust-table" in args else init_members["h"]
    core = init_members["table"] if "--core-table" in args else init_members["g"]
    extra = [a for a in args if a not in ("--robust-k7", "--robust-table", "--core-table")]
    pair = ["--core", core, "--robust", rob]
    if kind == "compose":
        cmd = ["compose", *pair, "--export", out, *extra]
    elif kind == "sweep":
        cmd = ["compose", "--mix-sweep", *pair, "-d", "digits", "--eps", "0.1", "--n-ex", "8", "--out", out, *extra]
    elif kind == "finetune":
        cmd = ["finetune", "--loss", "mixnet", *pair, "-d", "digits", "--eps", "0.1", "--epochs", "1", "--out", out, *extra]
    else:
        cmd = ["attack", "--model", init_members["g"], "-d", "digits", "--eps", "0.1", "--n-ex", "8", "--out", f"{out}.parquet", *extra]
        out = tmp_path / "out.parquet"
    one_line_error(cli(*cmd), *words)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_compose_without_mix_still_reads_tables_and_rejects_mix_only_flags(cli, one_line_error, init_members, tmp_path):
    res = cli("compose", "--core", "c.parquet", "--robust", "r.parquet", "--eps", "0.1", "--scale-g", "2")
    one_line_error(res, "--scale-g does not apply without --mix/--mix-sweep")
    res = cli("compose", "--core", "c.parquet", "--robust", "r.parquet", "--eps", "0.1", "--mix-grid", "0.5")
    one_line_error(res, "--mix-grid does not apply without --mix/--mix-sweep")
    res = cli("compose", "--core", "c.parquet", "--robust", "r.parquet")
    one_line_error(res, "missing --eps")


@pytest.mark.parametrize("sub,words", [
    ("build", ["robcli mix build is gone", "robcli compose --mix A --core MODEL --robust MODEL --export RUN"]),
    ("sweep", ["robcli mix sweep is gone", "robcli compose --mix-sweep", "--mix-grid"]),
    ("train", ["robcli mix train is gone", "robcli finetune --loss mixnet"]),
    ("attack", ["robcli mix attack is gone", "robcli attack --attack mix-a"]),
    ("certify", ["robcli mix certify is gone", "robcli certify --method mix-"]),
    (None, ["robcli mix is gone", "compose --mix"]),
])
def test_the_mix_group_is_gone_and_names_the_new_spelling(cli, one_line_error, init_members, tmp_path, sub, words):
    out = tmp_path / "out"
    args = [] if sub is None else [sub, "--core", init_members["g"], "--robust", init_members["h"], "--alpha", "0.5",
                                   "--export", out, "--out", out]
    one_line_error(cli("mix", *args), *words)
    assert not list(tmp_path.iterdir())
    one_line_error(cli("mix", *args, "--help"), *words)


def _mixrun(cli, init_members, tmp_path, a="0.9"):
    run = tmp_path / f"mixrun{a}"
    if not run.exists():
        assert cli("compose", "--mix", a, "--core", init_members["g"], "--robust", init_members["h"], "--export", run, "-q").exit_code == 0
    return run


@pytest.mark.parametrize("args,words", [
    (["--method", "smoothing", "--sigma", "0.25"], ["--method smoothing", "now called --method mix-smoothed-h"]),
    (["--method", "lipschitz", "--lipschitz", "1"], ["now called --method mix-lipschitz"]),
    (["--method", "local", "--eps", "0.1"], ["now called --method mix-local-estimate"]),
    (["--method", "nope"], ["choose cohen, mix-smoothed-h"]),
    (["--method", "mix-lipschitz", "--lipschitz", "1", "--sigma", "0.25"], ["--sigma does not apply to --method mix-lipschitz"]),
    (["--method", "mix-lipschitz", "--lipschitz", "1", "--eps", "0.1"], ["--eps does not apply to --method mix-lipschitz"]),
    (["--method", "mix-smoothed-h", "--sigma", "0.25", "--lipschitz", "1"], ["--lipschitz does not apply to --method mix-smoothed-h"]),
    (["--method", "mix-smoothed-h", "--sigma", "0.25", "--norm", "Linf"], ["--norm does not apply", "L2"]),
    (["--method", "mix-smoothed-h", "--sigma", "0.25", "--mode", "predict"], ["--mode does not apply to --method mix-smoothed-h"]),
    (["--method", "mix-smoothed-h", "--sigma", "0.25", "--precision", "bf16"], ["--precision does not apply"]),
    (["--method", "mix-smoothed-h"], ["needs --sigma"]),
    (["--method", "mix-lipschitz"], ["needs --lipschitz"]),
    (["--method", "mix-local-estimate"], ["needs --eps"]),
    (["--lipschitz", "1"], ["--lipschitz does not apply to --method cohen"]),
    (["--method", "cohen", "--mix", "0.9", "--sigma", "0.25"], ["--mix does not apply to --method cohen"]),
])
def test_certify_method_flags_are_refused_where_they_do_not_apply(cli, one_line_error, init_members, tmp_path, args, words):
    run = _mixrun(cli, init_members, tmp_path)
    out = tmp_path / "c.parquet"
    one_line_error(cli("certify", "--model", run, "-d", "digits", "--n-ex", "4", "--N0", "10", "--N", "100",
                        "--alpha", "0.01", "-o", out, *args), *words)
    assert not out.exists()


def test_certify_method_cohen_still_certifies_a_mixture_run_as_a_model(cli, init_members, tmp_path):
    """--method cohen (the default) is Cohen's CERTIFY of whatever --model computes: same table with and without
    the flag, and no mixture columns."""
    from robcli.tables.io import read_table

    run = _mixrun(cli, init_members, tmp_path)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--model", run, "-d", "digits", "--n-ex", "4", "--N0", "10", "--N", "100", "--alpha", "0.01", "-q"]
    assert cli("certify", *common, "-o", a).exit_code == 0
    assert cli("certify", *common, "--method", "cohen", "-o", b).exit_code == 0
    ta, tb = read_table(a, "certify").df, read_table(b, "certify").df
    timing = [c for c in ("time", "seconds") if c in ta.columns]
    assert ta.drop(columns=timing).equals(tb.drop(columns=timing)) and "certified_model" not in ta.columns


def test_certify_mix_methods_record_their_name_and_match_the_library(cli, init_members, tmp_path):
    from robcli.data.registry import load_split
    from robcli.mixing.certify import MixCertifyConfig, certify_mixture, resolve_mixture
    from robcli.tables.io import read_table

    run = _mixrun(cli, init_members, tmp_path)
    out = tmp_path / "c.parquet"
    res = cli("certify", "--model", run, "--method", "mix-lipschitz", "--lipschitz", "0.5", "-d", "digits",
              "--n-ex", "8", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    t = read_table(out, "certify")
    assert (t.df["method"] == "mix-lipschitz").all() and t.config["method"] == "mix-lipschitz"
    assert (t.df["certified_model"] == "mixture").all() and t.config["model"] == str(run)
    df, config, _ = certify_mixture(resolve_mixture(str(run)), load_split("digits", "test").select(n_ex=8),
                                    MixCertifyConfig(method="mix-lipschitz", lipschitz=0.5))
    assert df.drop(columns="time").equals(t.df.drop(columns="time"))


# ---- members trained on digits: build, train, sweep and certify mixtures of them ---------------------------


@pytest.fixture(scope="module")
def trained_members(tmp_path_factory):
    """g, h: tiny_cnn trained one pass over 512 digits (seeds 0, 1); k7: an untrained 7-class tiny_cnn whose
    card names no data set."""
    import torch.nn.functional as F

    from robcli.data.registry import load_split

    d = tmp_path_factory.mktemp("members")
    tr = load_split("digits", "train")
    x, y = tr.tensors()
    x, y = x[:512], y[:512]
    paths = {}
    for name, seed in (("g", 0), ("h", 1)):
        torch.manual_seed(seed)
        m = build("tiny_cnn", 10, (1, 8, 8), mean=tr.info.mean, std=tr.info.std)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        m.train()
        for s in range(0, len(x), 64):
            F.cross_entropy(m(x[s:s + 64]), y[s:s + 64]).backward()
            opt.step()
            opt.zero_grad()
        m.eval()
        save_run(d / name, m, make_card("tiny_cnn", 10, (1, 8, 8), dataset="digits", mean=tr.info.mean, std=tr.info.std))
        paths[name] = str(d / name)
    torch.manual_seed(2)
    other = build("tiny_cnn", 7, (1, 8, 8))
    save_run(d / "k7", other, make_card("tiny_cnn", 7, (1, 8, 8)))
    paths["k7"] = str(d / "k7")
    return paths


def test_build_then_attack_and_load_through_load_model(cli, trained_members, tmp_path):
    from robcli.models import load_model
    from robcli.tables.io import read_table

    run = tmp_path / "mix"
    res = cli("compose", "--mix", "0.7", "--core", trained_members["g"], "--robust", trained_members["h"], "--export", run, "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "card.json").read_text())["arch"] == "mixnet"
    lm = load_model(str(run))  # the run-kind hook of robcli.models.load: every command that takes --model loads a mixture
    assert lm.kind == "mixnet" and float(lm.model.alpha_fixed) == pytest.approx(0.7)
    # the card keeps the Python float (not float32's 0.699999988) and the loaded mixture applies exactly it
    assert json.loads((run / "card.json").read_text())["mixnet"]["alpha"] == 0.7
    assert lm.model.alpha_value == 0.7
    out = tmp_path / "att.parquet"
    res = cli("attack", "--model", run, "-d", "digits", "--eps", "0.1", "--attack", "mix-b", "--steps", "5",
              "--n-ex", "40", "-o", out)
    assert res.exit_code == 0, res.output
    t = read_table(out, "attack")
    assert len(t.df) == 40 and (t.df["attack"] == "mix-B").all()
    assert t.df["alpha_clean"].to_numpy() == pytest.approx([0.7] * 40)
    assert (t.df["pert_norm"] <= 0.1 + 1e-6).all()


def test_train_writes_an_adaptive_run_and_attack_d_records_alpha(cli, trained_members, tmp_path):
    from robcli.tables.io import read_table

    run = tmp_path / "adaptive"
    res = cli("finetune", "--loss", "mixnet", "--core", trained_members["g"], "--robust", trained_members["h"], "-d", "digits",
              "--eps", "0.1", "--out", run, "--epochs", "1", "--n-ex", "128", "--attack-steps", "2", "--mix-min", "0.3",
              "--mix-max", "0.9", "--ema", "0.8", "--blocks", "2", "--eps-low", "0.5", "--mix-attack-weight", "0.3", "-q")
    assert res.exit_code == 0, res.output
    card = json.loads((run / "card.json").read_text())
    assert card["mixnet"]["alpha"] is None and card["mixnet"]["alpha_range"] == [0.3, 0.9]
    cfg = card["training"]["config"]
    assert cfg["blocks"] == 2 and cfg["eps_low"] == 0.5 and cfg["alpha_weight"] == 0.3
    assert card["mixnet"]["alpha_net"]["blocks"] == 2
    assert card["training"]["config"]["c_bce"] == 1.5 and len(card["training"]["log"]) == 1
    assert cfg["batch"] == 128  # --loss mixnet's own default (AdamW on the mixing network), not finetune's 200
    out = tmp_path / "d.parquet"
    res = cli("attack", "--model", run, "-d", "digits", "--eps", "0.1", "--attack", "mix-d", "--steps", "5",
              "--n-targets", "2", "--n-queries", "20", "--n-ex", "16", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    t = read_table(out, "attack")
    assert t.config["n_queries"] == 20 and t.config["n_targets"] == 2
    df = t.df
    assert df["alpha_clean"].between(0.3, 0.9).all() and df["alpha_adv"].between(0.3, 0.9).all()


def test_sweep_writes_a_compose_table(cli, trained_members, tmp_path):
    from robcli.tables.io import read_table

    out = tmp_path / "sweep.parquet"
    res = cli("compose", "--mix-sweep", "--core", trained_members["g"], "--robust", trained_members["h"], "-d", "digits", "--eps",
              "0.1", "--mix-grid", "0", "--mix-grid", "0.5", "--mix-grid", "1", "--steps", "3", "--n-ex", "64", "-o", out)
    assert res.exit_code == 0, res.output
    t = read_table(out, "compose")
    assert list(t.df["threshold"]) == [0.0, 0.5, 1.0] and (t.df["selector"] == "fixed-alpha").all()
    assert "nat_acc" in res.output


def test_certify_mixture_radii_table(cli, trained_members, tmp_path):
    from robcli.tables.io import read_table

    out = tmp_path / "cert.parquet"
    res = cli("certify", "--method", "mix-smoothed-h", "--model", trained_members["h"], "-d", "digits", "--mix", "0.8",
              "--sigma", "0.25", "--N0", "20", "--N", "200", "--alpha", "0.01", "--n-ex", "8", "-o", out)
    assert res.exit_code == 0, res.output
    df = read_table(out, "certify").df
    assert len(df) == 8 and (df["radius"] >= 0).all() and (df["mix_alpha"] == 0.8).all()
    assert (df["method"] == "mix-smoothed-h").all() and read_table(out, "certify").config["method"] == "mix-smoothed-h"
    assert ((df["predict"] == -1) == (df["radius"] == 0)).all()
    # L2 certificates carry the Linf radius they imply (r / sqrt(64) on digits), so an Linf question can be
    # answered soundly (issue 9, item 7b)
    assert (df["norm"] == "L2").all()
    np.testing.assert_allclose(df["radius_linf"], df["radius"] / 8.0)
    out2 = tmp_path / "local.parquet"
    res = cli("certify", "--model", trained_members["h"], "-d", "digits", "--mix", "0.9", "--method", "mix-local-estimate",
              "--eps", "0.05", "--norm", "Linf", "--n-ex", "4", "-o", out2)
    assert res.exit_code == 0, res.output
    assert "ESTIMATE" in res.output
    df2 = read_table(out2, "certify").df
    assert df2["radius_is_estimate"].all() and (df2["method"] == "mix-local-estimate").all()
    assert (df2["norm"] == "Linf").all() and (df2["radius_linf"] == df2["radius"]).all()


@pytest.mark.parametrize("method", ["mix-smoothed-h", "mix-lipschitz-rs"])
def test_certify_refuses_an_estimation_sample_below_the_mixture_floor(cli, one_line_error, trained_members, tmp_path, method):
    """At weight 0.8 and alpha 0.001 the floor is 17 (not CERTIFY's ceil(log2(1/alpha)) = 10): N = 16 would let
    every input abstain, so it is refused in one line naming the floor; N = 17 runs."""
    out = tmp_path / "cert.parquet"
    common = ["--model", trained_members["h"], "-d", "digits", "--mix", "0.8", "--sigma", "0.25", "--method", method,
              "--N0", "10", "--alpha", "0.001", "--n-ex", "2"]
    one_line_error(cli("certify", *common, "--N", "16", "-o", out), "--N 16 is too small", "N >= 17")
    assert not out.exists()
    res = cli("certify", *common, "--N", "17", "-o", out, "-q")
    assert res.exit_code == 0, res.output


def test_certify_reads_alpha_scale_and_robust_member_from_a_mixture_run(cli, trained_members, tmp_path):
    from robcli.tables.io import read_table

    run = tmp_path / "mix"
    assert cli("compose", "--mix", "0.95", "--core", trained_members["g"], "--robust", trained_members["h"], "--scale-h", "3",
               "--export", run, "-q").exit_code == 0
    common = ["-d", "digits", "--method", "mix-lipschitz", "--lipschitz", "0.3", "--norm", "L2", "--n-ex", "16"]
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    res = cli("certify", "--model", run, *common, "-o", a, "-q")
    assert res.exit_code == 0, res.output
    res = cli("certify", "--model", trained_members["h"], "--mix", "0.95", "--scale-h", "3", *common, "-o", b, "-q")
    assert res.exit_code == 0, res.output
    ta, tb = read_table(a, "certify"), read_table(b, "certify")
    timing = [k for k in ta.df.columns if k in ("seconds", "time")]
    assert ta.df.drop(columns=timing).equals(tb.df.drop(columns=timing)) and (ta.df["mix_alpha"] == 0.95).all()
    assert tb.config["model"] is None and tb.config["robust"] == trained_members["h"]  # h for any core model
    assert (ta.df["radius"] > 0).any()
    assert ta.config["scale_h"] == 3 and ta.config["mix_alpha"] == 0.95 and ta.config["model"] == str(run)
    # the scale matters (so the card's value was really used): without it the radii differ
    res = cli("certify", "--model", trained_members["h"], "--mix", "0.95", *common, "-o", c, "-q")
    assert res.exit_code == 0 and not read_table(c, "certify").df["radius"].equals(ta.df["radius"])
    # explicit flags that agree with the card are accepted
    d = tmp_path / "d.parquet"
    res = cli("certify", "--model", run, "--mix", "0.95", "--scale-h", "3", *common, "-o", d, "-q")
    assert res.exit_code == 0, res.output
    # conflicting ones, an adaptive run, and neither spelling: one line, nothing written
    adaptive = tmp_path / "adaptive"
    assert cli("finetune", "--loss", "mixnet", "--core", trained_members["g"], "--robust", trained_members["h"], "-d", "digits",
               "--eps", "0.1", "--epochs", "1", "--n-ex", "64", "--attack-steps", "1", "-o", adaptive, "-q").exit_code == 0
    e = tmp_path / "e.parquet"
    for extra, words in ((["--model", run, "--mix", "0.7"], ["conflicts with --mix 0.7", "alpha is 0.95"]),
                         (["--model", run, "--scale-h", "2"], ["conflicts with --scale-h 2", "scale_h is 3"]),
                         (["--model", adaptive], ["adaptive mixture"]),
                         (["--model", trained_members["h"]], ["not a mixture run directory", "--mix A"])):
        res = cli("certify", *extra, *common, "-o", e)
        assert res.exit_code != 0
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("robcli: error:") and all(w in lines[0] for w in words), res.output
        assert not e.exists()


@pytest.mark.parametrize("args,words", [
    (["build", "--mix", "1.5"], ["--mix", "[0, 1]"]),
    (["build", "--mix", "0.5", "--robust-k7"], ["class counts"]),
    (["train", "--mix-min", "0.9", "--mix-max", "0.2"], ["--mix-min 0.9 > --mix-max 0.2"]),
    (["train", "--layers-g", "net.nope,net.features.6"], ["no layer 'net.nope'", "available layers"]),
    (["sweep", "--mix-grid", "-0.2"], ["--mix-grid", "[0, 1]"]),
    (["train", "--eps-low", "1.5"], ["--eps-low 1.5", "[0, 1]"]),
    (["train", "--eps-low", "nan"], ["--eps-low", "[0, 1]"]),
    (["train", "--mix-attack-weight", "-0.5"], ["-0.5", ">= 0"]),
    (["train", "--mix-attack-weight", "inf"], [">= 0"]),
    (["train", "--blocks", "0"], ["--blocks", ">= 1"]),
])
def test_bad_build_train_sweep_values_one_line_nothing_written(cli, one_line_error, trained_members, tmp_path, args, words):
    out = tmp_path / "out"
    sub = args[0]
    rob = trained_members["k7"] if "--robust-k7" in args else trained_members["h"]
    extra = [a for a in args[1:] if a != "--robust-k7"]
    common = ["--core", trained_members["g"], "--robust", rob]
    if sub == "build":
        cmd = ["compose", *common, "--export", out, *extra]
    elif sub == "train":
        cmd = ["finetune", "--loss", "mixnet", *common, "-d", "digits", "--eps", "0.1", "--out", out, "--epochs", "1",
               "--n-ex", "64", *extra]
    else:
        cmd = ["compose", "--mix-sweep", *common, "-d", "digits", "--eps", "0.1", "-o", out, "--n-ex", "8", *extra]
    one_line_error(cli(*cmd), *words)
    assert not out.exists()


def test_attack_setting_a_on_fixed_alpha_is_a_usage_error(cli, one_line_error, trained_members, tmp_path):
    run = tmp_path / "mix"
    assert cli("compose", "--mix", "0.6", "--core", trained_members["g"], "--robust", trained_members["h"], "--export", run,
               "-q").exit_code == 0
    out = tmp_path / "a.parquet"
    one_line_error(cli("attack", "--model", run, "-d", "digits", "--eps", "0.1", "--attack", "mix-a", "-o", out),
                    "fixed alpha")
    assert not out.exists()


# ---- which classifier a mixture certify table certifies, and who may read it as a certificate ----------------


@pytest.fixture(scope="module")
def mixcerts(cli, trained_members, tmp_path_factory):
    """One table per mix certify method on the same 16 digits (L2), and the mixture run dir they refer to."""
    d = tmp_path_factory.mktemp("mixcerts")
    run = d / "mix"
    assert cli("compose", "--mix", "0.95", "--core", trained_members["g"], "--robust", trained_members["h"], "--scale-h", "10",
               "--export", run, "-q").exit_code == 0
    common = ["-d", "digits", "--n-ex", "16"]
    smoothed = ["--sigma", "0.25", "--N0", "20", "--N", "200", "--alpha", "0.01"]
    specs = {
        "smoothing": ["--model", run, "--method", "mix-smoothed-h", *smoothed],
        "lipschitz-rs": ["--model", trained_members["h"], "--mix", "0.95", "--method", "mix-lipschitz-rs", *smoothed],
        "lipschitz": ["--model", run, "--method", "mix-lipschitz", "--lipschitz", "0.3", "--norm", "L2"],
        "lipschitz-h": ["--model", trained_members["h"], "--mix", "0.95", "--scale-h", "10", "--method", "mix-lipschitz",
                        "--lipschitz", "0.3", "--norm", "L2"],
        "local": ["--model", run, "--method", "mix-local-estimate", "--eps", "0.05", "--norm", "L2"],
    }
    out = {"run": str(run)}
    for name, args in specs.items():
        p = d / f"{name}.parquet"
        res = cli("certify", *args, *common, "-o", p)
        assert res.exit_code == 0, res.output
        out[name] = str(p)
        out[name + ":output"] = res.output
    return out


def test_certify_tables_record_and_print_which_classifier_they_certify(mixcerts):
    from robcli.tables.io import read_table

    want = {"smoothing": ("mixture-with-smoothed-h", False), "lipschitz-rs": ("mixture-with-smoothed-h", False),
            "lipschitz": ("mixture", False), "lipschitz-h": ("mixture", False), "local": ("mixture", True)}
    for name, (cm, est) in want.items():
        t = read_table(mixcerts[name], "certify")
        assert (t.df["certified_model"] == cm).all() and t.config["certified_model"] == cm, name
        assert t.config["radius_is_estimate"] is est and (t.df["radius_is_estimate"] == est).all(), name
        assert f"{'estimates radii of' if est else 'certifies'} {cm} (" in mixcerts[name + ":output"], name
    assert "not what a mixture run directory computes" in mixcerts["smoothing:output"]
    # --model: the certified run directory is the first model of the provenance, then the robust member
    t = read_table(mixcerts["lipschitz"], "certify")
    assert t.meta["models"][0]["path"] == mixcerts["run"] and len(t.meta["models"]) >= 2


def test_smoothed_h_certificates_are_refused_as_certificates_of_a_model(cli, one_line_error, mixcerts, tmp_path):
    out = tmp_path / "x.parquet"
    for name in ("smoothing", "lipschitz-rs"):
        t = mixcerts[name]
        words = (t, "certifies mixture-with-smoothed-h", "Gaussian-smoothed")
        one_line_error(cli("compose", "-r", t, "-c", mixcerts["lipschitz"], "--eps", "0.01", "-o", out), *words)
        one_line_error(cli("compose", "-r", mixcerts["lipschitz"], "-c", t, "--eps", "0.01", "-o", out), *words)
        one_line_error(cli("partition", t, "--radius", "0.01", "-o", out), *words)
        one_line_error(cli("report", t, "-o", tmp_path / "r.md"), *words)
        assert not out.exists() and not (tmp_path / "r.md").exists()


def test_tables_written_before_the_column_are_read_from_radius_kind(cli, one_line_error, mixcerts, tmp_path):
    """A smoothed-h table written by an older robcli (no certified_model column) is refused all the same."""
    import pyarrow.parquet as pq

    old = tmp_path / "old.parquet"
    tab = pq.read_table(mixcerts["smoothing"])
    tab = tab.drop([c for c in ("certified_model",) if c in tab.column_names])
    meta = dict(tab.schema.metadata)
    cfg = json.loads(meta[b"robcli.config"])
    for k in ("certified_model", "certified_model_is", "radius_is_estimate"):
        cfg.pop(k, None)
    meta[b"robcli.config"] = json.dumps(cfg).encode()
    pq.write_table(tab.replace_schema_metadata(meta), old)
    one_line_error(cli("partition", old, "--radius", "0.01"), str(old), "certifies mixture-with-smoothed-h")


def test_local_estimates_are_refused_by_compose_and_partition_and_labelled_in_reports(cli, one_line_error, mixcerts, tmp_path):
    from robcli.analysis.metrics import check_certificate
    from robcli.errors import TableError
    from robcli.tables.io import read_table

    t = mixcerts["local"]
    out = tmp_path / "x.parquet"
    for args in (("compose", "-r", t, "-c", mixcerts["lipschitz"], "--eps", "0.01"),
                 ("compose", "-r", mixcerts["lipschitz"], "-c", t, "--eps", "0.01"),
                 ("partition", t, "--radius", "0.01")):
        one_line_error(cli(*args, "-o", out), t, "radius ESTIMATES", "not certificates")
        assert not out.exists()
    # negative control: the same table with the flag off is accepted (the refusal is the flag's doing)
    tab = read_table(t, "certify")
    tab.df["radius_is_estimate"] = False
    tab.meta["config"]["radius_is_estimate"] = False
    check_certificate(tab)
    tab.df["radius_is_estimate"] = True
    with pytest.raises(TableError, match="ESTIMATES"):
        check_certificate(tab)
    rep = tmp_path / "r.md"
    res = cli("report", t, mixcerts["lipschitz"], "-o", rep, "--format", "markdown")
    assert res.exit_code == 0, res.output
    text = rep.read_text()
    assert "are estimates" in text
    rows = [ln.split("|")[1].strip() for ln in text.splitlines() if ln.startswith("| mix")]
    # the accuracy and selector sections: the estimate labelled, the certificate not; the confidence statement
    # (acc_lb@r) only for the certificate: an estimate has no alpha to bound
    assert rows == ["mix [ESTIMATE]", "mix"] * 2 + ["mix"]
    assert "Tables of radius estimates are left out" in text


def test_lipschitz_mixture_certificates_stay_usable_and_name_the_mixture(cli, one_line_error, mixcerts, trained_members, tmp_path):
    from robcli.tables.io import read_table

    run, t = mixcerts["run"], mixcerts["lipschitz"]
    res = cli("partition", t, "--radius", "0.01")
    assert res.exit_code == 0, res.output
    assert run in res.output and "lipschitz-given(mix_alpha=0.95)" in res.output
    out = tmp_path / "c.parquet"
    res = cli("compose", "-r", t, "-c", mixcerts["lipschitz-h"], "--eps", "0.01", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    df = read_table(out, "compose").df
    assert df["robust_models"].iloc[0] == run  # the mixture, not its robust member h
    assert df["core_model"].iloc[0] == f"mixture(h={trained_members['h']}, alpha=0.95)"
    # the run directory given for the table must be the mixture it certifies, not its robust member
    one_line_error(cli("compose", "-r", t, "-c", mixcerts["lipschitz-h"], "--eps", "0.01", "--robust-model", trained_members["h"],
                        "-o", out, "--force"), t, f"certifies the mixture run {run}, not {trained_members['h']}")
    one_line_error(cli("compose", "-r", mixcerts["lipschitz-h"], "-c", t, "--eps", "0.01", "--robust-model", run,
                        "-o", out, "--force"), "for any core model", "certify --method mix-... --model RUN")
