"""`robcli attack`: per-example empirical robustness (PGD, APGD, AutoAttack, APGD-conf, grid) over an eps sweep."""

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
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    handle_errors,
)


def _read_subset(path: str, split_name: Optional[str], dataset: str, split: str) -> list[int]:
    """Example indices from a text file (one per line, '#' comments) or a partition table + split name.

    Refuses a list or table made on another data set or another split's index space.
    """
    from pathlib import Path

    from robcli.data.indices import check_origin, read_index_list
    from robcli.errors import DataError, UsageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"--subset file {p} does not exist")
    if p.suffix == ".parquet":
        from robcli.tables.io import read_table
        from robcli.tables.schema import PARTITION_SPLITS

        if not split_name:
            raise UsageError(f"--subset {p} is a partition table: name the split with --subset-split "
                             f"({', '.join(PARTITION_SPLITS)})")
        if split_name not in PARTITION_SPLITS:
            raise UsageError(f"unknown --subset-split {split_name!r}; choose one of {', '.join(PARTITION_SPLITS)}")
        t = read_table(p, "partition")
        check_origin(t.meta.get("data") or {}, dataset, split, f"--subset {p}")
        df = t.df
        return [int(i) for i in df.loc[df["split"] == split_name, "idx"]]
    if split_name:
        raise UsageError("--subset-split applies to a partition table (.parquet) only")
    ids, origin = read_index_list(p, "--subset")
    check_origin(origin, dataset, split, f"--subset {p}")
    return ids


