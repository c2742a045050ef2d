"""Regressions found by using robcli end to end as a first user would (shell pipelines, kills, resumes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_atomic_writers_give_ordinary_file_modes(tmp_path):
    """mkstemp files are 0600; tables, weights, cards and reports must get the umask's mode (0644 usually)."""
    import torch

    from robcli.tables.io import write_table
    from robcli.train.loop import _atomic_torch_save
    from robcli.utils.fsio import atomic_write_bytes

    want = 0o666 & ~_umask()
    df = pd.DataFrame({"idx": [0], "label": [1], "split": ["robust_accurate"]})
    paths = [write_table(df, tmp_path / "p.parquet", "partition", config={}, prov={})]
    atomic_write_bytes(tmp_path / "card.json", b"{}")
    _atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "state.pt")
    paths += [tmp_path / "card.json", tmp_path / "state.pt"]
    for p in paths:
        assert (Path(p).stat().st_mode & 0o777) == want, p


def test_adv_max_softmax_known_answer():
    """Max softmax at the attack point, recovered from what the attack table stores (adv_conf_other, adv_margin)."""
    import torch

    from robcli.attacks.pgd import margin
    from robcli.compose.confidence import adv_max_softmax

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 10, generator=g, dtype=torch.float64) * 4
    z[:5, 3] += 800.0  # a huge margin: the other classes' softmax underflows to 0
    y = torch.randint(0, 10, (200,), generator=g)  # the clean prediction: kept at x' for some rows, not for others
    y[:5] = 3
    p = z.softmax(1)
    other = p.scatter(1, y[:, None], float("-inf")).amax(1)
    rows = pd.DataFrame({"adv_conf_other": other.numpy(), "adv_margin": margin(z, y).numpy()})
    np.testing.assert_allclose(adv_max_softmax(rows), p.amax(1).numpy(), rtol=1e-9, atol=1e-12)
    assert np.array_equal(adv_max_softmax(pd.DataFrame({"adv_conf": [0.3, 0.9]})), [0.3, 0.9])


def test_softmax_response_compose_reads_a_real_apgd_conf_table(cli, tmp_path):
    """The documented route (attack --attack apgd-conf at 2*eps, then compose --selector sr) must work."""
    from robcli.tables.io import read_table

    run = tmp_path / "run"
    assert cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "2", "--batch", "200", "--out", run,
               "-q").exit_code == 0
    common = ["--model", run, "--dataset", "gaussians", "--n-ex", "24", "--steps", "5", "-q"]
    r_eps = tmp_path / "r_eps.parquet"
    r_conf = tmp_path / "r_conf.parquet"
    core = tmp_path / "core.parquet"
    assert cli("attack", *common, "--eps", "0.05", "--out", r_eps).exit_code == 0
    # eq. 16: the confidences on B_eps decide the selection, on B_2eps the robust selection
    assert cli("attack", *common, "--attack", "apgd-conf", "--eps", "0.05", "--eps", "0.1", "--out", r_conf).exit_code == 0
    assert cli("attack", *common, "--eps", "0.05", "--seed", "1", "--out", core).exit_code == 0
    conf = read_table(r_conf).df
    assert "adv_conf" not in conf.columns  # the attack table carries adv_conf_other + adv_margin only
    out = tmp_path / "sr.parquet"
    res = cli("compose", "-r", f"{r_eps},{r_conf}", "-c", core, "--eps", "0.05", "--selector", "sr",
              "--threshold", "0", "--threshold", "1", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    t = read_table(out)
    df = t.df.sort_values("threshold")
    assert df["robust_selection"].tolist() == [1.0, 0.0]  # tau=0 selects everywhere; tau=1 only at softmax 1.0
    # provenance: one flat list of model entries (as in every other table), robust first, then core
    assert [m["role"] for m in t.meta["models"]] == ["robust", "core"]
    assert all(isinstance(m, dict) and "sha256" in m for m in t.meta["models"])


def test_error_inside_progress_leaves_only_the_message(capsys):
    """rich printed a blank line on stderr when a command failed before its first progress task."""
    from robcli.cli.common import progress

    with pytest.raises(ValueError, match="inside the progress block"):
        with progress(False):
            raise ValueError("inside the progress block")
    assert capsys.readouterr().err == ""
    with progress(False) as prog:
        t = prog.add_task("work", total=2)
        prog.update(t, completed=2)
    assert "work" in capsys.readouterr().err


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


def test_certify_progress_is_per_sigma():
    """Each sigma's progress bar ends full (it stopped at 1/K of its length with K sigmas)."""
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model

    data = load_split("gaussians", "test").select(n_ex=6)
    lm = load_model("tiny_mlp", dataset_info=data.info, seed=0)
    seen: dict[str, tuple[int, int]] = {}
    cfg = CertifyConfig(sigmas=(0.1, 0.2, 0.3), N0=10, N=50, alpha=0.01, batch=100)
    run_certify(lm.model, data, cfg, device="cpu", progress=lambda d, t, desc: seen.__setitem__(desc, (d, t)))
    assert len(seen) == 3 and all(v == (6, 6) for v in seen.values()), seen


def test_existing_out_message_offers_resume_only_where_it_exists(cli, tmp_path):
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "4", "--steps", "2",
               "--eps", "0.05", "--out", table, "-q").exit_code == 0
    res = cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--eps", "0.05", "--out", table)
    assert res.exit_code == 2 and "--resume" in res.output
    res = cli("partition", table, "--out", table)
    assert res.exit_code == 2 and "--force" in res.output and "--resume" not in res.output


