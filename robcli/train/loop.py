"""The finetune training loop: a pure function of a :class:`FinetuneConfig` and a progress callback.

Per epoch: seeded shuffling (dedicated generator), optional augmentation, the registered loss
(``get_loss(cfg.loss)``), SGD with momentum and weight decay, the step learning-rate schedule; then
train natural accuracy (eval mode, un-augmented), and on the ``val`` split (carved from train): natural
accuracy and robust accuracy / robust inaccuracy under PGD at the training eps, judged against the model's
OWN clean prediction (margin objective ``-(z_F(x) - max_{c != F(x)} z_c)``, ``cfg.eval_steps`` = 20 steps,
``cfg.eval_restarts`` = 1 uniform random start, step ``2.5 * eps / steps``; a point counts as non-robust
if any restart changes the prediction). For inputs of dimension <= 3 (the 2-D Gaussians) the points PGD
left robust are also checked on a grid over the ball (:func:`robcli.attacks.grid.grid_search`,
:data:`VAL_GRID_POINTS` values per axis: 41 in 2-D, spacing eps/20), as ``robcli attack --attack grid``
does, because gradient attacks miss thin non-robust slivers there. For ``noise``/``cra`` also
``val_noisy_acc``: accuracy under Gaussian noise at ``cfg.sigma`` (:data:`VAL_NOISE_DRAWS` draws per
point, not clipped, as ``robcli certify`` adds it). This is a quick model-selection signal, not an
evaluation: use ``robcli attack`` / ``robcli certify`` for that.

Collapse (:func:`collapse_check`, per epoch in ``train_log`` column ``collapsed``; the run is flagged in
``card.json`` ``training.collapsed`` when the last or the best epoch collapsed): val natural accuracy at
most the majority-class share of val plus ``min(COLLAPSE_MARGIN, (1 - share) / 2)``, i.e. no better than
always predicting the largest class (on the balanced digits that is chance, 1/K; on the Gaussians the
largest class is 49% of val, so a 1/K rule lets a constant predictor through), or the predictions on
val covering a single class. A class with zero recall is NOT collapse (the Fig. 1 phenomenon is exactly a
TRADES model giving up the small class); it is logged as ``val_min_recall`` next to ``val_pred_classes``.

Files in the run directory (all written atomically):
``train_log.parquet`` (kind ``train_log``, rewritten each epoch), ``model.safetensors`` (best epoch by
:func:`robcli.train.config.selection_criterion`, ties to the later epoch), ``last.safetensors``,
``card.json``, ``resume_state.pt`` (model, optimizer, epoch, generator and RNG states, log rows, best;
``torch.save``, read back only with ``weights_only=True``). The lr schedule is a pure function of the
epoch (:meth:`FinetuneConfig.lr_at`), so it needs no state of its own.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from robcli.errors import ModelError, RobcliError, UsageError
from robcli.train.config import FinetuneConfig, selection_criterion
from robcli.utils.fsio import atomic_target

ProgressFn = Callable[[int, int, str], None]
RESUME = "resume_state.pt"
LOG = "train_log.parquet"
COLLAPSE_MARGIN = 0.05  # collapsed: val natural accuracy <= majority-class share + 5 points (see collapse_check)
VAL_GRID_POINTS = {1: 201, 2: 41, 3: 11}  # grid values per axis for the validation attack (dimension <= 3)
VAL_NOISE_DRAWS = 8  # Gaussian draws per val point for val_noisy_acc (noise/cra)
NOISY_LOSSES = ("noise", "cra")


@dataclass
class FinetuneResult:
    run_dir: Path
    log: object  # pandas.DataFrame
    best_epoch: int
    criterion: str
    collapsed: bool
    card: dict = field(default_factory=dict)
    resumed_from: int = 0


def _noop(done: int, total: int, desc: str) -> None:
    return None


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (not any(p.iterdir()) or any((p / n).exists() for n in ("card.json", RESUME, LOG)))


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def _load_data(cfg: FinetuneConfig):
    from robcli.data.registry import load_split

    train = load_split(cfg.dataset, "train", data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    if cfg.train_subset is not None:
        train = train.select(subset=cfg.train_subset)
    val = load_split(cfg.dataset, "val", data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    if cfg.augment != "none" and not train.info.is_image:
        raise UsageError(f"--augment {cfg.augment} needs images; {cfg.dataset} is vector data (use --augment none)")
    return train, val


def _load_start_model(cfg: FinetuneConfig, info):
    from robcli.models import load_model
    from robcli.models.registry import is_model

    if cfg.init is not None:
        lm = load_model(cfg.init, arch=cfg.arch, dataset_info=info, seed=cfg.seed)
        if lm.kind not in ("run", "checkpoint"):
            raise ModelError(
                f"--init {cfg.init}: a {lm.kind} model cannot be fine-tuned here; give a robcli run directory or a "
                "checkpoint of a registered architecture"
            )
        return lm
    arch = cfg.model or ("small_cnn" if info.is_image else "mlp")
    if not is_model(arch):
        raise UsageError(
            f"--model {arch!r} is not a registered architecture; to start from a run directory or checkpoint use --init"
        )
    return load_model(arch, dataset_info=info, seed=cfg.seed)


@torch.no_grad()
def _predict(model, data, device, batch: int, channels_last: bool) -> torch.Tensor:
    preds = []
    for s in range(0, len(data), batch):
        xb, _ = data.get(slice(s, s + batch))
        xb = _to_device(xb, device, channels_last)
        preds.append(model(xb).argmax(1).cpu())
    return torch.cat(preds)


def _to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def evaluate_val(model, data, cfg: FinetuneConfig, device, gen: torch.Generator, channels_last: bool = False,
                 *, grid: bool | None = None, noisy: bool | None = None) -> dict:
    """Validation metrics on ``data`` (model in eval mode; see the module docstring).

    Args:
        grid: add the grid check to PGD (default: when the input dimension is <= 3).
        noisy: compute ``val_noisy_acc`` (default: for the noise/cra losses).

    Returns:
        ``val_nat_acc``, ``val_robust_acc``, ``val_robust_inaccuracy`` (NaN when eps is 0),
        ``val_pred_classes`` (distinct predicted classes), ``val_min_recall`` (lowest per-class recall over
        the classes present in ``data``), ``val_zero_recall`` (the classes of ``data`` it never predicts
        correctly, comma-separated indices, ``""`` for none), ``val_majority_share`` (largest class share), and
        ``val_noisy_acc`` when ``noisy``.
    """
    from robcli.attacks.grid import MAX_DIM, grid_search
    from robcli.attacks.pgd import margin, pgd
    from robcli.errors import NonFiniteOutput
    from robcli.models.finite import FiniteWatch, Watched

    model.eval()
    watch = FiniteWatch()
    model = Watched(model, watch).eval()  # every validation forward pass (clean, PGD, grid, noisy)
    n = len(data)
    dim = math.prod(data.info.input_shape)
    if grid is None:
        grid = dim <= MAX_DIM
    if grid and dim not in VAL_GRID_POINTS:
        raise ValueError(f"the validation grid covers inputs of dimension <= {MAX_DIM}, not {dim}")
    if noisy is None:
        noisy = cfg.loss in NOISY_LOSSES
    nat = rob_acc = rob_inacc = noisy_hits = 0
    preds, labels = [], []
    for s in range(0, n, cfg.eval_batch):
        xb, yb = data.get(slice(s, s + cfg.eval_batch))
        xb, yb = _to_device(xb, device, channels_last), yb.to(device)
        with torch.no_grad():
            pred = model(xb).argmax(1)
        preds.append(pred.cpu())
        labels.append(yb.cpu())
        nat += int((pred == yb).sum())
        if cfg.eps > 0:
            robust = torch.ones_like(pred, dtype=torch.bool)
            for _ in range(cfg.eval_restarts):
                xa = pgd(model, xb, lambda z, _xa, p=pred: -margin(z, p), eps=cfg.eps, norm=cfg.norm,
                         steps=cfg.eval_steps, rand_init=True, generator=gen)
                with torch.no_grad():
                    robust &= model(xa).argmax(1) == pred
            if grid and bool(robust.any()):
                left = torch.nonzero(robust).flatten()
                with torch.no_grad():
                    g = grid_search(model, xb[left], pred[left], eps=cfg.eps, norm=cfg.norm,
                                    points=VAL_GRID_POINTS[dim])
                    robust[left] &= model(g).argmax(1) == pred[left]
            rob_acc += int((robust & (pred == yb)).sum())
            rob_inacc += int((robust & (pred != yb)).sum())
        if noisy:
            from robcli.losses.noise import gaussian_noise

            with torch.no_grad():
                for _ in range(VAL_NOISE_DRAWS):
                    z = model(xb + gaussian_noise(tuple(xb.shape), cfg.sigma, xb, gen))
                    noisy_hits += int((z.argmax(1) == yb).sum())
    if watch.tripped():
        raise NonFiniteOutput("returned non-finite logits (NaN or inf) in validation (clean inputs or the validation "
                              "attack's points): its metrics would be meaningless; the training diverged, lower --lr",
                              who="the model being trained")
    pred_all, y_all = torch.cat(preds), torch.cat(labels)
    classes = torch.unique(y_all).tolist()
    recalls = [float((pred_all[y_all == c] == c).float().mean()) for c in classes]
    out = {"val_nat_acc": nat / n, "val_robust_acc": float("nan"), "val_robust_inaccuracy": float("nan"),
           "val_pred_classes": int(torch.unique(pred_all).numel()), "val_min_recall": min(recalls),
           "val_zero_recall": ",".join(str(c) for c, r in zip(classes, recalls) if r == 0.0),
           "val_majority_share": float(torch.bincount(y_all).max()) / n}
    if cfg.eps > 0:
        out["val_robust_acc"] = rob_acc / n
        out["val_robust_inaccuracy"] = rob_inacc / n
    if noisy:
        out["val_noisy_acc"] = noisy_hits / (n * VAL_NOISE_DRAWS)
    return out


def collapse_check(val_nat_acc: float, majority_share: float, pred_classes: int, num_classes: int) -> str:
    """Why the model counts as collapsed, or ``""`` when it does not (rule: module docstring).

    Args:
        val_nat_acc: validation natural accuracy. majority_share: the largest class's share of val.
        pred_classes: how many distinct classes the model predicts on val. num_classes: K.
    """
    if num_classes >= 2 and pred_classes <= 1:
        return "it predicts a single class for every validation point"
    limit = majority_share + min(COLLAPSE_MARGIN, (1.0 - majority_share) / 2)
    if val_nat_acc <= limit:
        return (f"validation natural accuracy {val_nat_acc:.3f} is no better than always predicting the largest "
                f"class ({majority_share:.3f} of val; limit {limit:.3f})")
    return ""


def _score(row: dict, criterion: str) -> float:
    if criterion == "val_robust_acc":
        v = row["val_robust_acc"]
    elif criterion == "val_robust_acc - val_robust_inaccuracy":
        v = row["val_robust_acc"] - row["val_robust_inaccuracy"]
    elif criterion == "val_noisy_acc":
        v = row.get("val_noisy_acc", float("nan"))
    else:
        v = row["val_nat_acc"]
    return float(v) if v == v else float(row["val_nat_acc"])


def finetune(
    cfg: FinetuneConfig,
    cb: ProgressFn | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    command: list[str] | None = None,
    tensorboard: str | Path | None = None,
    world=None,
) -> FinetuneResult:
    """Train or fine-tune a model per ``cfg`` and write a run directory to ``cfg.out``.

    Args:
        cfg: the validated configuration.
        cb: progress callback ``cb(done, total, desc)`` (descs ``"epochs"`` and ``"batches"``; rank 0 only).
        resume: continue ``cfg.out`` from its ``resume_state.pt`` (a fresh run if ``cfg.out`` does not exist).
        force: replace an existing run directory.
        command: the command line, recorded in the table metadata.
        tensorboard: a folder to write each epoch's train_log row to as TensorBoard scalars
            (:mod:`robcli.train.tensorboard`; not part of the configuration: it changes no result).
        world: where this process stands (:func:`robcli.distributed.detect`; default a single process). Under
            torchrun/srun the ranks train one model with DistributedDataParallel (:mod:`robcli.train.parallel`:
            ``cfg.batch`` is the global batch, ``cfg.world_size`` must be the world size); rank 0 alone writes
            the run directory and TensorBoard, rank 0 decides whether to resume and its verdict (or error)
            reaches every rank. Every rank returns the same result.

    Raises:
        UsageError, DataError, ModelError: bad configuration; nothing is written in that case.
    """
    from robcli.distributed import Group, World
    from robcli.train.parallel import world_size
    from robcli.utils.device import resolve_rank_device

    world = world if world is not None else World()
    if cfg.world_size != world_size(world):
        raise UsageError(f"the configuration is for a world size of {cfg.world_size}; this is {world.label}")
    device = resolve_rank_device(cfg.device, world)
    if cfg.sync_bn and device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA (SyncBatchNorm over nccl); this run trains on {device} (gloo), "
                         "where each rank's BatchNorm uses its own slice of the batch")
    if device.type == "cuda" and world.grouped:
        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    with Group(world, backend="nccl" if device.type == "cuda" and world.grouped else "gloo") as group:
        return _finetune(cfg, cb if world.is_main else None, resume=resume, force=force, command=command,
                         tensorboard=tensorboard, world=world, group=group, device=device)


def _check_out(cfg: FinetuneConfig, resume: bool, force: bool, tensorboard) -> dict | None:
    """The checks on ``cfg.out`` before anything is written; the resume state to continue from, or None."""
    out = Path(cfg.out)
    if tensorboard is not None:  # before anything is written
        from robcli.train import tensorboard as tb

        tb.check_available(tensorboard)
    state = None
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory")
        if resume and (out / RESUME).exists():
            state = _read_state(out)
            if json.loads(state["config"]) != json.loads(json.dumps(cfg.identity(), default=str)):
                raise UsageError(f"--resume: {out} was made with a different configuration; use --force to start over")
        elif resume and any(out.iterdir()):
            raise UsageError(f"--resume: {out} holds no {RESUME} to continue from")
        elif not resume and not force:
            raise UsageError(f"{out} exists; pass --force to overwrite or --resume to continue")
        if force and not resume and not _is_run_dir(out):
            raise UsageError(f"--force: {out} is not a robcli run directory; refusing to delete it")
    return state


def _read_state(out: Path) -> dict:
    try:
        return torch.load(out / RESUME, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise UsageError(f"{out / RESUME} cannot be read ({type(e).__name__}); rerun with --force") from None


def _finetune(cfg: FinetuneConfig, cb: ProgressFn | None, *, resume: bool, force: bool, command, tensorboard,
              world, group, device) -> FinetuneResult:
    import pandas as pd

    from robcli.distributed import agree, together
    from robcli.losses import get_loss
    from robcli.models import LAST, make_card, save_run, save_weights
    from robcli.tables import provenance, write_table
    from robcli.train import parallel
    from robcli.utils.seeding import make_generator, seed_everything

    cb = cb or _noop
    main = world.is_main
    out = Path(cfg.out)
    # rank 0 checks the run directory (and reads the resume state); its verdict or error reaches every rank
    box: dict = {}

    def check() -> bool:
        box["state"] = _check_out(cfg, resume, force, tensorboard)
        return box["state"] is not None

    resuming = agree(group, check)
    if tensorboard is not None:
        from robcli.train import tensorboard as tb

    def prepare():
        st = box.get("state") if main else (_read_state(out) if resuming else None)  # the same checkpoint
        loss_fn = get_loss(cfg.loss)
        train, val = _load_data(cfg)
        lm = _load_start_model(cfg, train.info)
        model = lm.model.to(device)
        if cfg.init:  # before anything is written: a model to fine-tune must have finite logits on the training data
            from robcli.models.finite import check_clean_logits

            check_clean_logits(model.eval(), train, train.idx, batch=cfg.eval_batch, device=device,
                               what="clean training inputs")
        nb = parallel.batches_per_epoch(len(train), cfg.batch, world)
        return st, loss_fn, train, val, lm, model, nb

    # every rank prepares; an error on any rank ends every rank with one line, before anything is written
    state, loss_fn, train, val, lm, model, nb = together(group, prepare)
    lcfg = cfg.loss_config()
    info = train.info
    is_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    channels_last = cfg.channels_last if cfg.channels_last is not None else (device.type == "cpu" and is_conv)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    seed_everything(cfg.seed)
    g_data = make_generator(cfg.seed)  # shuffling + augmentation (CPU); the same on every rank
    g_loss = make_generator(cfg.seed + 1, device)  # the loss's inner attacks / noise (whole-batch draws, sliced)
    criterion = selection_criterion(cfg.loss)
    rows: list[dict] = []
    best = {"epoch": 0, "score": -math.inf}
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
    # DDP under torchrun/srun (the module itself otherwise); `model` stays the bare module for eval and saving
    trained = parallel.replicate(model, world, device, sync_bn=cfg.sync_bn)
    model = parallel.unwrap(trained)
    opt = torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        g_data.set_state(state["gen_data"])
        g_loss.set_state(state["gen_loss"])
        torch.set_rng_state(state["rng_cpu"])
        rows = json.loads(state["rows"])
        best = json.loads(state["best"])
        start = int(state["epoch"])

    new_run = state is None
    if main:
        if new_run and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)

    card_base = dict(lm.card)
    norm = card_base.get("normalization") or {}
    prov = provenance(seed=cfg.seed, device=device, models=list(lm.files), data=train.fingerprint(), command=command)
    chance = 1.0 / info.num_classes
    majority = float(torch.bincount(val.y.to(torch.int64)).max()) / len(val)
    val_attack = "none (eps 0)" if cfg.eps <= 0 else (
        f"pgd {cfg.eval_steps} steps x {cfg.eval_restarts} restarts"
        + (f" + grid {VAL_GRID_POINTS[math.prod(info.input_shape)]} per axis"
           if math.prod(info.input_shape) in VAL_GRID_POINTS else ""))

    def card(best_epoch: int, collapsed: bool, reason: str = "") -> dict:
        return make_card(
            card_base["arch"], info.num_classes, info.input_shape, dataset=info.name, mean=norm.get("mean"),
            std=norm.get("std"), class_names=info.class_names, arch_kwargs=card_base.get("arch_kwargs"),
            training={
                "command": "finetune", "config": cfg.to_dict(), "loss": cfg.loss, "init": cfg.init,
                "init_card": lm.card.get("training") if cfg.init else None, "epochs_done": len(rows),
                "best_epoch": best_epoch, "criterion": criterion, "collapsed": collapsed,
                "collapse_reason": reason, "chance": chance, "val_majority_share": majority,
                "val_attack": val_attack, "device": str(device), "world_size": cfg.world_size,
            },
        )

    n = len(train)
    writer = tb.open_writer(tensorboard, first_epoch=start + 1) if tensorboard is not None and main else None
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            lr = cfg.lr_at(epoch)
            for pg in opt.param_groups:
                pg["lr"] = lr
            trained.train()
            perm = torch.randperm(n, generator=g_data)
            sums: dict[str, float] = {}
            seen = 0
            for bi in range(nb):
                idx = perm[bi * cfg.batch:(bi + 1) * cfg.batch]
                total = int(idx.numel())
                lo, hi = parallel.rank_rows(total, world)
                if cfg.augment != "none":  # the whole global batch, so the generator advances as in one process
                    from robcli.train.augment import augment_batch

                    xb, yb = train.get(idx)
                    xb = augment_batch(xb, cfg.augment, g_data, info.name)
                    xb, yb = xb[lo:hi], yb[lo:hi]
                else:
                    xb, yb = train.get(idx[lo:hi])
                xb, yb = _to_device(xb, device, channels_last), yb.to(device)
                loss, terms, k = parallel.slice_loss(trained, loss_fn, xb, yb, lcfg, g_loss, world, total=total)
                names = list(terms)  # the same names, in the same order, on every rank
                # the global sums over the batch: the slice's mean loss * k is loss * total / world size
                glob = parallel.reduce_sums([float(loss.detach()) * total / parallel.world_size(world),
                                             *(float(terms[t]) * k for t in names), float(k)], world, device)
                g_loss_value, g_k = glob[0], glob[-1]
                if not math.isfinite(g_loss_value):
                    raise RobcliError(f"the {cfg.loss} loss became {g_loss_value / g_k} in epoch {epoch + 1}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                parallel.average_buffers(trained, world)
                seen += int(g_k)
                sums["loss"] = sums.get("loss", 0.0) + g_loss_value
                for name, v in zip(names, glob[1:-1]):
                    sums[name] = sums.get(name, 0.0) + v
                cb(bi + 1, nb, "batches")
            train_pred = _predict(model.eval(), train, device, cfg.eval_batch, channels_last)
            g_eval = make_generator((cfg.seed * 1_000_003 + epoch) % (2**62), device)
            metrics = evaluate_val(model, val, cfg, device, g_eval, channels_last)
            metrics.pop("val_majority_share", None)
            row = {"epoch": epoch + 1, "lr": lr, "loss": sums.pop("loss") / seen,
                   "train_nat_acc": float((train_pred == train.y).float().mean()), **metrics,
                   "seconds": time.perf_counter() - t0}
            row.update({name: v / seen for name, v in sums.items() if name not in row})
            reason = collapse_check(row["val_nat_acc"], majority, row["val_pred_classes"], info.num_classes)
            row["collapsed"] = bool(reason)
            score = _score(row, criterion)
            rows.append(row)
            if score >= best["score"]:
                best = {"epoch": epoch + 1, "score": score}
                if main:
                    save_run(out, model, card(best["epoch"], row["collapsed"], reason))
            if main:
                save_weights(model, out / LAST)
                write_table(pd.DataFrame(rows), out / LOG, "train_log", config=cfg.to_dict(), prov=prov)
                _atomic_torch_save({
                    "config": json.dumps(cfg.identity(), default=str), "epoch": epoch + 1,
                    "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(), "gen_data": g_data.get_state(),
                    "gen_loss": g_loss.get_state().cpu(), "rng_cpu": torch.get_rng_state(), "rows": json.dumps(rows),
                    "best": json.dumps(best),
                }, out / RESUME)
            if writer is not None:  # after the resume state: TensorBoard never shows an epoch --resume redoes
                tb.write_epoch(writer, row)
            group.barrier()  # the epoch's files are written before any rank goes on
            cb(epoch + 1, cfg.epochs, "epochs")
    except BaseException:
        if main and new_run and not rows and out.exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing resumable: leave nothing behind
        raise
    finally:
        if writer is not None:
            writer.close()

    df = pd.DataFrame(rows)
    best_row = df[df["epoch"] == best["epoch"]].iloc[0]
    reasons = []
    for which, r in (("last", rows[-1]), ("best", best_row)):
        k = r.get("val_pred_classes")  # absent in rows of a run started by an older version
        k = info.num_classes if k is None or k != k else int(k)
        why = collapse_check(float(r["val_nat_acc"]), majority, k, info.num_classes)
        if why and why not in [w for _, w in reasons]:
            reasons.append((which, why))
    collapsed = bool(reasons)
    reason = "; ".join(f"{which} epoch: {why}" for which, why in reasons)
    final_card = card(int(best["epoch"]), collapsed, reason)
    if main:
        from robcli.models import CARD
        from robcli.utils.fsio import atomic_write_bytes

        atomic_write_bytes(out / CARD, json.dumps(final_card, indent=2, sort_keys=True, default=str).encode())
    group.barrier()
    return FinetuneResult(out, df, int(best["epoch"]), criterion, collapsed, final_card, resumed_from=start)
