"""The removed `robcli mix` group: every `robcli mix ...` is refused in one line naming the six verbs' spelling.

:func:`attack_cmd` stays until `robcli attack --attack mix-a..d` runs the mixture settings through the attack
engine (it is what `robcli attack --setting` calls today; it is no longer a command of its own).
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from robcli.cli.common import (
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    NExOpt,
    QuietOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    handle_errors,
)

NormOpt = Annotated[str, typer.Option("--norm", help="Linf or L2.")]

# `robcli mix SUB` -> the spelling that does it now
NEW_SPELLING = {
    "build": "robcli compose --mix A --core MODEL --robust MODEL --export RUN",
    "sweep": "robcli compose --mix-sweep --core MODEL --robust MODEL --mix-grid A ... -d DATASET --eps EPS --out T.parquet",
    "train": "robcli finetune --loss mixnet --core MODEL --robust MODEL -d DATASET --eps EPS --out RUN",
    "attack": "robcli attack --attack mix-a|mix-b|mix-c|mix-d --model MIXRUN ...",
    "certify": "robcli certify --method mix-lipschitz|mix-smoothed-h|mix-lipschitz-rs|mix-local-estimate --model MIXRUN ...",
}


@handle_errors
def removed(ctx: typer.Context) -> None:
    """Removed: use compose --mix / --mix-sweep, finetune --loss mixnet, attack --attack mix-*, certify --method mix-*."""
    from robcli.errors import UsageError

    sub = next((a for a in ctx.args if not a.startswith("-")), None)
    if sub in NEW_SPELLING:
        raise UsageError(f"robcli mix {sub} is gone: use {NEW_SPELLING[sub]}")
    raise UsageError("robcli mix is gone: mixtures are built with robcli compose --mix (sweep: --mix-sweep), trained "
                     "with robcli finetune --loss mixnet, attacked with robcli attack --attack mix-a..d and certified "
                     "with robcli certify --method mix-...")


def _data(dataset, split, data_dir, n_ex, skip, model=None):
    from robcli.cli.common import image_size_for
    from robcli.data.registry import load_split

    return load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(None, model)).select(n_ex=n_ex, skip=skip)


@handle_errors
def attack_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Mixture run dir (mix build / mix train).")],
    dataset: DatasetOpt,
    eps: Annotated[str, typer.Option("--eps", help="Attack radius.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Attack table (Parquet) with alpha_clean/alpha_adv columns.")],
    setting: Annotated[str, typer.Option("--setting", help="A gray-box PGD, B white-box PGD, C AutoAttack, D adaptive AutoAttack.")] = "B",
    steps: Annotated[int, typer.Option("--steps", help="PGD steps (A, B).")] = 20,
    n_iter: Annotated[int, typer.Option("--n-iter", help="APGD iterations (D).")] = 100,
    alpha_weight: Annotated[float, typer.Option("--alpha-weight", help="Weight of the log(1-alpha) term (D).")] = 1.0,
    n_targets: Annotated[int, typer.Option("--n-targets", help="Target classes of the targeted APGD and FAB parts (D).")] = 9,
    n_queries: Annotated[int, typer.Option("--n-queries", help="Square queries (D; AutoAttack's standard 5000).")] = 5000,
    alpha_min: Annotated[Optional[float], typer.Option("--alpha-min", help="Override the stored alpha range.")] = None,
    alpha_max: Annotated[Optional[float], typer.Option("--alpha-max")] = None,
    norm: NormOpt = "Linf",
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    batch: Annotated[int, typer.Option("--batch", "--batch-size")] = 256,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Adaptive attacks on a mixture (004 Sec. 4.2); writes alpha(x) at clean and attacked inputs per example."""
    from robcli.cli.common import argv, check_out, naming_nonfinite
    from robcli.errors import UsageError
    from robcli.mixing.attacks import SETTINGS
    from robcli.mixing.evaluate import attack_frame
    from robcli.mixing.io import load_mixnet
    from robcli.mixing.mixed import check_alpha_range
    from robcli.tables.io import provenance, write_table
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_norm
    from robcli.utils.seeding import make_generator

    nrm = parse_norm(norm)
    e = parse_eps(eps, nrm)
    if setting.upper() not in SETTINGS:
        raise UsageError(f"--setting {setting!r}: choose A, B, C or D")
    if (alpha_min is None) != (alpha_max is None):
        raise UsageError("give both --alpha-min and --alpha-max (or neither)")
    if steps < 1 or n_iter < 1 or n_targets < 1 or n_queries < 1 or batch < 1:
        raise UsageError("--steps, --n-iter, --n-targets, --n-queries and --batch must be >= 1")
    if not (math.isfinite(alpha_weight) and alpha_weight >= 0):
        raise UsageError(f"--alpha-weight {alpha_weight:g} must be a finite number >= 0")
    rng = check_alpha_range(alpha_min, alpha_max) if alpha_min is not None else None
    check_out(out, force)
    dev = resolve_device(device)
    data = _data(dataset, split, data_dir, n_ex, skip, model)
    lm = load_mixnet(model, dataset_info=data.info, device=dev, alpha_range=rng)
    x, y = data.tensors()
    with naming_nonfinite(model):
        df = attack_frame(lm.model, x.to(dev), y.to(dev), data.idx.numpy(), setting=setting, eps=e, norm=nrm,
                          steps=steps, n_iter=n_iter, n_targets=n_targets, alpha_weight=alpha_weight,
                          n_queries=n_queries, batch=batch, generator=make_generator(seed, dev), device=dev)
    config = {"model": model, "setting": setting.upper(), "eps": e, "norm": nrm, "steps": steps, "n_iter": n_iter,
              "n_targets": n_targets, "n_queries": n_queries,
              "alpha_weight": alpha_weight, "alpha_range": rng, "dataset": dataset, "split": split, "n_ex": n_ex,
              "skip": skip}
    prov = provenance(seed=seed, device=dev, models=lm.files, data=data.fingerprint(), command=argv())
    write_table(df, out, "attack", config=config, prov=prov)
    if not quiet:
        nat = df["correct"].mean()
        rob = (df["correct"] & df["robust"]).mean()
        typer.echo(f"setting {setting.upper()} eps {e:g}: nat acc {nat:.4f}, robust acc {rob:.4f}, "
                   f"alpha clean {df['alpha_clean'].mean():.3f} attacked {df['alpha_adv'].mean():.3f}")
