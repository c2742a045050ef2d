"""Data-parallel `robcli finetune` (robcli/train/parallel.py): 2 gloo ranks on CPU.

(1) One step on 2 ranks (DDP, each rank a slice of the global batch) gives the single-process gradient of the
whole batch, for ERA, TRADES, noise and CRA, also for an uneven (trailing) batch; negative controls: summed
instead of averaged gradients, an unscaled uneven split and per-rank random draws all differ. A BatchNorm model
gets the mean of the per-slice steps (each rank normalizes with its own slice) and identical running statistics,
whose mean is the single process's. (2) `torchrun -m robcli finetune` end to end: one run directory written by
rank 0, the single-process train_log, --resume on every rank, one-line refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robcli.distributed import World
from robcli.errors import UsageError
from robcli.losses import LossConfig, get_loss
from robcli.train import parallel
from robcli.utils.seeding import batch_rows

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name -> (loss, global batch, BatchNorm)
    "era": ("era", 8, False), "trades": ("trades", 8, False), "noise": ("noise", 8, False),
    "cra": ("cra", 8, False), "era_uneven": ("era", 7, False), "era_bn": ("era", 8, True),
}
LCFG = LossConfig(eps=0.1, attack_steps=3, num_noise=4)

# run as `python WORKER RANK INIT_FILE OUT_DIR`: one rank of a 2-rank gloo group
WORKER = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[4])
torch.set_num_threads(1)
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
from tests.test_finetune_distributed import CASES, LCFG, batch, make_model
from robcli.distributed import World
from robcli.losses import get_loss
from robcli.train import parallel
from robcli.utils.seeding import batch_rows

world = World(rank, 2, 0, "torchrun")
out = {}
for name, (loss, n, bn) in CASES.items():
    x, y = batch(n)
    ddp = parallel.replicate(make_model(bn), world, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    step, _, k = parallel.slice_loss(ddp, get_loss(loss), x, y, LCFG, gen, world)
    step.backward()
    parallel.average_buffers(ddp, world)
    m = parallel.unwrap(ddp)
    out[name] = {"grads": [p.grad.clone() for p in m.parameters()], "buffers": [b.clone() for b in m.buffers()],
                 "gen": gen.get_state(), "k": k}
for name, loss in (("noise_local_draws", "noise"), ("era_unscaled", "era")):  # the negative controls
    n = 7 if name == "era_unscaled" else 8
    lo, hi = parallel.rank_rows(n, world)
    x, y = batch(n)
    ddp = parallel.replicate(make_model(False), world, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    if name == "era_unscaled":  # whole-batch draws, but the 3- and 4-row slices' means averaged unweighted
        with batch_rows(lo, hi, n):
            step, _ = get_loss(loss)(ddp, x[lo:hi], y[lo:hi], LCFG, gen)
    else:  # each rank draws its own noise for its own rows
        step, _ = get_loss(loss)(ddp, x[lo:hi], y[lo:hi], LCFG, gen)
    step.backward()
    out[name] = {"grads": [p.grad.clone() for p in parallel.unwrap(ddp).parameters()]}
torch.save(out, f"{sys.argv[3]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def make_model(bn: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    mid = [torch.nn.BatchNorm1d(16)] if bn else []
    return torch.nn.Sequential(torch.nn.Linear(4, 16), *mid, torch.nn.ReLU(), torch.nn.Linear(16, 3))


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def single_step(loss: str, x, y, bn: bool, rows: tuple[int, int, int] | None = None):
    """The single-process step (optionally of rows lo:hi of the batch, drawing the whole batch's randomness)."""
    model = make_model(bn)
    gen = torch.Generator().manual_seed(5)
    if rows is None:
        value, _ = get_loss(loss)(model, x, y, LCFG, gen)
    else:
        lo, hi, n = rows
        with batch_rows(lo, hi, n):
            value, _ = get_loss(loss)(model, x[lo:hi], y[lo:hi], LCFG, gen)
    value.backward()
    return [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()], gen.get_state()


def _close(a, b, atol=1e-6) -> bool:
    return all(torch.allclose(u, v, atol=atol, rtol=0) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBCLI_DISTRIBUTED": "0"}
    procs = [subprocess.Popen([sys.executable, str(d / "worker.py"), str(r), str(d / "rdv"), str(d), str(ROOT)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("name", ["era", "trades", "noise", "cra", "era_uneven"])
def test_two_rank_step_is_the_single_process_step(ranks, name):
    loss, n, _ = CASES[name]
    x, y = batch(n)
    grads, _, gen = single_step(loss, x, y, False)
    assert [r[name]["k"] for r in ranks] == ([4, 4] if n == 8 else [3, 4])
    for r in ranks:
        assert _close(r[name]["grads"], grads), name
        assert torch.equal(r[name]["gen"], gen)  # every rank's loss generator advanced as the single process's
    # negative control: summing the ranks' gradients instead of averaging them
    assert not _close([2 * g for g in ranks[0][name]["grads"]], grads)


def test_negative_controls_differ(ranks):
    x, y = batch(8)
    grads, _, _ = single_step("noise", x, y, False)
    assert not _close(ranks[0]["noise_local_draws"]["grads"], grads)  # per-rank draws are not the batch's draws
    x, y = batch(7)
    grads, _, _ = single_step("era", x, y, False)
    assert not _close(ranks[0]["era_unscaled"]["grads"], grads)  # a 3/4 split needs the k*W/B weights


def test_batchnorm_ranks_use_their_slice_and_share_running_stats(ranks):
    x, y = batch(8)
    halves = [single_step("era", x, y, True, rows=(lo, hi, 8)) for lo, hi in ((0, 4), (4, 8))]
    mean_grads = [(a + b) / 2 for a, b in zip(halves[0][0], halves[1][0])]
    whole, whole_bufs, _ = single_step("era", x, y, True)
    for r in ranks:
        assert _close(r["era_bn"]["grads"], mean_grads)
    assert not _close(ranks[0]["era_bn"]["grads"], whole)  # per-slice batch statistics: not the global step
    b0, b1 = ranks[0]["era_bn"]["buffers"], ranks[1]["era_bn"]["buffers"]
    assert all(torch.equal(u, v) for u, v in zip(b0, b1))  # replicas stay identical
    assert torch.allclose(b0[0], whole_bufs[0], atol=1e-6)  # the running mean is the single process's
    assert not torch.allclose(halves[0][1][0], whole_bufs[0], atol=1e-6)  # (one slice alone is not)


def test_rank_rows_and_batch_checks():
    w = World(1, 2, 0, "torchrun")
    assert parallel.rank_rows(8, w) == (4, 8) and parallel.rank_rows(7, w) == (3, 7)
    assert parallel.rank_rows(8, World()) == (0, 8)
    assert parallel.batches_per_epoch(100, 20, w) == 5
    assert parallel.batches_per_epoch(103, 20, w) == 5  # 3 trailing rows: one rank would get 1
    assert parallel.batches_per_epoch(104, 20, w) == 6
    assert parallel.batches_per_epoch(103, 20, World()) == 6  # single process: unchanged rule
    from robcli.train.config import FinetuneConfig

    with pytest.raises(UsageError, match="--batch 15 does not split over the world size 2"):
        FinetuneConfig(loss="std", dataset="gaussians", out="x", model="tiny_mlp", batch=15, world_size=2)
    with pytest.raises(UsageError, match="--sync-bn needs several processes"):
        FinetuneConfig(loss="std", dataset="gaussians", out="x", model="tiny_mlp", sync_bn=True)
    a = FinetuneConfig(loss="std", dataset="gaussians", out="x", model="tiny_mlp", batch=20, world_size=2)
    b = FinetuneConfig(loss="std", dataset="gaussians", out="x", model="tiny_mlp", batch=20)
    assert a.to_dict()["world_size"] == 2 and a.identity() == b.identity()  # a free key: resume on other counts


def test_sync_bn_refused_on_cpu(tmp_path):
    from robcli.train.config import FinetuneConfig
    from robcli.train.loop import finetune

    cfg = FinetuneConfig(loss="std", dataset="gaussians", out=str(tmp_path / "r"), model="tiny_mlp", batch=20,
                         world_size=2, sync_bn=True, device="cpu")
    with pytest.raises(UsageError, match="--sync-bn needs CUDA"):
        finetune(cfg, world=World(0, 2, 0, "torchrun"))
    assert not (tmp_path / "r").exists()


def test_resolve_rank_device():
    from robcli.utils.device import resolve_rank_device

    w = World(1, 2, 1, "torchrun")
    assert resolve_rank_device("cpu", w) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_rank_device("auto", w) == torch.device("cpu")
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_rank_device("cuda", w)
    elif torch.cuda.device_count() >= 2:
        assert resolve_rank_device("auto", w) == torch.device("cuda", 1)


def _torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ROBCLI_DISTRIBUTED", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "robcli", "finetune", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120)


BASE = ["--loss", "era", "--dataset", "gaussians", "--model", "tiny_mlp", "--eps", "0.05", "--epochs", "1",
        "--device", "cpu", "--quiet"]


def test_torchrun_finetune_end_to_end(cli, tmp_path):
    import pandas as pd

    out = tmp_path / "ddp"
    r = _torchrun(*BASE, "--batch", "20", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run directory, written by rank 0
    assert {"card.json", "model.safetensors", "last.safetensors", "train_log.parquet", "resume_state.pt"} <= {
        p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["config"]["world_size"] == 2 and card["training"]["world_size"] == 2
    log = pd.read_parquet(out / "train_log.parquet")
    assert len(log) == 1
    # the single-process run on the same global batch: the same log (up to float reduction order)
    single = tmp_path / "single"
    r1 = cli("finetune", *BASE, "--batch", "20", "--out", single)
    assert r1.exit_code == 0, r1.output
    ref = pd.read_parquet(single / "train_log.parquet")
    assert list(log.columns) == list(ref.columns)
    for c in ("loss", "ce", "kl", "era", "train_nat_acc", "val_nat_acc", "val_robust_acc"):
        assert abs(float(log[c].iloc[0]) - float(ref[c].iloc[0])) < 1e-5, c
    # --resume: every rank loads the finished run's state and has nothing left to do
    r = _torchrun(*BASE, "--batch", "20", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(pd.read_parquet(out / "train_log.parquet")) == 1


def test_torchrun_refusals_are_one_line(cli, tmp_path):
    out = tmp_path / "bad"
    r = _torchrun(*BASE, "--batch", "15", "--out", out)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if "--batch 15 does not split over the world size 2" in ln]
    assert lines, r.stderr[-3000:]
    assert not out.exists()
    # rank 0's verdict on the run directory reaches every rank: a resume with another configuration
    good = tmp_path / "good"  # made by a single process: world size is no part of what --resume compares
    r1 = cli("finetune", *BASE, "--batch", "20", "--out", good)
    assert r1.exit_code == 0, r1.output
    r = _torchrun(*BASE, "--batch", "20", "--lr", "0.5", "--out", good, "--resume")
    assert r.returncode != 0
    # rank 0 found it and prints it; rank 1 stops with the same exit code, silently (one line per job)
    assert r.stderr.count("was made with a different configuration") == 1, r.stderr[-3000:]