@handle_errors
def attack(
    model: ModelOpt,
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Output attack table (.parquet); one row per example x eps.")],
    attack_: Annotated[str, typer.Option("--attack", "-a", help="pgd, apgd-ce, apgd-dlr, apgd-t, apgd-conf, fab-t, square, autoattack, grid.")] = "apgd-ce",
    eps: EpsListOpt = None,
    norm: NormOpt = "Linf",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Iterations (square: queries). Default: 100 for APGD/FAB/grid (AutoAttack's value), 40 for pgd, 5000 for square.")] = None,
    restarts: Annotated[Optional[int], typer.Option("--restarts", help="Random restarts (targeted attacks: per target class). Default 1.")] = None,
    version: Annotated[str, typer.Option("--version", help="AutoAttack version: standard, plus, rand or custom (with --aa-attacks).")] = "standard",
    aa_attacks: Annotated[Optional[str], typer.Option("--aa-attacks", help="Attacks of --version custom, comma separated, e.g. apgd-ce,apgd-t.")] = None,
    objective: Annotated[str, typer.Option("--objective", help="pgd's objective: margin or ce.")] = "margin",
    grid_points: Annotated[Optional[int], typer.Option("--grid-points", help="grid: values per axis (default 101 in 2-D).")] = None,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    subset: Annotated[Optional[str], typer.Option("--subset", help="Only these examples: a text file of indices (one per line) or a partition table.")] = None,
    subset_split: Annotated[Optional[str], typer.Option("--subset-split", help="With a partition table as --subset: which split, e.g. robust_inaccurate.")] = None,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="Examples per attack call (part of the seeding).")] = 256,
    setting: Annotated[Optional[str], typer.Option("--setting", help="Mixture models only (compose --mix / finetune --loss mixnet): A gray-box PGD, B white-box PGD, C AutoAttack, D adaptive AutoAttack (paper 004; same code as `robcli mix attack`).")] = None,
    alpha_weight: Annotated[Optional[float], typer.Option("--alpha-weight", help="With --setting D: weight of the log(1-alpha) term (default 1).")] = None,
    n_targets: Annotated[Optional[int], typer.Option("--n-targets", help="With --setting D: target classes of the targeted parts (default 9).")] = None,
    n_queries: Annotated[Optional[int], typer.Option("--n-queries", help="With --setting D: Square queries (default 5000).")] = None,
    alpha_min: Annotated[Optional[float], typer.Option("--alpha-min", help="With --setting: override the mixture's stored alpha range (with --alpha-max).")] = None,
    alpha_max: Annotated[Optional[float], typer.Option("--alpha-max", help="With --setting: upper end of the alpha range override.")] = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    input_shape: InputShapeOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Attack each example at every --eps (ascending); robustness is judged against the model's own prediction.

    An example found non-robust at a smaller eps is not attacked again at larger ones. Every adversarial point
    is re-evaluated and checked to lie in the ball and in [0,1]. The summary (stderr) gives, per eps, natural
    accuracy, robust accuracy (eq. 2) and robust inaccuracy (eq. 3) as fractions of the attacked examples.
    """
    from pathlib import Path

    from robcli.attacks.engine import AttackConfig, run_attack, same_config, summary_text
    from robcli.cli.common import (
        ProgressCallback,
        argv,
        check_out,
        console,
        image_size_for,
        naming_nonfinite,
        progress,
    )
    from robcli.errors import UsageError

    mix_only = {"--alpha-weight": alpha_weight, "--n-targets": n_targets, "--n-queries": n_queries,
                "--alpha-min": alpha_min, "--alpha-max": alpha_max}
    if setting is None and any(v is not None for v in mix_only.values()):
        given = [f for f, v in mix_only.items() if v is not None]
        raise UsageError(f"{', '.join(given)} apply only with --setting (mixture attacks)")
    d_only = [f for f in ("--alpha-weight", "--n-targets", "--n-queries") if mix_only[f] is not None]
    if setting is not None and setting.upper() != "D" and d_only:
        raise UsageError(f"{', '.join(d_only)} apply only to --setting D (the adaptive AutoAttack)")
    if setting is not None:
        generic = {"--attack": attack_ != "apgd-ce", "--restarts": restarts is not None, "--version": version != "standard",
                   "--aa-attacks": aa_attacks is not None, "--objective": objective != "margin",
                   "--grid-points": grid_points is not None, "--subset": subset is not None,
                   "--subset-split": subset_split is not None, "--arch": arch is not None, "--download": download,
                   "--image-size": image_size is not None, "--resume": resume}
        given = [f for f, on in generic.items() if on]
        if given:
            raise UsageError(f"{', '.join(given)} do not apply with --setting (mixture attacks; see robcli mix attack)")
        if eps is not None and len(eps) != 1:
            raise UsageError("--setting attacks at one --eps")
        from robcli.mixing.io import is_mixnet_dir

        if not is_mixnet_dir(model):
            raise UsageError(f"--setting applies to mixture models (compose --mix, finetune --loss mixnet); {model} is not one")
        from robcli.cli.mix import attack_cmd

        s = setting.upper()
        if s == "C" and steps is not None:
            raise UsageError("--steps does not apply to setting C (standard AutoAttack)")
        attack_cmd(model=model, dataset=dataset, eps=(eps or ["8/255"])[0], out=out, setting=setting,
                   steps=steps if steps is not None and s in ("A", "B") else 20,
                   n_iter=steps if steps is not None and s == "D" else 100,
                   alpha_weight=1.0 if alpha_weight is None else alpha_weight,
                   n_targets=9 if n_targets is None else n_targets, n_queries=5000 if n_queries is None else n_queries,
                   alpha_min=alpha_min, alpha_max=alpha_max, norm=norm, split=split, n_ex=n_ex, skip=skip, batch=batch,
                   data_dir=data_dir, device=device, seed=seed, force=force, quiet=quiet)
        return
    cfg = AttackConfig(
        attack=attack_, eps=tuple(eps or ["8/255"]), norm=norm, steps=steps, restarts=restarts, version=version,
        aa_attacks=tuple((aa_attacks or "").split(",")), objective=objective, grid_points=grid_points,
        batch=batch, seed=seed,
        extra={"model": model, "arch": arch, "dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip,
               "subset": subset, "subset_split": subset_split, "image_size": image_size},
    )
    out_p = Path(out)
    if out_p.suffix != ".parquet":
        raise UsageError(f"--out {out}: give a file name ending in .parquet")
    check_out(out_p, force, resume)

    from robcli.data.registry import load_split
    from robcli.models import load_model
    from robcli.tables.io import partial_path, provenance, read_table, write_table
    from robcli.utils.device import resolve_device

    config = cfg.as_dict()
    part = partial_path(out_p)
    if resume and out_p.exists() and not part.exists():
        t = read_table(out_p, "attack")
        if not same_config(t.config, config):
            raise UsageError(f"{out_p} was made with a different configuration; use --force to start over")
        if not quiet:
            console().print(f"{out_p} is already complete\n" + summary_text(t.df), highlight=False, soft_wrap=True)
        return
    done = None
    if resume and part.exists():
        t = read_table(part, "attack")
        if not same_config(t.config, config):
            raise UsageError(f"{part} was made with a different configuration; drop --resume (or use --force) to start over")
        done = t.df

    dev = resolve_device(device)
    ids = _read_subset(subset, subset_split, dataset, split) if subset is not None else None
    data = load_split(dataset, split, data_dir=data_dir, download=download,
                      image_size=image_size_for(image_size, model))
    data = data.select(n_ex=n_ex, skip=skip, subset=ids)
    lm = load_model(model, arch=arch, dataset_info=data.info, seed=seed, num_classes=num_classes,
                    input_shape=input_shape)
    prov = provenance(seed=seed, device=dev, models=lm.files or [], data=data.fingerprint(), command=argv())

    def checkpoint(df) -> None:
        write_table(df, part, "attack", config=config, prov=prov)

    notes: list[str] = []
    with naming_nonfinite(model, part), progress(quiet) as prog:
        df = run_attack(lm.model, data, cfg, device=dev, done=done, checkpoint=checkpoint,
                        progress=ProgressCallback(prog), notes=notes)
    write_table(df, out_p, "attack", config=config, prov=prov)
    if part.exists():
        part.unlink()
    if not quiet:
        msgs = "".join(f"pyautoattack: {m}\n" for m in dict.fromkeys(notes))
        console().print(msgs + summary_text(df) + f"\nwrote {out_p} ({len(df)} rows)", highlight=False,
                        soft_wrap=True)
