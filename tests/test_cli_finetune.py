"""`robcli finetune` in-process: success path and one-line errors with nothing left behind."""

from __future__ import annotations

import json

import pytest


def test_finetune_cli_runs(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("finetune", "--loss", "era", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.05",
            "--epochs", "2", "--batch", "100", "--lr", "0.05", "--attack-steps", "2", "--beta", "0.5",
            "--no-detach-weight", "--era-adv", "single", "--lr-milestones", "none", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["config"]["detach_weight"] is False
    assert card["training"]["config"]["era_adv"] == "single"
    assert card["training"]["config"]["lr_milestones"] == []
    r2 = cli("finetune", "--loss", "era", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.05",
             "--epochs", "2", "--batch", "100", "--lr", "0.05", "--attack-steps", "2", "--beta", "0.5",
             "--no-detach-weight", "--era-adv", "single", "--lr-milestones", "none", "--out", out, "--quiet", "--resume")
    assert r2.exit_code == 0, r2.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--loss", "nope"], "unknown loss"),
        (["--loss", "trades"], "--eps > 0"),
        (["--loss", "trades", "--eps", "-1"], "negative"),
        (["--loss", "std", "--lr", "0"], "--lr"),
        (["--loss", "std", "--epochs", "0"], "--epochs"),
        (["--loss", "std", "--augment", "standard"], "vector data"),
        (["--loss", "mixnet"], "needs --core G and --robust H"),
        (["--loss", "std", "--core", "g"], "--core does not apply without --loss mixnet"),
        (["--loss", "std", "--model", "no_such_arch"], "not a registered architecture"),
        (["--loss", "std", "--train-subset", "/nonexistent/file"], "--train-subset"),
    ],
)
def test_finetune_cli_errors(cli, tmp_path, args, needle):
    out = tmp_path / "run"
    r = cli("finetune", "--dataset", "gaussians", "--out", out, "--quiet", *args)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln]
    assert len(lines) == 1 and needle in lines[0], r.output
    assert not out.exists()


def test_init_that_does_not_fit(cli, tmp_path):
    src = tmp_path / "gauss"
    r = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--model", "tiny_mlp", "--epochs", "1", "--batch", "200",
            "--out", src, "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "digits_run"
    r = cli("finetune", "--loss", "std", "--dataset", "digits", "--init", src, "--epochs", "1", "--out", out, "--quiet")
    assert r.exit_code == 2 and "shape" in r.output
    assert not out.exists()
    r = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--model", "tiny_mlp", "--epochs", "1", "--out", src, "--quiet")
    assert r.exit_code == 2 and "exists" in r.output


def test_nan_loss_is_one_line_without_warning(cli, tmp_path):
    import warnings

    out = tmp_path / "nan"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--model", "tiny_mlp", "--epochs", "2",
                "--lr", "1e30", "--out", out, "--quiet")
    assert r.exit_code == 2
    assert [str(w.message) for w in caught] == []
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "loss became nan" in lines[0] and "lower --lr" in lines[0], r.stderr
    assert not out.exists()


def test_sigterm_handler_acts_like_ctrl_c_and_is_restored():
    import os
    import signal
    import threading
    import time

    from robcli.cli.main import sigterm_as_interrupt

    def mine(signum, frame):
        return None

    prev = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_interrupt() as g:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert g.received
        assert signal.getsignal(signal.SIGTERM) is mine  # restored
        with sigterm_as_interrupt() as g:  # a second SIGTERM during cleanup is ignored
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert g.received and signal.getsignal(signal.SIGTERM) is mine
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("g", sigterm_as_interrupt().__enter__()))
        t.start()
        t.join()
        assert not box["g"].enabled and signal.getsignal(signal.SIGTERM) is mine  # main thread only
    finally:
        signal.signal(signal.SIGTERM, prev)


def test_sigterm_mid_run_keeps_progress_and_resume_finishes(cli, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["finetune", "--loss", "era", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.05",
            "--epochs", "4", "--batch", "50", "--attack-steps", "3", "--lr", "0.05", "--out", str(out), "--quiet"]
    p = subprocess.Popen([sys.executable, "-m", "robcli.cli.main", *args], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (out / "resume_state.pt").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be stopped"
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "interrupted (use --resume to continue)" in err and "Traceback" not in err
    import pandas as pd

    done = len(pd.read_parquet(out / "train_log.parquet"))
    assert 1 <= done < 4
    r = cli(*args, "--resume")
    assert r.exit_code == 0, r.output
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["epochs_done"] == 4
    assert len(pd.read_parquet(out / "train_log.parquet")) == 4


@pytest.fixture(scope="module")
def mix_members(tmp_path_factory):
    import torch
    import torch.nn.functional as F

    from robcli.data.registry import load_split
    from robcli.models import build, make_card, save_run

    d = tmp_path_factory.mktemp("mixm")
    tr = load_split("digits", "train")
    x, y = tr.tensors()
    paths = {}
    for name, seed in (("g", 0), ("h", 1)):
        torch.manual_seed(seed)
        m = build("tiny_cnn", 10, (1, 8, 8), mean=tr.info.mean, std=tr.info.std)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for s in range(0, 256, 64):
            F.cross_entropy(m(x[s:s + 64]), y[s:s + 64]).backward()
            opt.step()
            opt.zero_grad()
        save_run(d / name, m.eval(), make_card("tiny_cnn", 10, (1, 8, 8), dataset="digits", mean=tr.info.mean,
                                               std=tr.info.std))
        paths[name] = str(d / name)
    return paths


def test_finetune_mixnet_passes_mix_space_and_scales(cli, mix_members, tmp_path):
    out = tmp_path / "mix"
    base = ["finetune", "--loss", "mixnet", "--dataset", "digits", "--core", mix_members["g"], "--robust",
            mix_members["h"], "--eps", "0.1", "--epochs", "1", "--attack-steps", "1", "--batch", "512", "--quiet"]
    r = cli(*base, "--mix-space", "logit", "--scale-g", "2", "--scale-h", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    mix = json.loads((out / "card.json").read_text())["mixnet"]
    assert mix["mix_space"] == "logit" and mix["scale_g"] == 2.0 and mix["scale_h"] == 0.5
    for bad, needle in ((["--scale-g", "0"], "--scale-g"), (["--scale-h", "-1"], "--scale-h"),
                        (["--mix-space", "nope"], "mix space")):
        o = tmp_path / f"bad{bad[0]}"
        r = cli(*base, *bad, "--out", o)
        lines = [ln for ln in r.output.strip().splitlines() if ln]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.output
        assert not o.exists()
    r = cli("finetune", "--loss", "std", "--dataset", "gaussians", "--scale-g", "2", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 2 and "--scale-g does not apply without --loss mixnet" in r.output
