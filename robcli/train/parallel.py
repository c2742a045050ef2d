"""Data-parallel ``robcli finetune``: one model replica per rank (torchrun/srun), DistributedDataParallel.

The scheme (what :func:`robcli.train.loop.finetune` does with a grouped :class:`robcli.distributed.World`):

* **Batches.** ``--batch`` is the GLOBAL batch. Every rank draws the same seeded shuffling (and, with
  ``--augment``, augments the whole global batch with the same generator), then takes a contiguous slice:
  rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` (:func:`rank_rows`); a ``--batch`` that ``W`` does not
  divide is refused. The trailing partial batch of an epoch (``n % B`` rows) is split the same way (sizes
  differ by at most one row) and kept when every rank gets at least 2 rows (``n % B >= 2W``; the single
  process keeps it from 2 rows), else dropped.
* **Randomness inside the loss.** The loss of rows ``lo:hi`` runs inside
  :func:`robcli.utils.seeding.batch_rows`: the TRADES start noise, PGD's random start and Gaussian noise are
  drawn for the whole global batch and sliced, so each rank's draws are the single process's rows and all
  generators advance identically (a world size changes no random draw).
* **Gradients.** Every loss is a batch mean; DDP averages the ranks' gradients, and the mean of equal-sized
  slices' means is the global mean. For an unequal (trailing) slice the rank's loss is scaled by
  ``k_r * W / B`` before the backward pass, which makes DDP's average the global mean again. So one step on
  ``W`` ranks is the single-process step on the same global batch, up to the order of float reductions
  (tests/test_finetune_distributed.py checks it for ERA and TRADES at atol 1e-6).
* **Several forward passes per step.** TRADES runs 2 train-mode forwards per step (clean and adversarial),
  ERA/DGA 3, CRA one over all noisy copies. The adversaries themselves (TRADES' KL ascent, ERA/DGA's inner
  descent, ``--era-adv single``'s CE ascent) use ``torch.autograd.grad`` with respect to the INPUT, which DDP
  does not support through its wrapper: they run on the wrapped module (:func:`unwrap`, ``ddp.module``) in
  eval mode, so they touch neither DDP's reducer nor BatchNorm statistics. The forwards whose outputs enter
  the loss go through the DDP wrapper, all of them before the single ``loss.backward()``; every parameter is
  used by every forward, so ``find_unused_parameters=False`` holds, and autograd sums a parameter's
  contributions from the several forwards before DDP's hook sees it, so each gradient is reduced once.
  ``broadcast_buffers=False`` (``forward_sync_buffers=False`` in torch >= 2.14): DDP would otherwise overwrite the BatchNorm running statistics in place at
  every forward, between forwards whose backward still needs them.
* **BatchNorm.** The documented policy is unchanged (:mod:`robcli.models.bn`): adversaries in eval mode, only
  the clean forward updates running statistics, adversarial forwards use batch statistics with the running
  ones frozen. Without ``--sync-bn`` each rank normalizes with the statistics of its own slice (so a BN
  model's step is the mean of the per-slice steps, not the single-process step; world size then matters),
  and after every step the floating running statistics are averaged over ranks (:func:`average_buffers`;
  the running mean is then exactly the single process's, the variance close to it), so the replicas stay
  identical. ``--sync-bn`` (CUDA/nccl only) converts BatchNorm to SyncBatchNorm: batch statistics over the
  global batch, as in the single process.
* **Metrics.** The per-step loss and loss terms are summed over ranks (weighted by rows) with one small
  ``all_reduce`` per step (:func:`reduce_sums`), so every rank's ``train_log`` row describes the global batch
  and a non-finite loss stops every rank in the same step. Per-epoch evaluation (train accuracy, val
  metrics) runs on every rank on identical replicas with the same seeded generator: identical results, no
  rank waiting on another; only rank 0 writes.
"""

from __future__ import annotations

from typing import Callable

import torch

from robcli.distributed import World
from robcli.errors import UsageError


