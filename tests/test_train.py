"""Training loop: determinism, resume bit-equality, train_log columns, checkpoints, schedule, augmentation."""

from __future__ import annotations

import json

import pytest
import torch

from robcli.errors import UsageError
from robcli.tables import read_table
from robcli.train.config import FinetuneConfig
from robcli.train.loop import finetune


def _cfg(out, **kw):
    base = dict(loss="era", dataset="gaussians", out=str(out), model="tiny_mlp", eps=0.05, epochs=3, batch=100,
                lr=0.05, attack_steps=3, eval_steps=5, seed=7)
    base.update(kw)
    return FinetuneConfig(**base)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_run_dir_contents_and_log(tmp_path):
    r = finetune(_cfg(tmp_path / "run"))
    for f in ("model.safetensors", "last.safetensors", "card.json", "train_log.parquet", "resume_state.pt"):
        assert (tmp_path / "run" / f).exists(), f
    t = read_table(tmp_path / "run" / "train_log.parquet", "train_log")
    for c in ("epoch", "lr", "loss", "train_nat_acc", "val_nat_acc", "val_robust_acc", "val_robust_inaccuracy",
              "seconds", "ce", "kl", "trades", "era_weight", "era_ce", "era", "collapsed"):
        assert c in t.df.columns, c
    assert t.df["epoch"].tolist() == [1, 2, 3]
    assert t.config["loss"] == "era"
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["training"]["best_epoch"] == r.best_epoch
    assert card["training"]["criterion"] == "val_robust_acc - val_robust_inaccuracy"
    score = t.df["val_robust_acc"] - t.df["val_robust_inaccuracy"]
    assert r.best_epoch == int(t.df["epoch"][score == score.max()].max())  # ties -> later epoch
    from robcli.models.io import load_model

    lm = load_model(tmp_path / "run")
    assert lm.card["dataset"] == "gaussians"


def test_lr_schedule():
    c = FinetuneConfig(loss="std", dataset="gaussians", out="x", epochs=20, lr=0.1, lr_milestones=(0.75, 0.9))
    lrs = [c.lr_at(e) for e in range(20)]
    assert lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.01) and lrs[18] == pytest.approx(0.001)
    ft = FinetuneConfig(loss="std", dataset="gaussians", out="x", init="somewhere")
    assert ft.lr == 1e-3 and ft.epochs == 50


@pytest.mark.parametrize("bad", [dict(eps=0.0), dict(lr=-1.0), dict(epochs=0), dict(loss="nope"),
                                 dict(augment="standard", loss="std", eps=0.0)])
def test_bad_config(tmp_path, bad):
    with pytest.raises(UsageError):
        finetune(_cfg(tmp_path / "bad", **bad))
    assert not (tmp_path / "bad").exists()


def test_deterministic_and_resume_bit_identical(tmp_path):
    full = finetune(_cfg(tmp_path / "full"))

    class Kill(Exception):
        pass

    def cb(done, total, desc):
        if desc == "epochs" and done == 1:
            raise Kill

    with pytest.raises(Kill):
        finetune(_cfg(tmp_path / "part"), cb)
    assert (tmp_path / "part" / "resume_state.pt").exists()
    res = finetune(_cfg(tmp_path / "part"), resume=True)
    assert res.resumed_from == 1
    a, b = _weights(tmp_path / "full" / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = _weights(tmp_path / "full" / "model.safetensors"), _weights(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.log["loss"].tolist() == res.log["loss"].tolist()
    again = finetune(_cfg(tmp_path / "again"))  # same seed -> same weights
    c = _weights(tmp_path / "again" / "last.safetensors")
    d = _weights(tmp_path / "full" / "last.safetensors")
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert again.log["val_nat_acc"].tolist() == full.log["val_nat_acc"].tolist()


def test_resume_refuses_other_config(tmp_path):
    finetune(_cfg(tmp_path / "r", epochs=1))
    with pytest.raises(UsageError):
        finetune(_cfg(tmp_path / "r", epochs=1, beta=2.0), resume=True)


def test_existing_out_needs_force(tmp_path):
    finetune(_cfg(tmp_path / "r", epochs=1, loss="std", eps=0.0))
    with pytest.raises(UsageError):
        finetune(_cfg(tmp_path / "r", epochs=1, loss="std", eps=0.0))
    finetune(_cfg(tmp_path / "r", epochs=1, loss="std", eps=0.0), force=True)
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "precious.txt").write_text("x")
    with pytest.raises(UsageError):
        finetune(_cfg(tmp_path / "notrun", epochs=1), force=True)
    assert (tmp_path / "notrun" / "precious.txt").exists()


def test_collapse_flag(tmp_path):
    # lr so large that training diverges to a constant prediction -> near chance on val
    r = finetune(_cfg(tmp_path / "c", loss="std", eps=0.0, lr=0.5, epochs=1, model="tiny_mlp", weight_decay=5.0))
    assert r.collapsed == bool(r.log["val_nat_acc"].iloc[-1] <= 1 / 3 + 0.05)
    assert json.loads((tmp_path / "c" / "card.json").read_text())["training"]["collapsed"] == r.collapsed


def test_digits_cnn_trades_with_augment_and_init(tmp_path):
    from robcli.data.registry import load_split

    idx = load_split("digits", "train").idx[:300].tolist()
    std = finetune(FinetuneConfig(loss="std", dataset="digits", out=str(tmp_path / "std"), model="tiny_cnn",
                                  epochs=3, lr=0.1, batch=64, augment="standard", train_subset=tuple(idx)))
    assert std.log["val_nat_acc"].max() > 0.2  # chance is 0.1
    r = finetune(FinetuneConfig(loss="trades", dataset="digits", out=str(tmp_path / "tr"), init=str(tmp_path / "std"),
                                eps=0.05, epochs=1, batch=100, attack_steps=2, eval_steps=3, augment="autoaugment",
                                train_subset=tuple(idx)))
    assert r.card["training"]["init"] == str(tmp_path / "std")
    assert r.criterion == "val_robust_acc"
