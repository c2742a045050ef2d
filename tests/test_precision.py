"""--precision of attack and certify: fp32 everywhere (recorded in the table), bf16/fp16 on CUDA only (autocast),
refused in one line elsewhere; the GPU tests run with -m gpu on a machine with CUDA."""

from __future__ import annotations

import pytest
import torch

from robcli.tables.io import read_table

ATTACK = ["attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "20", "--eps", "0.05", "--steps", "5",
          "--quiet"]
CERT = ["certify", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "20", "--N0", "10", "--N", "200",
        "--alpha", "0.01", "--quiet"]


@pytest.mark.parametrize("args", [ATTACK, CERT], ids=["attack", "certify"])
def test_fp32_is_recorded_and_reduced_precision_is_refused_on_cpu(cli, one_line_error, tmp_path, args):
    out = tmp_path / "t.parquet"
    assert cli(*args, "--device", "cpu", "--out", out).exit_code == 0
    assert read_table(out).config["precision"] == "fp32"
    for p in ("bf16", "fp16"):
        bad = tmp_path / f"{p}.parquet"
        why = "underflow" if (p, args[0]) == ("fp16", "attack") else f"--precision {p} needs CUDA"
        one_line_error(cli(*args, "--device", "cpu", "--precision", p, "--out", bad), why)
        assert not bad.exists() and not (tmp_path / f"{p}.parquet.parts").exists()
    one_line_error(cli(*args, "--precision", "fp64", "--out", tmp_path / "x.parquet"), "choose fp32, bf16, fp16")


def test_fp16_is_refused_for_gradient_attacks(cli, one_line_error, tmp_path):
    """fp16 input gradients underflow without loss scaling (a silently weaker attack); Square needs none."""
    for attack in ("apgd-ce", "pgd", "autoattack", "grid"):
        one_line_error(cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--attack", attack, "--eps",
                           "0.05", "--precision", "fp16", "--out", tmp_path / "a.parquet"), "fp16", "underflow", "bf16")
    from robcli.attacks.engine import AttackConfig

    assert AttackConfig(attack="square", eps=("0.05",), precision="fp16").precision == "fp16"


def test_mixture_attacks_take_fp32_only(cli, one_line_error, tmp_path):
    one_line_error(cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--attack", "mix-b", "--eps", "0.05",
                       "--precision", "bf16", "--out", tmp_path / "m.parquet"), "--precision bf16 does not apply")


def test_the_autocast_wrapper_returns_float32_logits_of_the_same_model():
    from robcli.models.precision import Autocast, in_precision

    net = torch.nn.Linear(2, 3)
    assert in_precision(net, "fp32") is net
    wrapped = in_precision(net, "bf16")
    assert isinstance(wrapped, Autocast) and wrapped.model is net and wrapped.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cuda_is_recorded_and_close_to_fp32(cli, tmp_path, precision):
    assert torch.cuda.is_available(), "run -m gpu on a machine with CUDA"
    for args in ((ATTACK, CERT) if precision == "bf16" else (CERT,)):  # fp16: certify only (no gradients)
        a, b = tmp_path / f"{args[0]}-fp32.parquet", tmp_path / f"{args[0]}-{precision}.parquet"
        assert cli(*args, "--device", "cuda", "--out", a).exit_code == 0
        r = cli(*args, "--device", "cuda", "--precision", precision, "--out", b)
        assert r.exit_code == 0, r.output
        ta, tb = read_table(a), read_table(b)
        assert tb.config["precision"] == precision and ta.config["precision"] == "fp32"
        col = "clean_pred" if args[0] == "attack" else "predict"
        agree = (ta.df[col].to_numpy() == tb.df[col].to_numpy()).mean()
        assert agree >= 0.9, f"{args[0]} {precision}: only {agree:.0%} of the predictions agree with fp32"
