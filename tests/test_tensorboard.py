"""finetune --tensorboard DIR: every epoch's train_log row, read back from the event files, equals the table."""

from __future__ import annotations

import math
import sys

import pytest

from robcli.tables.io import read_table

FAST = ["--loss", "trades", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.1", "--epochs", "3",
        "--batch", "100", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0", "--lr-milestones", "0.5",
        "--attack-steps", "2", "-q"]


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'robcli[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_every_epochs_train_log_row(cli, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'robcli[tensorboard]')")
    out, tb = tmp_path / "run", tmp_path / "tb"
    r = cli("finetune", *FAST, "--out", out, "--tensorboard", tb)
    assert r.exit_code == 0, r.output
    log = read_table(out / "train_log.parquet", "train_log").df
    got = _scalars(tb)
    assert {"loss", "lr", "train_nat_acc", "val_nat_acc", "val_robust_acc", "collapsed"} <= set(got)
    numeric = [c for c in log.columns if c != "epoch" and log[c].dtype.kind in "fiub"]
    for col in numeric:
        want = [(int(e), float(v)) for e, v in zip(log["epoch"], log[col]) if math.isfinite(float(v))]
        if not want:
            assert col not in got
            continue
        steps = [s for s, _ in got[col]]
        assert steps == [s for s, _ in want], col
        # event files store float32
        assert [v for _, v in got[col]] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), col
    assert [s for s, _ in got["lr"]] == [1, 2, 3] and got["lr"][2][1] == pytest.approx(0.005)  # the milestone


def test_resume_shows_each_epoch_once(tmp_path):
    """A run stopped after epoch 1 and resumed shows epochs 1, 2, 3 once each, with the values it kept, even
    when an earlier attempt left events of later epochs in the folder (purge_step)."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'robcli[tensorboard]')")
    from torch.utils.tensorboard import SummaryWriter

    from robcli.train.config import FinetuneConfig
    from robcli.train.loop import finetune

    out, tb = tmp_path / "run", tmp_path / "tb"
    cfg = FinetuneConfig(loss="std", dataset="gaussians", out=str(out), model="tiny_mlp", eps=0.0, epochs=3,
                         batch=100, lr=0.05, momentum=0.9, weight_decay=0.0, lr_milestones=(), seed=1)

    class Kill(Exception):
        pass

    def cb(done, total, desc):
        if desc == "epochs" and done == 1:
            raise Kill

    with pytest.raises(Kill):
        finetune(cfg, cb, tensorboard=tb)
    stray = SummaryWriter(str(tb))  # an attempt that got further than its resume state
    stray.add_scalar("loss", 999.0, global_step=2)
    stray.close()
    res = finetune(cfg, resume=True, tensorboard=tb)
    assert res.resumed_from == 1
    got = _scalars(tb)
    assert [s for s, _ in got["loss"]] == [1, 2, 3]
    assert [v for _, v in got["loss"]] == pytest.approx(list(res.log["loss"]), rel=1e-6)


def test_missing_tensorboard_is_one_line_and_writes_nothing(cli, tmp_path, monkeypatch):
    # simulate an environment without the package: find_spec and the import both fail
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out, tb = tmp_path / "run", tmp_path / "tb"
    r = cli("finetune", *FAST, "--out", out, "--tensorboard", tb)
    assert r.exit_code == 2 and "tensorboard package" in r.output and "robcli[tensorboard]" in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1
    assert not out.exists() and not tb.exists()


def test_tensorboard_on_a_file_and_with_mixnet_are_refused(cli, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = cli("finetune", *FAST, "--out", tmp_path / "run", "--tensorboard", f)
    assert r.exit_code == 2 and "not a folder" in r.output and not (tmp_path / "run").exists()
    r = cli("finetune", "--loss", "mixnet", "--core", "a", "--robust", "b", "--out", tmp_path / "m",
            "--tensorboard", tmp_path / "tb")
    assert r.exit_code == 2 and "--tensorboard" in r.output and "mixnet" in r.output


def test_scalars_of_a_row():
    from robcli.train.tensorboard import scalars

    row = {"epoch": 2, "lr": 0.1, "loss": 1.5, "collapsed": True, "val_robust_acc": float("nan"), "note": "x",
           "val_pred_classes": 3}
    assert scalars(row) == {"lr": 0.1, "loss": 1.5, "collapsed": 1.0, "val_pred_classes": 3.0}