def rank_rows(batch: int, world: World) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a global batch of ``batch`` rows that this rank takes (contiguous slices whose
    sizes differ by at most one; ``[r*B/W, (r+1)*B/W)`` when ``W`` divides ``B``)."""
    w, r = (world.size, world.rank) if world.grouped else (1, 0)
    return r * batch // w, (r + 1) * batch // w


def world_size(world: World) -> int:
    """How many replicas train: the world size under torchrun/srun, else 1."""
    return world.size if world.grouped else 1


def check_batch(batch: int, world: World) -> None:
    """A global ``--batch`` must split into equal slices over the ranks."""
    w = world_size(world)
    if batch % w:
        raise UsageError(f"--batch {batch} does not split over the world size {w}: give a multiple of {w} (--batch "
                         "is the global batch, each rank takes --batch / world size rows)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise): what adversaries,
    evaluation and saving use."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def replicate(model: torch.nn.Module, world: World, device: torch.device, *, sync_bn: bool = False) -> torch.nn.Module:
    """Wrap ``model`` (already on ``device``) in DistributedDataParallel when ``world`` is grouped (the
    process group must exist); ``sync_bn`` converts BatchNorm to SyncBatchNorm first. The replicas start
    from rank 0's parameters and buffers (DDP broadcasts them)."""
    if not world.grouped:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    import inspect

    # no buffer broadcast at each forward (torch >= 2.14 names it forward_sync_buffers; both keep the sync at init)
    key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False, **{key: False})


def slice_loss(model: torch.nn.Module, loss_fn: Callable, xb: torch.Tensor, yb: torch.Tensor, lcfg, gen,
               world: World, total: int | None = None):
    """The loss of this rank's slice of the global batch ``(xb, yb)`` (or of ``xb, yb`` already sliced, when
    ``total`` gives the global batch size), scaled so that DDP's gradient average is the global batch mean.

    Returns:
        ``(loss, terms, k)``: the tensor to call ``backward`` on, the loss terms of the slice (floats, unscaled)
        and the slice's row count ``k``. ``loss`` divided by the scale is the slice's mean loss; see
        :func:`reduce_sums` for the global values.
    """
    from robcli.utils.seeding import batch_rows

    n = int(total) if total is not None else int(yb.shape[0])
    lo, hi = rank_rows(n, world)
    if total is None:
        xb, yb = xb[lo:hi], yb[lo:hi]
    k = hi - lo
    if world_size(world) == 1:
        loss, terms = loss_fn(model, xb, yb, lcfg, gen)
        return loss, terms, k
    with batch_rows(lo, hi, n):
        loss, terms = loss_fn(model, xb, yb, lcfg, gen)
    scale = k * world_size(world) / n
    return (loss * scale if scale != 1.0 else loss), terms, k


def reduce_sums(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (the values themselves in a single process)."""
    if world_size(world) == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def average_buffers(model: torch.nn.Module, world: World) -> None:
    """Average the floating buffers (BatchNorm running statistics) of the replicas in place, so they stay
    identical (a no-op in a single process, for models without floating buffers and under SyncBatchNorm,
    whose statistics are already those of the global batch)."""
    if world_size(world) == 1:
        return
    bufs = [b for b in unwrap(model).buffers() if b.is_floating_point()]
    if not bufs:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    with torch.no_grad():
        flat = _flatten_dense_tensors(bufs)
        dist.all_reduce(flat)
        flat /= world_size(world)
        for b, v in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
            b.copy_(v)


def batches_per_epoch(n: int, batch: int, world: World) -> int:
    """Batches of one epoch of ``n`` examples: the full ones, plus the trailing partial batch when every rank
    gets at least 2 of its rows (a single process: when it has at least 2, a batch of 1 breaks BatchNorm)."""
    w = world_size(world)
    if w == 1:
        return max(1, n // batch + (1 if n % batch > 1 else 0))
    nb = n // batch + (1 if n % batch >= 2 * w else 0)
    if nb == 0:
        raise UsageError(f"{n} training examples are too few for a world size of {w} (each rank needs 2 rows)")
    return nb


__all__ = ["average_buffers", "batches_per_epoch", "check_batch", "rank_rows", "reduce_sums", "replicate",
           "slice_loss", "unwrap", "world_size"]
