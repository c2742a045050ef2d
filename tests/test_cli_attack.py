"""`robcli attack` in-process: output table and metadata, summary, errors, resume after a simulated kill
and after a real SIGKILL (of a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from robcli.tables.io import read_table
from robcli.tables.run import parts_path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from robcli.models import build, make_card, save_run

    torch.manual_seed(0)
    m = build("tiny_mlp", 3, (2,))
    d = tmp_path_factory.mktemp("m") / "run"
    save_run(d, m, make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    return d


def _base(run_dir, out, *extra):
    return ["attack", "--model", run_dir, "--dataset", "gaussians", "--n-ex", "40", "--steps", "10",
            "--batch", "16", "--out", out, *extra]


def test_attack_writes_table(cli, run_dir, tmp_path):
    out = tmp_path / "a.parquet"
    r = cli(*_base(run_dir, out, "--eps", "0.05", "--eps", "1/10", "--quiet"))
    assert r.exit_code == 0, r.output
    t = read_table(out, "attack")
    assert len(t.df) == 80 and sorted(t.df["eps"].unique()) == [0.05, 0.1]
    for c in ("idx", "label", "eps", "norm", "attack", "clean_pred", "adv_pred", "correct", "robust",
              "clean_margin", "adv_margin", "pert_norm", "steps", "restarts"):
        assert c in t.df.columns
    assert t.config["attack"] == "apgd-ce" and t.config["eps"] == [0.05, 0.1] and t.config["steps"] == 10
    assert t.meta["models"][0]["sha256"] and t.meta["data"]["dataset"] == "gaussians"
    assert "attack" in t.meta["command"] and t.meta["seed"] == 0
    assert (t.df["pert_norm"] <= t.df["eps"] + 1e-6).all()
    assert not parts_path(out).exists()


def test_summary_on_stderr(cli, run_dir, tmp_path):
    r = cli(*_base(run_dir, tmp_path / "s.parquet", "--attack", "pgd", "--eps", "0.05"))
    assert r.exit_code == 0, r.output
    assert "natural acc" in r.output and "robust acc" in r.output and "robust inaccuracy" in r.output


def test_grid_and_subset(cli, run_dir, tmp_path):
    sub = tmp_path / "ids.txt"
    sub.write_text("# a few examples\n3\n5\n\n11\n")
    out = tmp_path / "g.parquet"
    r = cli("attack", "--model", run_dir, "--dataset", "gaussians", "--attack", "grid", "--grid-points", "21",
            "--steps", "5", "--subset", sub, "--eps", "0.05", "--norm", "L2", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    df = read_table(out, "attack").df
    assert sorted(df["idx"]) == [3, 5, 11] and (df["norm"] == "L2").all()


def test_resume_after_kill_equals_uninterrupted(cli, run_dir, tmp_path, monkeypatch):
    import robcli.cli.common as common

    full = tmp_path / "full.parquet"
    args = ("--eps", "0.03", "--eps", "0.08", "--attack", "apgd-ce", "--seed", "3", "--quiet")
    assert cli(*_base(run_dir, full, *args)).exit_code == 0

    out = tmp_path / "r.parquet"
    calls = {"n": 0}
    orig = common.ProgressCallback.__call__

    def dying(self, done, total, desc="working"):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(self, done, total, desc)

    monkeypatch.setattr(common.ProgressCallback, "__call__", dying)
    r = cli(*_base(run_dir, out, *args))
    assert r.exit_code == 130 and not out.exists() and parts_path(out).exists()
    monkeypatch.setattr(common.ProgressCallback, "__call__", orig)

    bad = cli(*_base(run_dir, out, "--eps", "0.03", "--attack", "apgd-ce", "--seed", "4", "--quiet", "--resume"))
    assert bad.exit_code != 0 and "different configuration" in bad.output

    r = cli(*_base(run_dir, out, *args, "--resume"))
    assert r.exit_code == 0, r.output
    assert not parts_path(out).exists()
    pd.testing.assert_frame_equal(read_table(out, "attack").df, read_table(full, "attack").df)


@pytest.mark.parametrize("extra,msg", [
    (("--attack", "fgsm"), "unknown attack"),
    (("--eps", "-1"), "negative"),
    (("--eps", "nan"), "finite"),
    (("--eps", "abc"), "not a number"),
    (("--eps", "2"), "> 1"),
    (("--attack", "apgd-t"), "at least 4 classes"),
    (("--attack", "square"), "image inputs"),
    (("--attack", "autoattack", "--steps", "5"), "--version custom"),
])
def test_user_errors_one_line_no_output(cli, run_dir, tmp_path, extra, msg):
    out = tmp_path / "e.parquet"
    r = cli(*_base(run_dir, out, *extra))
    assert r.exit_code != 0
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in r.output
    assert not out.exists() and not parts_path(out).exists()


def test_model_and_data_errors(cli, run_dir, tmp_path):
    out = tmp_path / "e.parquet"
    cases = [
        (["attack", "--model", run_dir, "--dataset", "nope", "--out", out], "unknown data set"),
        (["attack", "--model", "no_such_arch", "--dataset", "gaussians", "--out", out], "unknown model"),
        (["attack", "--model", tmp_path / "missing.safetensors", "--dataset", "gaussians", "--out", out], "does not exist"),
        (["attack", "--model", run_dir, "--dataset", "digits", "--out", out], "model expects inputs"),
        (["attack", "--model", "tiny_cnn", "--dataset", "digits", "--attack", "grid", "--out", out], "dimension <= 3"),
    ]
    for args, msg in cases:
        r = cli(*args)
        assert r.exit_code != 0 and msg in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_existing_out_needs_force(cli, run_dir, tmp_path):
    out = tmp_path / "x.parquet"
    out.write_text("keep me")
    r = cli(*_base(run_dir, out, "-q"))
    assert r.exit_code != 0 and "--force" in r.output and out.read_text() == "keep me"
    r = cli(*_base(run_dir, out, "-q", "--force"))
    assert r.exit_code == 0 and read_table(out, "attack").kind == "attack"


def _robcli() -> list[str]:
    return [sys.executable, "-c", "from robcli.cli.main import main; main()"]


def test_attack_sigkill_then_resume_equals_uninterrupted(cli, tmp_path):
    """A real process, SIGKILLed after its first checkpoint, resumes to the uninterrupted run's table."""
    import torch

    from robcli.tables.io import read_table
    from robcli.tables.run import parts_path

    args = ["attack", "--model", "small_cnn", "--dataset", "digits", "--eps", "0.05", "--eps", "0.1",
            "--n-ex", "160", "--batch", "8", "--steps", "10", "-q"]
    ref = tmp_path / "ref.parquet"
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): float reductions depend on threads
    assert cli(*args, "--out", ref).exit_code == 0
    out = tmp_path / "killed.parquet"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*_robcli(), *args, "--out", str(out)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = parts_path(out)  # one part per finished batch (chunk)
    deadline = time.monotonic() + 60
    while not list(part.glob("chunk-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    chunks = sorted(part.glob("chunk-*.parquet"))
    if not chunks:
        pytest.fail("the attack finished or stalled before its first checkpoint; enlarge the run")
    n_part = sum(len(read_table(c, "attack").df) for c in chunks)
    assert 0 < n_part < 320 and not out.exists()
    res = subprocess.run([*_robcli(), *args, "--out", str(out), "--resume"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not part.exists()
    key = ["idx", "eps"]
    a = read_table(ref).df.sort_values(key).reset_index(drop=True)
    b = read_table(out).df.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
