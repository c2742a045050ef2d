"""TorchScript / torch.export models of any architecture through the CLI, with --num-classes/--input-shape."""

import torch

from robcli.models import build


def _traced(tmp_path):
    torch.manual_seed(0)
    m = build("tiny_mlp", 3, (2,)).eval()
    path = tmp_path / "m.ts.pt"
    torch.jit.trace(m, torch.rand(4, 2)).save(str(path))
    return path


def test_attack_and_certify_a_torchscript_model(cli, tmp_path):
    path = _traced(tmp_path)
    out = tmp_path / "a.parquet"
    r = cli("attack", "--model", path, "--dataset", "gaussians", "--attack", "pgd", "--eps", "0.05",
            "--n-ex", "20", "--num-classes", "3", "--input-shape", "2", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert out.exists()
    out2 = tmp_path / "c.parquet"
    r = cli("certify", "--model", path, "--dataset", "gaussians", "--sigma", "0.1", "--N0", "50", "--N", "500",
            "--n-ex", "5", "--out", out2, "--quiet")
    assert r.exit_code == 0, r.output


def test_wrong_num_classes_is_one_line_error(cli, tmp_path):
    path = _traced(tmp_path)
    out = tmp_path / "a.parquet"
    r = cli("attack", "--model", path, "--dataset", "gaussians", "--eps", "0.05", "--num-classes", "5",
            "--out", out)
    assert r.exit_code == 2
    assert "robcli: error:" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
