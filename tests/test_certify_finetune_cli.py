"""End to end: `robcli finetune --loss noise` and `--loss cra` on a tiny model, then `robcli certify`."""

from __future__ import annotations


def test_finetune_noise_then_cra_then_certify(cli, tmp_path):
    from robcli.tables.io import read_table

    noise = tmp_path / "noise"
    r = cli("finetune", "--loss", "noise", "--dataset", "digits", "--model", "tiny_cnn", "--epochs", "1",
            "--sigma", "0.12", "--out", noise, "--quiet", "--seed", "0")
    assert r.exit_code == 0, r.output
    assert (noise / "model.safetensors").exists()
    cra = tmp_path / "cra"
    r = cli("finetune", "--loss", "cra", "--dataset", "digits", "--init", noise, "--epochs", "1", "--sigma", "0.12",
            "--num-noise", "4", "--temperature", "4", "--out", cra, "--quiet", "--seed", "0")
    assert r.exit_code == 0, r.output
    log = read_table(cra / "train_log.parquet", "train_log").df
    assert len(log) == 1 and log["loss"].notna().all()
    out = tmp_path / "cert.parquet"
    r = cli("certify", "--model", cra, "--dataset", "digits", "--n-ex", "4", "--sigma", "0.12", "--N0", "20",
            "--N", "200", "--alpha", "0.01", "--out", out)
    assert r.exit_code == 0, r.output
    assert "sigma=0.12" in r.output and "abstain=" in r.output
    t = read_table(out, "certify")
    assert len(t.df) == 4 and t.meta["models"][0]["sha256"]
