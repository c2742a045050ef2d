"""Recommended training defaults per data set and architecture (issue 9, item 6): applied only where the user
gives no flag (click's parameter source), recorded in the card; the epoch table shows the minimum per-class
val recall; a saved model with a class of zero recall ends the run with a coloured warning."""

from __future__ import annotations

import json

import torch

from robcli.data.registry import recommended_training
from robcli.train.config import FinetuneConfig


def test_registry_lookup_arch_then_star_then_nothing():
    rec, src = recommended_training("gaussians", "mlp", finetune=False)
    assert rec["batch"] == 10 and rec["lr"] == 0.1 and rec["epochs"] == 20 and rec["momentum"] == 0.0
    assert rec["lr_milestones"] == () and src.startswith("gaussians/mlp from scratch") and "A.2" in src
    rec, src = recommended_training("gaussians", "tiny_mlp", finetune=True)  # no entry for it: the "*" one
    assert rec["lr"] == 0.01 and rec["batch"] == 10 and src.startswith("gaussians/* fine-tuning")
    assert recommended_training("digits", "small_cnn", finetune=False)[0]["batch"] == 64
    assert recommended_training("cifar10", "resnet18", finetune=False) == ({}, "")
    assert recommended_training("no-such-data", None, finetune=False) == ({}, "")


def test_config_resolves_only_what_was_not_given():
    c = FinetuneConfig(loss="std", dataset="gaussians", out="x")
    assert (c.batch, c.lr, c.epochs, c.momentum, c.weight_decay, c.lr_milestones) == (10, 0.1, 20, 0.0, 0.0, ())
    assert set(c.defaults_from) == {"epochs", "lr", "batch", "momentum", "weight_decay", "lr_milestones"}
    assert all(v.startswith("gaussians/mlp from scratch") for v in c.defaults_from.values())
    # given values stay, even when equal to robcli's generic default
    c = FinetuneConfig(loss="std", dataset="gaussians", out="x", batch=200, momentum=0.9)
    assert c.batch == 200 and c.momentum == 0.9 and "batch" not in c.defaults_from and c.lr == 0.1
    # a data set without recommendations: the generic defaults, recorded as such
    c = FinetuneConfig(loss="std", dataset="cifar10", out="x")
    assert c.batch == 200 and c.momentum == 0.9 and c.weight_decay == 2e-4
    assert set(c.defaults_from.values()) == {"robcli generic default"}
    # the provenance is recorded but is not part of a run's identity (resume compares values)
    c1 = FinetuneConfig(loss="std", dataset="gaussians", out="x")
    c2 = FinetuneConfig(loss="std", dataset="gaussians", out="x", batch=10, lr=0.1, epochs=20, momentum=0.0,
                        weight_decay=0.0, lr_milestones=())
    assert c1.identity() == c2.identity() and c1.to_dict()["defaults_from"] and not c2.defaults_from


def test_fine_tuning_looks_up_the_init_run_architecture(tmp_path):
    from robcli.models import build, make_card, save_run

    run = save_run(tmp_path / "tiny", build("tiny_mlp", 3, (2,)), make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    c = FinetuneConfig(loss="trades", dataset="gaussians", out="x", init=str(run), eps=0.05)
    assert c.start_arch() == "tiny_mlp"
    assert (c.lr, c.epochs, c.batch, c.lr_milestones) == (0.01, 20, 10, (0.75,))
    assert c.defaults_from["lr"].startswith("gaussians/* fine-tuning")
    # a checkpoint file beside its card, and --arch for a bare one
    assert FinetuneConfig(loss="std", dataset="gaussians", out="x", init=str(run / "model.safetensors")).start_arch() == "tiny_mlp"
    assert FinetuneConfig(loss="std", dataset="gaussians", out="x", init="w.pt", arch="mlp").start_arch() == "mlp"


def _card(out):
    return json.loads((out / "card.json").read_text())


def test_issue_command_keeps_every_class_and_records_its_defaults(cli, tmp_path):
    # the issue's command: with robcli's generic batch 200 / momentum 0.9 it never predicted the small class
    torch.set_num_threads(1)  # 1800 steps of a 4x64 MLP at batch 10: a second thread only adds contention
    out = tmp_path / "g7"
    r = cli("finetune", "--dataset", "gaussians", "--model", "mlp", "--loss", "std", "--epochs", "20", "--seed", "7",
            "--out", out)
    assert r.exit_code == 0, r.output
    from robcli.tables import read_table

    log = read_table(out / "train_log.parquet", "train_log").df
    best = log[log["epoch"] == _card(out)["training"]["best_epoch"]].iloc[0]
    assert best["val_min_recall"] > 0.5 and best["val_pred_classes"] == 3 and best["val_zero_recall"] == ""
    cfg = _card(out)["training"]["config"]
    assert cfg["batch"] == 10 and cfg["momentum"] == 0.0 and cfg["epochs"] == 20
    assert "epochs" not in cfg["defaults_from"] and cfg["defaults_from"]["batch"].startswith("gaussians/mlp")
    assert "recall" in r.stdout and "defaults taken from gaussians/mlp" in r.stdout
    assert "WARNING" not in r.stderr


def test_explicit_flags_win_by_parameter_source_and_zero_recall_warns(cli, tmp_path):
    # the same run with the generic values GIVEN (equal to the options' defaults, yet given): they are used,
    # the model loses the small class, and a red warning says it is a training failure
    out = tmp_path / "generic"
    r = cli("finetune", "--dataset", "gaussians", "--model", "mlp", "--loss", "std", "--epochs", "20", "--seed", "7",
            "--batch", "200", "--momentum", "0.9", "--weight-decay", "2e-4", "--lr-milestones", "0.75", "--out", out)
    assert r.exit_code == 0, r.output
    cfg = _card(out)["training"]["config"]
    assert cfg["batch"] == 200 and cfg["momentum"] == 0.9 and set(cfg["defaults_from"]) == {"lr"}
    assert "WARNING" in r.stderr and "never predicts class 'small' (2)" in r.stderr
    assert "training failure" in r.stderr and "Fig. 1" not in r.stderr
    assert "model.safetensors (best epoch" in r.stderr


def test_zero_recall_warning_for_a_robust_model_points_to_partition():
    import pandas as pd

    from robcli.train.diagnose import zero_recall_warning
    from robcli.train.loop import FinetuneResult

    log = pd.DataFrame({"epoch": [1, 2], "val_zero_recall": ["", "2"]})
    res = FinetuneResult(run_dir=None, log=log, best_epoch=1, criterion="", collapsed=False,
                         card={"class_names": ["left", "right", "small"]})
    msg, robust = zero_recall_warning(res, "trades")
    assert robust and "last.safetensors (last epoch 2) never predicts class 'small' (2)" in msg
    assert "model.safetensors" not in msg  # the best epoch keeps every class
    assert "Fig. 1" in msg and "robcli partition" in msg and "training failure" not in msg
    msg, robust = zero_recall_warning(res, "std")
    assert not robust and "training failure" in msg
    res.log = pd.DataFrame({"epoch": [1, 2], "val_zero_recall": ["", ""]})
    assert zero_recall_warning(res, "trades") is None


def test_list_datasets_shows_the_recommended_defaults(cli):
    r = cli("list", "datasets")
    assert r.exit_code == 0, r.output
    g = r.stdout.split("gaussians", 1)[1].split("\n")[1]
    assert "finetune defaults (mlp, any other architecture)" in g and "from scratch --epochs 20, --lr 0.1, --batch 10" in g
    assert "--lr-milestones none" in g and "with --init --epochs 20, --lr 0.01" in g
