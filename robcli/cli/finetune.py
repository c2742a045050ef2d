"""`robcli finetune`: train or fine-tune a model (std, trades, era, dga, noise, cra; mixnet: the adaptive mixing
network of two frozen models). Flags -> one library call (robcli.train.loop.finetune or
robcli.mixing.run.train_adaptive_mixture) -> print."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import (
    ArchOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    ForceOpt,
    ImageSizeOpt,
    NExOpt,
    ProgressCallback,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    argv,
    console,
    given,
    handle_errors,
    naming_nonfinite,
    progress,
    refuse_given,
)
from robcli.cli.compose import MixSpaceOpt, ScaleGOpt, ScaleHOpt  # the same flags as `compose --mix`

HELP_BETA = "ERA/DGA weight on L_TRADES (eq. 5, 20): smaller beta = stronger ERA term."


# the flags a data set may recommend values for (robcli.data.registry.TrainDefaults): when the user does not
# give one (decided by click's parameter source, not by comparing with the default), FinetuneConfig takes the
# data set's recommended value for the architecture, else robcli's generic one; the card records which
TRAIN_FLAGS = ("epochs", "lr", "batch", "momentum", "weight_decay", "lr_milestones")
REC = "Default: the data set's recommended value (robcli list datasets; gaussians and digits carry them), else"
MIXNET_DEFAULTS = "--loss mixnet: AdamW, default --epochs 10, --lr 1e-3, --batch 128."
# flags that only --loss mixnet takes, and the generic ones it does not
MIXNET_ONLY = ("core", "robust", "train_attack", "c_ce", "c_bce", "c_prod", "ema", "mix_min", "mix_max", "layers_g",
               "layers_h", "width", "blocks", "eps_low", "mix_attack_weight", "sigmoid_scale", "mix_space", "scale_g",
               "scale_h", "n_ex")
NOT_MIXNET = ("model", "init", "arch", "train_subset", "resume", "augment", "download", "image_size", "tensorboard",
              "sync_bn",
              "beta",
              "trades_beta", "era_adv", "era_steps", "detach_weight", "lr_milestones", "weight_decay", "momentum",
              "sigma", "num_noise", "temperature")
OLD_FLAGS = {"old_alpha_min": "--mix-min", "old_alpha_max": "--mix-max", "old_alpha_weight": "--mix-attack-weight"}


@handle_errors
def finetune(
    ctx: typer.Context,
    loss: Annotated[str, typer.Option("--loss", help="std, trades, era, dga, noise, cra, or mixnet (the adaptive mixing network alpha(x) of the frozen --core/--robust models, the adaptive-smoothing paper).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory to create.")],
    dataset: DatasetOpt = "gaussians",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    image_size: ImageSizeOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Architecture to train from scratch (default mlp for vectors, small_cnn for images).")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Model to fine-tune: run directory or checkpoint.")] = None,
    arch: ArchOpt = None,
    eps: Annotated[str, typer.Option("--eps", help="Training radius, e.g. 8/255 (required for trades/era/dga).")] = "0",
    norm: Annotated[str, typer.Option("--norm", help="Linf or L2.")] = "Linf",
    beta: Annotated[float, typer.Option("--beta", help=HELP_BETA)] = 1.0,
    trades_beta: Annotated[float, typer.Option("--trades-beta", help="TRADES KL weight (batch-mean KL).")] = 6.0,
    era_adv: Annotated[str, typer.Option("--era-adv", help="ERA/DGA adversarial point: descent (inner targeted descent) or single (reference: one CE-ascent point).")] = "descent",
    era_steps: Annotated[Optional[int], typer.Option("--era-steps", help="ERA/DGA inner targeted descent steps (default 2; why: see --attack-steps and robcli/losses/era.py).")] = None,
    detach_weight: Annotated[bool, typer.Option("--detach-weight/--no-detach-weight", help="Stop gradients through ERA's weight 1 - p_y(x).")] = True,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help=f"Training epochs (passes over the training data). {REC} 50 with --init, 20 from scratch (App. A.2). {MIXNET_DEFAULTS}")] = None,
    lr: Annotated[Optional[str], typer.Option("--lr", help=f"{REC} 1e-3 with --init, 0.1 from scratch (App. A.2).")] = None,
    lr_milestones: Annotated[str, typer.Option("--lr-milestones", help=f"Fractions of epochs where lr x0.1, e.g. 0.75,0.9; 'none' = constant. {REC} 0.75.", show_default=False)] = "0.75",
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help=f"Batch size. {REC} 200 (gaussians: 10, App. A.2).", show_default=False)] = 200,
    augment: Annotated[str, typer.Option("--augment", help="none, standard (crop+flip) or autoaugment; images only.")] = "none",
    attack_steps: Annotated[int, typer.Option("--attack-steps", help="--loss mixnet: the most steps of its training attack (drawn in [1, N] per batch). Else: training-time PGD steps of the TRADES KL point (trades, era, dga) and of --era-adv single's CE ascent. ERA/DGA's inner targeted descent has its own count, --era-steps (default 2: measured on digits at eps 0.1, 2 steps flip 29% of predictions vs 33% with 10, and keep an ERA step near 1.3x a TRADES step instead of ~2x).")] = 10,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help=f"SGD weight decay. {REC} 2e-4.", show_default=False)] = 2e-4,
    momentum: Annotated[float, typer.Option("--momentum", help=f"SGD momentum. {REC} 0.9.", show_default=False)] = 0.9,
    sigma: Annotated[float, typer.Option("--sigma", help="Gaussian noise std (noise/cra).")] = 0.12,
    num_noise: Annotated[int, typer.Option("--num-noise", help="Noise samples k (cra).")] = 16,
    temperature: Annotated[float, typer.Option("--temperature", help="Inverse softmax temperature (cra).")] = 4.0,
    train_subset: Annotated[Optional[str], typer.Option("--train-subset", help="File of train indices, one per line.")] = None,
    core: Annotated[Optional[str], typer.Option("--core", "-c", help="mixnet: accurate core model g (run dir or checkpoint), frozen.")] = None,
    robust: Annotated[Optional[str], typer.Option("--robust", "-r", help="mixnet: robust model h (run dir or checkpoint), frozen.")] = None,
    train_attack: Annotated[str, typer.Option("--train-attack", help="mixnet: training attack A (gray-box PGD), B (white-box PGD) or C (APGD).")] = "B",
    c_ce: Annotated[float, typer.Option("--c-ce", help="mixnet: composite loss weight of CE (the adaptive-smoothing paper's eq. 8).")] = 0.0,
    c_bce: Annotated[float, typer.Option("--c-bce", help="mixnet: composite loss weight of BCE.")] = 1.5,
    c_prod: Annotated[float, typer.Option("--c-prod", help="mixnet: composite loss weight of CE*BCE.")] = 0.2,
    ema: Annotated[Optional[float], typer.Option("--ema", help="mixnet: EMA decay of the mixing network's weights (paper: 0.8).")] = None,
    mix_min: Annotated[float, typer.Option("--mix-min", help="mixnet: lower end of the mixture weight alpha(x) at evaluation.")] = 0.0,
    mix_max: Annotated[float, typer.Option("--mix-max", help="mixnet: upper end of the mixture weight alpha(x) at evaluation.")] = 1.0,
    layers_g: Annotated[Optional[str], typer.Option("--layers-g", help="mixnet: shallow,middle layer names of g (default per architecture).")] = None,
    layers_h: Annotated[Optional[str], typer.Option("--layers-h", help="mixnet: shallow,middle layer names of h.")] = None,
    width: Annotated[int, typer.Option("--width", help="mixnet: mixing network width.")] = 16,
    blocks: Annotated[int, typer.Option("--blocks", help="mixnet: ResNet blocks in the mixing network's trunk.")] = 1,
    eps_low: Annotated[float, typer.Option("--eps-low", help="mixnet: training radii are drawn from U(eps_low*eps, eps), eps_low in [0, 1].")] = 0.25,
    mix_attack_weight: Annotated[float, typer.Option("--mix-attack-weight", help="mixnet: max weight of the training attack's log(1 - alpha(x)) term (drawn from U(0, w) per batch; --train-attack B, C).")] = 1.0,
    sigmoid_scale: Annotated[float, typer.Option("--sigmoid-scale", help="mixnet: scale of the sigmoid input (App. C.2).")] = 2.0,
    n_ex: NExOpt = None,
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under torchrun/srun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm) instead of each rank's slice.")] = False,
    tensorboard: Annotated[Optional[str], typer.Option("--tensorboard", help="Also write each epoch's train_log row as TensorBoard scalars to this folder (watch with `tensorboard --logdir DIR`; needs pip install 'robcli[tensorboard]').")] = None,
    old_alpha_min: Annotated[Optional[float], typer.Option("--alpha-min", hidden=True, help="Gone: --mix-min.")] = None,
    old_alpha_max: Annotated[Optional[float], typer.Option("--alpha-max", hidden=True, help="Gone: --mix-max.")] = None,
    old_alpha_weight: Annotated[Optional[float], typer.Option("--alpha-weight", hidden=True, help="Gone: --mix-attack-weight.")] = None,
) -> None:
    """Train with std/TRADES/ERA/DGA (and noise/CRA); writes a run dir with train_log.parquet.

    model.safetensors is the best epoch on the val split (carved from train): std by natural accuracy,
    noise/cra by accuracy under Gaussian noise at --sigma (val_noisy_acc), trades by robust accuracy,
    era/dga by robust accuracy minus robust inaccuracy (PGD, plus a grid over the ball for inputs of
    dimension <= 3); last.safetensors is the last epoch.

    --loss mixnet trains the adaptive mixing network alpha_theta(x) of the adaptive-smoothing paper (Sec. 4.3) on the frozen
    --core/--robust models (AdamW; defaults --epochs 10, --lr 1e-3, --batch 128) on the train split (--n-ex:
    its first N examples) and writes an adaptive mixture run dir. Steps: --epochs counts passes over the data,
    --attack-steps the training attack's steps (mixnet: the most, drawn per batch), --era-steps ERA's inner descent.
    """
    from robcli.errors import UsageError

    for old, new in OLD_FLAGS.items():
        if given(ctx, old):
            raise UsageError(f"finetune {given(ctx, old)[0]} is gone: use {new} (every flag meaning a mixture weight "
                             "starts with --mix)")
    from robcli.distributed import detect

    world = detect()  # torchrun/srun: data-parallel training, --batch is the global batch (robcli.train.parallel)
    if loss == "mixnet":
        if world.grouped:
            raise UsageError(f"--loss mixnet trains in one process; run it without {world.launcher}")
        refuse_given(ctx, NOT_MIXNET, "to --loss mixnet (it trains a mixing network on --core/--robust)")
        return _finetune_mixnet(ctx, **{k: v for k, v in locals().items() if k in MIXNET_ONLY + (
            "dataset", "data_dir", "eps", "norm", "out", "attack_steps", "epochs", "batch", "lr", "seed", "device",
            "force", "quiet")})
    refuse_given(ctx, MIXNET_ONLY, "without --loss mixnet")

    from robcli.train.config import finetune_config

    # a recommendable flag the user did not give is None: the data set's recommended value applies
    chosen = {k: v if given(ctx, k) else None for k, v in dict(
        epochs=epochs, lr=lr, lr_milestones=lr_milestones, batch=batch, momentum=momentum,
        weight_decay=weight_decay).items()}
    cfg = finetune_config(
        loss=loss, dataset=dataset, out=out, data_dir=data_dir, image_size=image_size, download=download,
        train_subset=train_subset, init=init, arch=arch, model=model, eps=eps, norm=norm, beta=beta,
        trades_beta=trades_beta, era_adv=era_adv, era_steps=era_steps, detach_weight=detach_weight,
        attack_steps=attack_steps, augment=augment, sigma=sigma, num_noise=num_noise, temperature=temperature,
        seed=seed, device=device, world_size=world.size if world.grouped else 1, sync_bn=sync_bn, **chosen)
    from robcli.train.loop import finetune as run_finetune

    with naming_nonfinite(init), progress(quiet or not world.is_main) as prog:
        result = run_finetune(cfg, ProgressCallback(prog), resume=resume, force=force, command=argv(),
                              tensorboard=tensorboard, world=world)
    if not world.is_main:
        return  # rank 0 prints
    con = console(stderr=False)
    if not quiet:
        from rich.table import Table

        t = Table(title=f"{cfg.loss} on {cfg.dataset}: {result.run_dir}")
        cols = ["epoch", "lr", "loss", "train_nat_acc", "val_nat_acc", "val_min_recall", "val_robust_acc",
                "val_robust_inaccuracy", "seconds"]
        cols = [c for c in cols if c in result.log.columns]  # val_min_recall: absent in rows of older runs
        if "val_noisy_acc" in result.log.columns:
            cols.insert(5, "val_noisy_acc")
        heads = {"train_nat_acc": "train acc", "val_nat_acc": "val acc", "val_noisy_acc": "val noisy acc",
                 "val_min_recall": "val min recall", "val_robust_acc": "val rob. acc",
                 "val_robust_inaccuracy": "val rob. inacc", "seconds": "sec"}
        for c in cols:
            t.add_column(heads.get(c, c.replace("val_", "val ").replace("_", " ")), justify="right")
        for _, r in result.log.iterrows():
            mark = " *" if int(r["epoch"]) == result.best_epoch else ""
            t.add_row(*(f"{int(r[c])}{mark}" if c == "epoch" else f"{r[c]:.4g}" for c in cols))
        con.print(t)
        con.print(f"best epoch {result.best_epoch} (*) by {result.criterion}; model.safetensors = best, last.safetensors = last")
        applied = {k: v for k, v in cfg.defaults_from.items() if v != "robcli generic default"}
        if applied:
            from rich.markup import escape

            vals = ", ".join(f"--{k.replace('_', '-')} {_flag_text(getattr(cfg, k))}" for k in applied)
            con.print(escape(f"defaults taken from {sorted(set(applied.values()))[0]}: {vals}"), highlight=False)
    if not result.collapsed:
        _warn_zero_recall(result, cfg.loss)
    if result.collapsed:
        from rich.markup import escape

        why = result.card.get("training", {}).get("collapse_reason") or "natural accuracy collapsed"
        console(stderr=True).print(
            f"[bold red]WARNING: the model collapsed ({escape(why)}); it is no better than a constant "
            "classifier (recorded as collapsed: true in card.json and train_log.parquet)[/bold red]"
        )


def _finetune_mixnet(ctx, *, core, robust, out, batch, quiet, **options) -> None:
    """`finetune --loss mixnet`: one call to robcli.mixing.run.finetune_mixnet."""
    from robcli.mixing.run import finetune_mixnet

    def show(epoch, row):
        if not quiet:
            typer.echo(f"epoch {epoch}: loss {row['loss']:.4f} ce {row['ce']:.4f} bce {row['bce']:.4f} "
                       f"alpha clean {row['alpha_clean']:.3f} attacked {row['alpha_adv']:.3f}", err=True)

    with naming_nonfinite(None, core=core, robust=robust):
        finetune_mixnet(core, robust, out=out, batch=batch if given(ctx, "batch") else None, callback=show,
                        command=argv(), **options)
    if not quiet:
        typer.echo(f"wrote adaptive mixture {out}", err=True)


def _flag_text(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(f"{x:g}" for x in v) if v else "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _warn_zero_recall(result, loss: str) -> None:
    """A coloured warning when the saved best or last model never predicts some class on val (recall 0)."""
    from rich.markup import escape

    from robcli.train.diagnose import zero_recall_warning

    found = zero_recall_warning(result, loss)
    if found is not None:
        msg, robust = found
        style = "bold yellow" if robust else "bold red"
        console(stderr=True).print(f"[{style}]{escape(msg)}[/{style}]", highlight=False)
