"""TorchScript / torch.export models of any architecture through the CLI, with --num-classes/--input-shape."""

import numpy as np
import torch

from robcli.models import build


def _traced(tmp_path):
    torch.manual_seed(0)
    m = build("tiny_mlp", 3, (2,)).eval()
    path = tmp_path / "m.ts.pt"
    torch.jit.trace(m, torch.rand(4, 2)).save(str(path))
    return path, m


def test_attack_and_certify_a_torchscript_model(cli, tmp_path):
    from robcli.data.registry import load_split
    from robcli.tables.io import read_table

    path, model = _traced(tmp_path)
    test = load_split("gaussians", "test")
    out = tmp_path / "a.parquet"
    r = cli("attack", "--model", path, "--dataset", "gaussians", "--attack", "pgd", "--eps", "0.05",
            "--n-ex", "20", "--num-classes", "3", "--input-shape", "2", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    df = read_table(out, "attack").df.sort_values("idx")
    # one row per example: the first 20 test points, their labels, and the traced model's own clean predictions
    assert len(df) == 20 and df["idx"].tolist() == list(range(20))
    idx = torch.as_tensor(df["idx"].to_numpy())
    assert df["label"].tolist() == test.y[idx].tolist()
    with torch.no_grad():
        pred = model(test.x[idx]).argmax(1)
    assert df["clean_pred"].tolist() == pred.tolist()
    assert (df["correct"] == (df["clean_pred"] == df["label"])).all()
    assert (df["eps"] == 0.05).all() and (df["attack"] == "pgd").all()
    assert (df["robust"] == (df["adv_pred"] == df["clean_pred"])).all()  # robust: the attack found no flip
    assert df["pert_norm"].max() <= 0.05 + 1e-6

    out2 = tmp_path / "c.parquet"
    r = cli("certify", "--model", path, "--dataset", "gaussians", "--sigma", "0.1", "--N0", "50", "--N", "500",
            "--n-ex", "5", "--out", out2, "--quiet")
    assert r.exit_code == 0, r.output
    c = read_table(out2, "certify").df.sort_values("idx")
    assert c["idx"].tolist() == list(range(5)) and c["label"].tolist() == test.y[:5].tolist()
    assert (c["sigma"] == 0.1).all() and (c["N"] == 500).all()
    assert all(int(np.sum(v)) == 500 and len(v) == 3 for v in c["counts"])  # N votes over the 3 declared classes
    assert c["predict"].isin([-1, 0, 1, 2]).all()
    assert (c["correct"] == (c["predict"] == c["label"])).all()
    assert (c.loc[c["predict"] == -1, "radius"] == 0).all() and (c["radius"] >= 0).all()


def test_wrong_num_classes_is_one_line_error(cli, one_line_error, tmp_path):
    path, _ = _traced(tmp_path)
    out = tmp_path / "a.parquet"
    one_line_error(cli("attack", "--model", path, "--dataset", "gaussians", "--eps", "0.05", "--num-classes", "5",
                       "--out", out), "model outputs 3 classes, not the 5 declared")
    assert not out.exists()
