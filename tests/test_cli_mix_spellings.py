"""Mixture spellings: `compose --mix/--mix-sweep`, `finetune --loss mixnet`, `attack --attack mix-a..mix-d` share `robcli mix`'s
code: same outputs as the `mix` subcommands, and bad input = one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pandas as pd
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


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robcli: error:"), res.output
    for w in words:
        assert w in lines[0], lines[0]


def test_compose_mix_exports_the_same_mixture_as_mix_build(cli, models, tmp_path):
    from safetensors.torch import load_file

    from robcli.data.registry import load_split
    from robcli.models import load_model

    a, b = tmp_path / "a", tmp_path / "b"
    res = cli("compose", "--mix", "0.3", "--core", models["g"], "--robust", models["h"], "--export", a,
              "--mix-space", "logit", "--scale-g", "2", "-q")
    assert res.exit_code == 0, res.output
    res = cli("mix", "build", "--alpha", "0.3", "--core", models["g"], "--robust", models["h"], "--export", b,
              "--mix-space", "logit", "--scale-g", "2", "-q")
    assert res.exit_code == 0, res.output
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


def test_compose_mix_sweep_matches_mix_sweep(cli, models, tmp_path):
    from robcli.tables.io import read_table

    common = ["--core", models["g"], "--robust", models["h"], "-d", "digits", "--eps", "0.1", "--alpha", "0",
              "--alpha", "1", "--steps", "2", "--n-ex", "32"]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    res = cli("compose", "--mix-sweep", *common, "--out", a)
    assert res.exit_code == 0, res.output
    assert cli("mix", "sweep", *common, "--out", b).exit_code == 0
    ta, tb = read_table(a, "compose"), read_table(b, "compose")
    assert ta.df.equals(tb.df) and list(ta.df["threshold"]) == [0.0, 1.0]
    assert ta.meta["command"][:2] == ["compose", "--mix-sweep"]
    # alpha = 0 is g alone, alpha = 1 is h alone: their natural accuracies
    from robcli.data.registry import load_split
    from robcli.models import load_model

    x, y = load_split("digits", "test").select(n_ex=32).tensors()
    with torch.no_grad():
        accs = [float((load_model(models[k]).model.eval()(x).argmax(1) == y).float().mean()) for k in ("g", "h")]
    assert list(ta.df["nat_acc"]) == pytest.approx(accs)


def test_finetune_loss_mixnet_then_attack_setting(cli, models, tmp_path):
    from robcli.tables.io import read_table

    run = tmp_path / "adaptive"
    res = cli("finetune", "--loss", "mixnet", "--core", models["g"], "--robust", models["h"], "-d", "digits",
              "--eps", "0.1", "--train-attack", "A", "--attack-steps", "1", "--epochs", "1", "--batch", "512",
              "--alpha-min", "0.2", "--alpha-max", "0.8", "--out", run, "-q")
    assert res.exit_code == 0, res.output
    card = json.loads((run / "card.json").read_text())
    assert card["arch"] == "mixnet" and card["mixnet"]["alpha"] is None
    assert card["mixnet"]["alpha_range"] == [0.2, 0.8]
    assert card["training"]["loss"] == "mixnet" and card["training"]["config"]["setting"] == "A"
    assert card["training"]["command"][:3] == ["finetune", "--loss", "mixnet"]

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--model", run, "-d", "digits", "--eps", "0.1", "--steps", "3", "--n-ex", "24"]
    res = cli("attack", *common, "--attack", "MIX-a", "--out", a, "-q")
    assert res.exit_code == 0, res.output
    assert cli("mix", "attack", *common, "--setting", "A", "--out", b, "-q").exit_code == 0
    da, db = read_table(a, "attack").df, read_table(b, "attack").df
    # setting A has no randomness: the engine's rows equal `mix attack`'s on the columns both write
    shared = [c for c in db.columns if c in da.columns]
    assert set(shared) == set(db.columns) and {"found_eps", "reused", "batch_index"} <= set(da.columns)
    pd.testing.assert_frame_equal(da[shared], db[shared], check_dtype=False, atol=1e-5, rtol=1e-5)
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
        _one_line_error(cli("attack", *base, *bad, "--out", e), *words)
        assert not e.exists() and not (tmp_path / "e.parquet.parts").exists()
    e = tmp_path / "e.parquet"
    for bad, words in ((["--attack", "mix-b", "--n-queries", "10"], ["--n-queries does not apply to --attack mix-B"]),
                       (["--attack", "mix-c", "--steps", "3"], ["--steps does not apply to --attack mix-C"]),
                       (["--attack", "mix-b", "--objective", "ce"], ["--objective does not apply to --attack mix-B"]),
                       (["--attack", "mix-b", "--arch", "tiny_cnn"], ["--arch does not apply to --attack mix-B"]),
                       (["--setting", "B"], ["--setting was renamed", "--attack mix-a|mix-b|mix-c|mix-d"])):
        _one_line_error(cli("attack", "--model", run, "-d", "digits", "--eps", "0.1", *bad, "--out", e), *words)
        assert not e.exists() and not (tmp_path / "e.parquet.parts").exists()


def test_registered_losses_include_mixnet_and_the_generic_ones():
    from robcli.losses import LOSSES, _ensure_registered

    _ensure_registered()
    assert {"std", "trades", "era", "dga", "noise", "cra", "mixnet"} <= set(LOSSES)


@pytest.mark.parametrize("kind,args,words", [
    ("compose", ["--mix", "1.5"], ["--mix", "[0, 1]"]),
    ("compose", ["--mix", "-0.1"], ["[0, 1]"]),
    ("compose", ["--mix", "0.5", "--robust-k7"], ["class counts"]),
    ("compose", ["--mix", "0.5", "--core-table"], ["not tables", "--core"]),
    ("compose", ["--mix", "0.5", "--eps", "0.1"], ["--eps belong to --mix-sweep"]),
    ("compose", ["--mix", "0.5", "--selector", "sr"], ["--selector belong to table compositions"]),
    ("compose", ["--mix", "0.5", "--mix-sweep"], ["not both"]),
    ("sweep", ["--alpha", "2"], ["[0, 1]"]),
    ("sweep", ["--robust-k7"], ["7 classes"]),
    ("sweep", ["--robust-table"], ["not tables", "--robust"]),
    ("finetune", ["--alpha-min", "0.9", "--alpha-max", "0.1"], ["alpha_min 0.9 > alpha_max 0.1"]),
    ("finetune", ["--robust-k7"], ["7 classes"]),
    ("finetune", ["--model", "tiny_cnn"], ["--model do not apply to --loss mixnet"]),
    ("finetune", ["--train-attack", "D"], ["--train-attack", "choose A"]),
    ("attack", ["--attack", "mix-b"], ["--attack mix-B applies to mixture models"]),
    ("attack", ["--setting", "B", "--attack", "pgd"], ["--setting was renamed: use --attack mix-a|mix-b|mix-c|mix-d"]),
    ("attack", ["--alpha-weight", "0.5", "--n-targets", "3"], ["--alpha-weight was renamed: use --mix-attack-weight"]),
    ("attack", ["--mix-attack-weight", "0.5", "--n-targets", "3"], ["--mix-attack-weight, --n-targets do not apply to --attack apgd-ce"]),
    ("attack", ["--attack", "apgd-ce", "--objective", "ce"], ["--objective does not apply to --attack apgd-ce"]),
])
def test_bad_input_one_line_nothing_written(cli, models, tmp_path, kind, args, words):
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
    _one_line_error(cli(*cmd), *words)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_compose_without_mix_still_reads_tables_and_rejects_mix_only_flags(cli, models, tmp_path):
    res = cli("compose", "--core", "c.parquet", "--robust", "r.parquet", "--eps", "0.1", "--scale-g", "2")
    _one_line_error(res, "--scale-g belong to --mix/--mix-sweep")
    res = cli("compose", "--core", "c.parquet", "--robust", "r.parquet")
    _one_line_error(res, "missing --eps")
