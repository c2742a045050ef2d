"""`robcli attack`: per-example empirical robustness over an eps sweep (any registered attack, mixtures included)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import (
    ArchOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    EpsListOpt,
    ForceOpt,
    ImageSizeOpt,
    InputShapeOpt,
    ModelOpt,
    NExOpt,
    NormOpt,
    NumClassesOpt,
    PrecisionOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    handle_errors,
)

Int, Float, Str = Optional[int], Optional[float], Optional[str]
KNOBS = ("steps", "restarts", "version", "aa_attacks", "objective", "grid_points", "mix_min", "mix_max",
         "mix_attack_weight", "n_targets", "n_queries")  # = robcli.attacks.engine.KNOBS (tested)
OLD = {"setting": "--attack mix-a|mix-b|mix-c|mix-d", "alpha_weight": "--mix-attack-weight",
       "alpha_min": "--mix-min", "alpha_max": "--mix-max"}


def _opt(flag: str, help: str, hidden: bool = False):
    return typer.Option(flag, help=help, hidden=hidden)


@handle_errors
def attack(
    ctx: typer.Context, model: ModelOpt, dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Output attack table (.parquet); one row per example x eps.")],
    attack_: Annotated[str, typer.Option("--attack", "-a", help="pgd, apgd-ce, apgd-dlr, apgd-t, apgd-conf, fab-t, square, autoattack, grid; on a mixture run directory also mix-a (gray-box PGD), mix-b (white-box PGD), mix-c (AutoAttack), mix-d (adaptive AutoAttack).")] = "apgd-ce",
    eps: EpsListOpt = None, norm: NormOpt = "Linf",
    steps: Annotated[Int, _opt("--steps", "What it counts depends on --attack: PGD iterations (pgd 40; mix-a, mix-b 20), APGD/FAB iterations (apgd-*, fab-t, grid, autoattack --version custom, mix-d: 100), Square queries (square 5000). Not for mix-c or autoattack standard/plus/rand (their own settings).")] = None,
    restarts: Annotated[Int, _opt("--restarts", "Random restarts (targeted attacks: per target class). Default 1.")] = None,
    version: Annotated[str, _opt("--version", "AutoAttack version: standard, plus, rand or custom (with --aa-attacks).")] = "standard",
    aa_attacks: Annotated[Str, _opt("--aa-attacks", "Attacks of --version custom, comma separated, e.g. apgd-ce,apgd-t.")] = None,
    objective: Annotated[str, _opt("--objective", "pgd's objective: margin or ce.")] = "margin",
    grid_points: Annotated[Int, _opt("--grid-points", "grid: values per axis (default 101 in 2-D).")] = None,
    mix_min: Annotated[Float, _opt("--mix-min", "mix-*: override the mixture's stored alpha range (with --mix-max).")] = None,
    mix_max: Annotated[Float, _opt("--mix-max", "mix-*: upper end of the alpha range override.")] = None,
    mix_attack_weight: Annotated[Float, _opt("--mix-attack-weight", "mix-d: weight w of the w log(1 - alpha(x)) term of its APGD parts (default 1).")] = None,
    n_targets: Annotated[Int, _opt("--n-targets", "mix-d: target classes of its targeted APGD and FAB parts (default 9).")] = None,
    n_queries: Annotated[Int, _opt("--n-queries", "mix-d: Square queries (default 5000).")] = None,
    split: SplitOpt = "test", n_ex: NExOpt = None, skip: SkipOpt = 0,
    subset: Annotated[Str, _opt("--subset", "Only these examples: a text file of indices (one per line) or a partition table.")] = None,
    subset_split: Annotated[Str, _opt("--subset-split", "With a partition table as --subset: which split, e.g. robust_inaccurate.")] = None,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="Examples per attack call = one chunk of the run (part of the seeding).")] = 256,
    shard: Annotated[Str, _opt("--shard", "I/K: attack only the chunks (batches of --batch examples, in example order) with number % K == I and write their parts to OUT.parts/ (no table); then robcli merge OUT.parts --out OUT.")] = None,
    setting: Annotated[Str, _opt("--setting", "", hidden=True)] = None,
    alpha_weight: Annotated[Float, _opt("--alpha-weight", "", hidden=True)] = None,
    alpha_min: Annotated[Float, _opt("--alpha-min", "", hidden=True)] = None,
    alpha_max: Annotated[Float, _opt("--alpha-max", "", hidden=True)] = None,
    arch: ArchOpt = None, num_classes: NumClassesOpt = None, input_shape: InputShapeOpt = None,
    data_dir: DataDirOpt = None, download: DownloadOpt = False, image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", resume: ResumeOpt = False, force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Attack each example at every --eps (ascending); robustness is judged against the model's own prediction.

    An example found non-robust at a smaller eps is not attacked again at larger ones. Every adversarial point
    is re-evaluated and checked to lie in the ball and in [0,1]. Each batch is stored in OUT.parts/ when done,
    so --resume after a kill loses at most one batch. The summary (stderr) gives, per eps, natural accuracy,
    robust accuracy (eq. 2) and robust inaccuracy (eq. 3) as fractions of the attacked examples.
    """
    from robcli.attacks.engine import AttackConfig, get_attack, summary_text
    from robcli.attacks.table import attack_table
    from robcli.cli.common import (
        ProgressCallback,
        argv,
        console,
        given,
        job_world,
        naming_nonfinite,
        parts_left_text,
        progress,
        refuse_given,
    )
    from robcli.errors import UsageError

    old = given(ctx, *OLD)
    if old:
        raise UsageError(f"{old[0]} was renamed: use {OLD[old[0][2:].replace('-', '_')]}")
    entry = get_attack(attack_)
    refuse_given(ctx, [k for k in KNOBS if k not in entry.obj.flags], f"to --attack {entry.name}")
    if entry.obj.load is not None:
        refuse_given(ctx, ["arch", "num_classes", "input_shape"], f"to --attack {entry.name} (a mixture run directory)")
    cfg = AttackConfig(
        attack=attack_, eps=tuple(eps or ["8/255"]), norm=norm, steps=steps, restarts=restarts, version=version,
        aa_attacks=tuple((aa_attacks or "").split(",")), objective=objective, grid_points=grid_points,
        mix_min=mix_min, mix_max=mix_max, mix_attack_weight=mix_attack_weight, n_targets=n_targets,
        n_queries=n_queries, batch=batch, seed=seed, precision=precision,
        extra={"model": model, "arch": arch, "dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip,
               "subset": subset, "subset_split": subset_split, "image_size": image_size},
    )
    world = job_world(shard)
    quiet = quiet or (world.grouped and not world.is_main)  # one progress bar and summary per job
    with naming_nonfinite(model), progress(quiet) as prog:
        res = attack_table(cfg, model=model, dataset=dataset, out=out, split=split, n_ex=n_ex, skip=skip,
                           subset=subset, subset_split=subset_split, arch=arch, num_classes=num_classes,
                           input_shape=input_shape, data_dir=data_dir, download=download,
                           image_size=image_size, device=device, resume=resume,
                           force=force, world=world, progress=ProgressCallback(prog), command=argv())
    if quiet or (res.df is None and world.grouped):
        return
    if res.df is None:
        msg = parts_left_text(world, res.parts, res.out)
    elif res.complete:
        msg = f"{res.out} is already complete\n" + summary_text(res.df)
    else:
        notes = "".join(f"pyautoattack: {m}\n" for m in dict.fromkeys(res.notes or []))
        msg = notes + summary_text(res.df) + f"\nwrote {res.out} ({len(res.df)} rows)"
    console().print(msg, highlight=False, soft_wrap=True)
