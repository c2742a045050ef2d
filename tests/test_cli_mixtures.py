"""Mixtures through the six verbs: `compose --mix/--mix-sweep`, `finetune --loss mixnet`, `attack --setting`,
`certify --method mix-...` give the library's results; the old spellings (`robcli mix ...`, a mixture weight
called --alpha, --alpha-min/--alpha-max/--alpha-weight) and flags given where they do not apply are refused in
one line (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch

from robcli.models import build, make_card, save_run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
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


def test_compose_mix_exports_the_same_mixture_as_the_library(cli, models, tmp_path):
    from safetensors.torch import load_file

    from robcli.data.registry import load_split
    from robcli.models import load_model

    a, b = tmp_path / "a", tmp_path / "b"
    res = cli("compose", "--mix", "0.3", "--core", models["g"], "--robust", models["h"], "--export", a,
              "--mix-space", "logit", "--scale-g", "2", "-q")
    assert res.exit_code == 0, res.output
    from robcli.mixing.run import build_fixed_mixture

    build_fixed_mixture(models["g"], models["h"], 0.3, b, mix_space="logit", scale_g=2.0)
    ca, cb = (json.loads((p / "card.json").read_text()) for p in (a, b))
    assert ca == cb and ca["mixnet"]["alpha"] == pytest.approx(0.3) and ca["mixnet"]["mix_space"] == "logit"
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # known answer: the logit-space mixture is (1 - a) * 2 * z_g + a * z_h, up to a per-row constant
    x, _ = load_split("digits", "test").select(n_ex=16).tensors()
    g, h, m = (load_model(p).model.eval() for p in (models["g"], models["h"], str(a)))
    with torch.no_grad():
        want = 0.7 * 2 * g(x) + 0.3 * h(x)
        got = m(x)
    assert torch.allclose(torch.log_softmax(got, 1), torch.log_softmax(want, 1), atol=1e-5)


def test_compose_mix_sweep_matches_the_library(cli, models, tmp_path):
    from robcli.data.registry import load_split
    from robcli.mixing.run import sweep_fixed_mixtures
    from robcli.tables.io import read_table

    common = ["--core", models["g"], "--robust", models["h"], "-d", "digits", "--eps", "0.1", "--mix-grid", "0",
              "--mix-grid", "1", "--steps", "2", "--n-ex", "32"]
    a = tmp_path / "a.parquet"
    res = cli("compose", "--mix-sweep", *common, "--out", a)
    assert res.exit_code == 0, res.output
    ta = read_table(a, "compose")
    want, _ = sweep_fixed_mixtures(models["g"], models["h"], load_split("digits", "test").select(n_ex=32), [0, 1],
                                   eps=0.1, steps=2)
    assert ta.df.equals(want) and list(ta.df["threshold"]) == [0.0, 1.0] and ta.config["alphas"] == [0.0, 1.0]
    assert ta.meta["command"][:2] == ["compose", "--mix-sweep"]
    # alpha = 0 is g alone, alpha = 1 is h alone: their natural accuracies
    from robcli.data.registry import load_split
    from robcli.models import load_model

    x, y = load_split("digits", "test").select(n_ex=32).tensors()
    with torch.no_grad():
        accs = [float((load_model(models[k]).model.eval()(x).argmax(1) == y).float().mean()) for k in ("g", "h")]
    assert list(ta.df["nat_acc"]) == pytest.approx(accs)


def test_finetune_loss_mixnet_then_attack_setting(cli, one_line_error, models, tmp_path):
    from robcli.tables.io import read_table

    run = tmp_path / "adaptive"
    res = cli("finetune", "--loss", "mixnet", "--core", models["g"], "--robust", models["h"], "-d", "digits",
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
def test_bad_input_one_line_nothing_written(cli, one_line_error, models, tmp_path, kind, args, words):
    out = tmp_path / "out"
    rob = models["k7"] if "--robust-k7" in args else models["table"] if "--robust-table" in args else models["h"]
    core = models["table"] if "--core-table" in args else models["g"]
    extra = [a for a in args if a not in ("--robust-k7", "--robust-table", "--core-table")]
    pair = ["--core", core, "--robust", rob]
    if kind == "compose":
        cmd = ["compose", *pair, "--export", out, *extra]
    elif kind == "sweep":
        cmd = ["compose", "--mix-sweep", *pair, "-d", "digits", "--eps", "0.1", "--n-ex", "8", "--out", out, *extra]
    elif kind == "finetune":
        cmd = ["finetune", "--loss", "mixnet", *pair, "-d", "digits", "--eps", "0.1", "--epochs", "1", "--out", out, *extra]
    else:
        cmd = ["attack", "--model", models["g"], "-d", "digits", "--eps", "0.1", "--n-ex", "8", "--out", f"{out}.parquet", *extra]
        out = tmp_path / "out.parquet"
    one_line_error(cli(*cmd), *words)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_compose_without_mix_still_reads_tables_and_rejects_mix_only_flags(cli, one_line_error, models, tmp_path):
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
def test_the_mix_group_is_gone_and_names_the_new_spelling(cli, one_line_error, models, tmp_path, sub, words):
    out = tmp_path / "out"
    args = [] if sub is None else [sub, "--core", models["g"], "--robust", models["h"], "--alpha", "0.5",
                                   "--export", out, "--out", out]
    one_line_error(cli("mix", *args), *words)
    assert not list(tmp_path.iterdir())
    one_line_error(cli("mix", *args, "--help"), *words)


def _mixrun(cli, models, tmp_path, a="0.9"):
    run = tmp_path / f"mixrun{a}"
    if not run.exists():
        assert cli("compose", "--mix", a, "--core", models["g"], "--robust", models["h"], "--export", run, "-q").exit_code == 0
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
def test_certify_method_flags_are_refused_where_they_do_not_apply(cli, one_line_error, models, tmp_path, args, words):
    run = _mixrun(cli, models, tmp_path)
    out = tmp_path / "c.parquet"
    one_line_error(cli("certify", "--model", run, "-d", "digits", "--n-ex", "4", "--N0", "10", "--N", "100",
                        "--alpha", "0.01", "-o", out, *args), *words)
    assert not out.exists()


def test_certify_method_cohen_still_certifies_a_mixture_run_as_a_model(cli, models, tmp_path):
    """--method cohen (the default) is Cohen's CERTIFY of whatever --model computes: same table with and without
    the flag, and no mixture columns."""
    from robcli.tables.io import read_table

    run = _mixrun(cli, models, tmp_path)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--model", run, "-d", "digits", "--n-ex", "4", "--N0", "10", "--N", "100", "--alpha", "0.01", "-q"]
    assert cli("certify", *common, "-o", a).exit_code == 0
    assert cli("certify", *common, "--method", "cohen", "-o", b).exit_code == 0
    ta, tb = read_table(a, "certify").df, read_table(b, "certify").df
    timing = [c for c in ("time", "seconds") if c in ta.columns]
    assert ta.drop(columns=timing).equals(tb.drop(columns=timing)) and "certified_model" not in ta.columns


def test_certify_mix_methods_record_their_name_and_match_the_library(cli, models, tmp_path):
    from robcli.data.registry import load_split
    from robcli.mixing.certify import MixCertifyConfig, certify_mixture, resolve_mixture
    from robcli.tables.io import read_table

    run = _mixrun(cli, models, tmp_path)
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