def test_index_lists_and_partitions_refuse_another_split_or_data_set(cli, tmp_path):
    """Indices are positions within a split: a test-split list read against train named other examples."""
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "12", "--steps", "2",
               "--eps", "0.2", "--out", table, "-q").exit_code == 0
    part, lst = tmp_path / "p.parquet", tmp_path / "ids.txt"
    res = cli("partition", table, "--out", part, "--export-split", "robust_accurate", "--export", lst, "-q")
    assert res.exit_code == 0, res.output
    assert lst.read_text().startswith("# robcli index list: dataset=gaussians split=test\n")
    out = tmp_path / "o.parquet"
    attack = ["attack", "--model", "tiny_mlp", "--eps", "0.05", "--steps", "2", "--out", out, "-q"]
    res = cli(*attack, "--dataset", "gaussians", "--split", "train", "--subset", lst)
    assert res.exit_code == 2 and "test-split" in res.output and not out.exists()
    res = cli(*attack, "--dataset", "digits", "--subset", part, "--subset-split", "robust_accurate")
    assert res.exit_code == 2 and "'gaussians'" in res.output and not out.exists()
    res = cli(*attack, "--dataset", "gaussians", "--subset", lst)  # the same split: fine
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--train-subset", lst, "--out", run)
    assert res.exit_code == 2 and "test-split" in res.output and not run.exists()
    res = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--train-subset", part, "--out", run)
    assert res.exit_code == 2 and "not a text file" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_compose_refuses_a_robust_model_that_did_not_make_the_table(cli, tmp_path):
    runs = {}
    for name, seed in (("a", "0"), ("b", "1")):
        runs[name] = tmp_path / name
        assert cli("finetune", "--loss", "std", "--dataset", "gaussians", "--epochs", "1", "--batch", "200", "--seed", seed,
                   "--out", runs[name], "-q").exit_code == 0
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", runs["a"], "--dataset", "gaussians", "--n-ex", "8", "--steps", "2",
               "--eps", "0.05", "--eps", "0.1", "--out", table, "-q").exit_code == 0
    out = tmp_path / "c.parquet"
    common = ["compose", "-r", table, "-c", table, "--eps", "0.05", "--selector", "sr", "--threshold", "0.5", "--out", out]
    res = cli(*common, "--robust-model", runs["b"])
    assert res.exit_code == 2 and "sha256 differs" in res.output and not out.exists()
    assert cli(*common, "--robust-model", runs["a"], "-q").exit_code == 0
