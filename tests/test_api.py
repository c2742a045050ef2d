"""robcli.api: the functions give the same tables as the commands, take in-memory modules and tensors, and
raise robcli's typed errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import robcli.api as rc
from robcli.errors import DataError, TableError, UsageError
from robcli.tables.io import read_table

CERT = dict(sigma=[0.12, 0.25], N0=20, N=300, alpha=0.01, seed=3)


def _drop_time(df):
    return df.drop(columns=["time"]).reset_index(drop=True)


def _linear_model():
    """Left (0) vs right (1) of x = 0.5 on the gaussians data: certified right, certified wrong (class 2) and
    abstentions near the boundary all occur."""
    net = torch.nn.Linear(2, 3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-20.0, 0.0], [20.0, 0.0], [0.0, 0.0]]))
        net.bias.copy_(torch.tensor([10.0, -10.0, -100.0]))
    return net


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The model as a TorchScript file (robcli certify --model FILE.pt)."""
    import warnings

    d = tmp_path_factory.mktemp("api")
    with warnings.catch_warnings():  # torch 2.10 marks TorchScript deprecated; robcli still loads such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_linear_model()).save(str(d / "linear.pt"))
    return d / "linear.pt"


@pytest.fixture(scope="module")
def cli_cert(cli, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("apicli") / "cert.parquet"
    r = cli("certify", "--model", run, "--dataset", "gaussians", "--n-ex", "30", "--sigma", "0.12", "--sigma", "0.25",
            "--N0", "20", "--N", "300", "--alpha", "0.01", "--seed", "3", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_certify_equals_the_command(run, cli_cert, tmp_path):
    want = read_table(cli_cert, "certify")
    got = rc.certify(str(run), "gaussians", n_ex=30, **CERT)
    pd.testing.assert_frame_equal(_drop_time(got), _drop_time(want.df))
    assert got.attrs["table"] == "certify" and got.attrs["config"] == want.config
    assert got.attrs["models"] == want.meta["models"] and got.attrs["data"] == want.meta["data"]
    # certified right, certified wrong and abstentions: a comparison that can tell tables apart
    assert got["predict"].eq(-1).any() and (got["predict"] == got["label"]).any()
    # out= writes the same table the command writes
    out = rc.certify(str(run), "gaussians", n_ex=30, out=tmp_path / "c.parquet", **CERT)
    pd.testing.assert_frame_equal(_drop_time(read_table(tmp_path / "c.parquet", "certify").df), _drop_time(want.df))
    assert out.attrs["path"] == str(tmp_path / "c.parquet")
    with pytest.raises(UsageError, match="exists"):
        rc.certify(str(run), "gaussians", n_ex=30, out=tmp_path / "c.parquet", **CERT)


def test_certify_takes_a_module_and_tensors(run, cli_cert):
    from robcli.data.registry import load_split

    want = read_table(cli_cert, "certify").df
    data = load_split("gaussians", "test").select(n_ex=30)
    module = _linear_model()
    x, y = data.tensors()
    got = rc.certify(module, (x, y), **CERT)
    # same model, same inputs, same seed: the same certificates (indices 0..29 here as there)
    pd.testing.assert_frame_equal(_drop_time(got), _drop_time(want))
    assert got.attrs["models"][0]["path"] == "<in-memory Linear>" and got.attrs["models"][0]["sha256"]
    assert got.attrs["data"]["in_memory"] is True and got.attrs["config"]["model"] is None
    ds = torch.utils.data.TensorDataset(x, y)
    pd.testing.assert_frame_equal(_drop_time(rc.certify(module, ds, **CERT)), _drop_time(want))


def test_partition_and_report_equal_the_commands(cli, cli_cert, tmp_path):
    part_cli = tmp_path / "p.parquet"
    r = cli("partition", cli_cert, "--radius", "0.1", "--sigma", "0.12", "--out", part_cli, "-q")
    assert r.exit_code == 0, r.output
    want = read_table(part_cli, "partition")
    for table in (str(cli_cert), rc.read(cli_cert)):
        got = rc.partition(table, radius=0.1, sigma=0.12)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.df.reset_index(drop=True))
        assert set(got["split"]) >= {"robust_accurate"} and got.attrs["summary"] is not None
    r = cli("report", cli_cert, "--radius", "0", "--radius", "0.1", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = {s["title"]: s["rows"] for s in json.loads(r.stdout)["sections"]}
    rep = rc.report(str(cli_cert), radii=[0, 0.1])
    assert set(rep) == {"certified", "certified_selector", "certified_bound"}
    for key, df in rep.items():
        rows = doc[df.attrs["title"]]
        assert len(rows) == len(df)
        for col in df.columns:
            if df[col].dtype.kind == "f":
                assert list(df[col]) == pytest.approx([row[col] for row in rows], nan_ok=True), (key, col)
            else:
                assert [str(v) for v in df[col]] == [str(row[col]) for row in rows], (key, col)
    # an API table (in memory) reports the same numbers
    mem = rc.report(rc.read(cli_cert), radii=[0, 0.1])
    pd.testing.assert_frame_equal(mem["certified_bound"].drop(columns="model"),
                                  rep["certified_bound"].drop(columns="model"))


def test_import_cohen_log_equals_certify_import(cli, tmp_path):
    log = tmp_path / "sigma_0.25"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t2.0\n1\t0\t-1\t0.0\t0\t2.0\n"
                   "2\t2\t0\t0.1\t0\t2.0\n")
    cli_out = tmp_path / "c.parquet"
    assert cli("certify", "--import", log, "--sigma", "0.25", "--out", cli_out, "-q").exit_code == 0
    got = rc.import_cohen_log(log, sigma=0.25)
    want = read_table(cli_out, "certify")
    pd.testing.assert_frame_equal(got, want.df, check_like=False)
    assert got.attrs["config"] == want.config
    part = rc.partition(got, radius=0.2)
    assert list(part.set_index("idx")["split"]) == ["robust_accurate", "nonrobust_inaccurate", "nonrobust_inaccurate"]


def test_typed_errors_never_exit(run):
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        rc.certify(torch.nn.Linear(2, 3), (torch.full((4, 2), 2.0), torch.zeros(4, dtype=torch.long)), N=100)
    with pytest.raises(DataError, match="labels must be integers"):
        rc.certify(torch.nn.Linear(2, 3), (torch.rand(4, 2), torch.zeros(4)), N=100)
    with pytest.raises(UsageError, match="data set name"):
        rc.certify(torch.nn.Linear(2, 3), 42)
    with pytest.raises(UsageError, match="--alpha"):
        rc.certify(str(run), "gaussians", n_ex=3, alpha=2.0)
    with pytest.raises(DataError, match="unknown data set"):
        rc.certify(str(run), "nope")
    with pytest.raises(TableError, match="no robcli table metadata"):
        rc.partition(pd.DataFrame({"idx": [0]}), radius=0.1)
    with pytest.raises(UsageError, match="no tables"):
        rc.report()


# ---------------------------------------------------------------- attack, compose, finetune ------------------

ATT = dict(attack="apgd-ce", eps=[0.05, 0.1], steps=10, batch=16, seed=1)


def _shifted_model():
    """Another linear model (boundary at x = 0.45): a different core model for compositions."""
    net = _linear_model()
    with torch.no_grad():
        net.bias.copy_(torch.tensor([9.0, -9.0, -100.0]))
    return net


@pytest.fixture(scope="module")
def cli_attack(cli, run, tmp_path_factory):
    import warnings

    d = tmp_path_factory.mktemp("apiatt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_shifted_model()).save(str(d / "shifted.pt"))
    outs = {}
    for name, model in (("robust", run), ("core", d / "shifted.pt")):
        outs[name] = d / f"{name}.parquet"
        r = cli("attack", "--model", model, "--dataset", "gaussians", "--n-ex", "40", "--attack", "apgd-ce",
                "--eps", "0.05", "--eps", "0.1", "--steps", "10", "--batch", "16", "--seed", "1", "--quiet",
                "--out", outs[name])
        assert r.exit_code == 0, r.output
    outs["core_model"] = d / "shifted.pt"
    return outs


def test_attack_equals_the_command(run, cli_attack, tmp_path):
    from robcli.data.registry import load_split

    want = read_table(cli_attack["robust"], "attack")
    got = rc.attack(str(run), "gaussians", n_ex=40, **ATT)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.df.reset_index(drop=True))
    assert got.attrs["config"] == want.config and got.attrs["models"] == want.meta["models"]
    assert (~got["robust"]).any() and got["robust"].any()  # flips and robust examples: the comparison can fail
    # an in-memory module on tensors and on a Dataset: the same rows
    x, y = load_split("gaussians", "test").select(n_ex=40).tensors()
    for data in ((x, y), torch.utils.data.TensorDataset(x, y)):
        mem = rc.attack(_linear_model(), data, **ATT)
        pd.testing.assert_frame_equal(mem.reset_index(drop=True), want.df.reset_index(drop=True))
    # subset= and out=
    sub = rc.attack(str(run), "gaussians", subset=[3, 1, 7], out=tmp_path / "a.parquet", **ATT)
    assert sorted(set(sub["idx"])) == [1, 3, 7] and (tmp_path / "a.parquet").is_file()
    with pytest.raises(UsageError, match="--steps"):
        rc.attack(str(run), "gaussians", attack="autoattack", steps=3)
    with pytest.raises(UsageError, match="mixture"):
        rc.attack(_linear_model(), (x, y), attack="mix-b", eps=0.1)


def test_compose_equals_the_command(cli, cli_attack, tmp_path):
    out = tmp_path / "c.parquet"
    r = cli("compose", "-r", cli_attack["robust"], "-c", cli_attack["core"], "--eps", "0.05", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    want = read_table(out, "compose")
    for robust, core in ((str(cli_attack["robust"]), str(cli_attack["core"])),
                         (rc.read(cli_attack["robust"]), rc.read(cli_attack["core"]))):
        got = rc.compose(robust, core, eps=0.05)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.df.reset_index(drop=True))
        assert got.attrs["config"] == want.config
    # a cascade of the same member twice is a list; the two tables of one model a tuple
    two = rc.compose([rc.read(cli_attack["robust"])] * 2, rc.read(cli_attack["core"]), eps=0.05)
    assert int(two["n_robust_models"].iloc[0]) == 2
    with pytest.raises(TableError, match="different models"):
        rc.compose((rc.read(cli_attack["robust"]), rc.read(cli_attack["core"])), str(cli_attack["core"]), eps=0.05)
    with pytest.raises(UsageError, match="eps"):
        rc.compose(str(cli_attack["robust"]), str(cli_attack["core"]))
    with pytest.raises(UsageError, match="run directories"):
        rc.compose(rc.read(cli_attack["robust"]), str(cli_attack["core"]), mix=0.5, export=tmp_path / "m")


def test_finetune_equals_the_command(cli, tmp_path):
    from robcli.models import load_model

    args = ["--loss", "era", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.05", "--epochs", "2",
            "--batch", "50", "--lr", "0.1", "--seed", "4", "--quiet"]
    assert cli("finetune", *args, "--out", tmp_path / "cli").exit_code == 0
    got = rc.finetune("era", tmp_path / "api", dataset="gaussians", model="tiny_mlp", eps=0.05, epochs=2, batch=50,
                      lr=0.1, seed=4, beta=1.0)
    assert got == tmp_path / "api"
    logs = [read_table(d / "train_log.parquet").df.drop(columns="seconds") for d in (tmp_path / "cli", got)]
    pd.testing.assert_frame_equal(logs[0], logs[1])
    sd = [load_model(str(d)).model.state_dict() for d in (tmp_path / "cli", got)]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    cfgs = [json.loads((d / "card.json").read_text())["training"]["config"] for d in (tmp_path / "cli", got)]
    assert {**cfgs[0], "out": None} == {**cfgs[1], "out": None}
    assert cfgs[1]["defaults_from"]["momentum"] != "robcli generic default"  # not given: the data set's value
    # the run directory is a model for the other functions
    assert len(rc.attack(got, "gaussians", n_ex=5, eps=0.05, steps=2)) == 5
    with pytest.raises(UsageError, match="unknown option 'betta'"):
        rc.finetune("era", tmp_path / "x", model="tiny_mlp", eps=0.05, betta=2)
    with pytest.raises(UsageError, match="state_dict"):
        rc.finetune("std", tmp_path / "x", init=torch.nn.Linear(2, 3))
    with pytest.raises(UsageError, match="does not apply to loss='mixnet'"):
        rc.finetune("mixnet", tmp_path / "x", model="tiny_mlp", core=str(got), robust=str(got))
    with pytest.raises(UsageError, match="exists"):
        rc.finetune("era", got, model="tiny_mlp", eps=0.05, epochs=1)
    assert not (tmp_path / "x").exists()


def test_import_robcli_reaches_the_api_lazily():
    import subprocess
    import sys

    code = ("import sys, robcli; assert 'torch' not in sys.modules; f = robcli.api.certify; "
            "assert callable(f) and 'torch' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "ok", r.stderr


def test_sequential_and_mixture_certificates_equal_the_commands(cli, run, tmp_path):
    seq = tmp_path / "seq.parquet"
    r = cli("certify", "--model", run, "--dataset", "gaussians", "--n-ex", "30", "--sigma", "0.12", "--N0", "20",
            "--N", "2000", "--alpha", "0.01", "--seed", "3", "--sequential", "--radius", "0.05", "--radius", "0.1",
            "--quiet", "--out", seq)
    assert r.exit_code == 0, r.output
    want = read_table(seq, "certify")
    got = rc.certify(str(run), "gaussians", n_ex=30, sigma=0.12, N0=20, N=2000, alpha=0.01, seed=3, sequential=True,
                     radius=[0.05, 0.1])
    pd.testing.assert_frame_equal(_drop_time(got), _drop_time(want.df))
    assert got.attrs["config"] == want.config and got["n_used"].min() < 2000  # it stopped early somewhere
    mix = tmp_path / "mix.parquet"
    args = dict(method="mix-smoothed-h", mix=0.8, sigma=0.25, N0=10, N=200, alpha=0.01, n_ex=6)
    r = cli("certify", "--model", "tiny_cnn", "--dataset", "digits", "--method", "mix-smoothed-h", "--mix", "0.8",
            "--sigma", "0.25", "--N0", "10", "--N", "200", "--alpha", "0.01", "--n-ex", "6", "--quiet", "--out", mix)
    assert r.exit_code == 0, r.output
    want = read_table(mix, "certify")
    got = rc.certify("tiny_cnn", "digits", **args)
    pd.testing.assert_frame_equal(_drop_time(got), _drop_time(want.df))
    assert got.attrs["config"]["method"] == "mix-smoothed-h" and got.attrs["path"] is None
    with pytest.raises(UsageError, match="does not apply to method='mix-smoothed-h'"):
        rc.certify("tiny_cnn", "digits", sequential=True, **args)
    with pytest.raises(UsageError, match="as a path"):
        rc.certify(torch.nn.Linear(2, 3), "gaussians", method="mix-lipschitz", lipschitz=1.0, mix=0.8)
    with pytest.raises(UsageError, match="does not apply to method='cohen'"):
        rc.certify(str(run), "gaussians", n_ex=3, mix=0.8)
    with pytest.raises(UsageError, match="belong to sequential=True"):
        rc.certify(str(run), "gaussians", n_ex=3, radius=0.1)


def test_api_options_as_the_flags_take_them_and_refusals(run, tmp_path):
    # numbers as strings, as the flags take them
    a = rc.certify(str(run), "gaussians", n_ex=5, sigma="0.12", N0=20, N=300, alpha=0.01, seed=3)
    b = rc.certify(str(run), "gaussians", n_ex=5, sigma=0.12, N0=20, N=300, alpha=0.01, seed=3)
    pd.testing.assert_frame_equal(_drop_time(a), _drop_time(b))
    # subset as an index file (recorded), aa_attacks as the flag's comma list
    ids = tmp_path / "ids.txt"
    ids.write_text("4\n2\n")
    t = rc.attack(str(run), "gaussians", subset=ids, eps=0.05, steps=2)
    assert sorted(set(t["idx"])) == [2, 4] and t.attrs["config"]["subset"] == str(ids)
    t = rc.attack(str(run), "gaussians", n_ex=4, attack="autoattack", version="custom", aa_attacks="apgd-ce,fab-t",
                  steps=2, eps=0.05)
    assert t.attrs["config"]["aa_attacks"] == ["apgd-ce", "fab-t"]
    # mixture certificates need their own parameters and refuse the others'
    with pytest.raises(UsageError, match="needs sigma"):
        rc.certify("tiny_cnn", "digits", method="mix-smoothed-h", mix=0.8, n_ex=2)
    with pytest.raises(UsageError, match="lipschitz does not apply to method='mix-smoothed-h'"):
        rc.certify("tiny_cnn", "digits", method="mix-smoothed-h", mix=0.8, sigma=0.25, lipschitz=1.0, n_ex=2)
    with pytest.raises(UsageError, match="sigma does not apply to method='mix-lipschitz'"):
        rc.certify("tiny_cnn", "digits", method="mix-lipschitz", mix=0.8, lipschitz=1.0, sigma=0.25, n_ex=2)
    with pytest.raises(UsageError, match="does not apply to loss='mixnet'"):
        rc.finetune("mixnet", tmp_path / "m", core="tiny_cnn", robust="tiny_cnn", dataset="digits", beta=2.0)
    assert not (tmp_path / "m").exists()
