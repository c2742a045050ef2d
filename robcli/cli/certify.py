"""`robcli certify`: randomized-smoothing CERTIFY / PREDICT (Cohen et al., 2019) per example and sigma, or the
sequential (anytime-valid) test of target radii with ``--sequential`` (robcli.certify.sequential)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.certify_mix import LipschitzOpt, MethodOpt, MixEpsOpt, MixNormOpt, MixOpt, ScaleHOpt
from robcli.cli.common import (
    ArchOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    ImageSizeOpt,
    InputShapeOpt,
    ModelOpt,
    NExOpt,
    NumClassesOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    handle_errors,
)

SEQ_HELP = ("Sequential certification: each example draws noise samples until every --radius is decided "
            "(certified, or out of reach), at most --N estimation samples (the cap); the probability that any of an "
            "example's certified claims is false is <= --alpha, simultaneously over its radii, whatever the stop. "
            "Without --radius: each example's certified radius (a 1 - alpha lower bound), stopping when more samples "
            "cannot raise it by more than --radius-tol. Not with --mode predict.")
AGAINST_HELP = ("With --sequential: the class tested. prediction (default): N0 selection samples pick the class, then "
                "fresh samples test it (Cohen's semantics; certifies unlabeled inputs). label: the label's probability "
                "is tested directly, no selection samples: the table then measures CERTIFIED ACCURACY on a labeled "
                "set and does not certify unlabeled inputs (compose refuses it as a selector).")


@handle_errors
def certify(
    ctx: typer.Context,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output certify table (.parquet); one row per example x sigma.")] = ...,
    import_: Annotated[Optional[str], typer.Option("--import", help="A Cohen et al. certification log (idx label predict radius correct time) to turn into a certify table instead of certifying: give the --sigma, --N, --N0, --alpha it was made with (--dataset/--split: recorded only).")] = None,
    sigma: Annotated[Optional[list[str]], typer.Option("--sigma", help="Gaussian noise std in [0,1] pixel units; repeatable. Default 0.12.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="certify (CERTIFY: radius + abstain) or predict (PREDICT: smoothed prediction).")] = "certify",
    n0: Annotated[int, typer.Option("--N0", "--n0", help="Selection samples for the top class (CERTIFY).")] = 100,
    n: Annotated[int, typer.Option("--N", "--n", help="Estimation samples (CERTIFY) / votes (PREDICT); with --sequential the cap on estimation samples per example.")] = 100_000,
    alpha: Annotated[float, typer.Option("--alpha", help="Failure probability of each certificate, in (0, 1).")] = 0.001,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="Noisy inputs per forward pass (does not change results).")] = 1000,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/K: this process takes every K-th example starting at I.")] = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    input_shape: InputShapeOpt = None,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (pays off for long runs).")] = False,
    sequential: Annotated[bool, typer.Option("--sequential", help=SEQ_HELP)] = False,
    radius: Annotated[Optional[list[str]], typer.Option("--radius", help="With --sequential: a target L2 radius (> 0) to certify; repeatable. None: the adaptive mode.")] = None,
    against: Annotated[Optional[str], typer.Option("--against", help=AGAINST_HELP)] = None,
    radius_tol: Annotated[Optional[float], typer.Option("--radius-tol", help="With --sequential and no --radius: stop when more samples cannot raise the certified radius by more than this (L2, > 0; default 0.02 * sigma).")] = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    method: MethodOpt = "cohen",
    lipschitz: LipschitzOpt = None,
    eps: MixEpsOpt = None,
    norm: MixNormOpt = None,
    mix: MixOpt = None,
    scale_h: ScaleHOpt = None,
) -> None:
    """Certify each example with Cohen et al.'s CERTIFY (N0, N, alpha) at every --sigma.

    Noise is added in [0,1] pixel space before the model's own normalization and is not clipped. With
    --sequential the anytime-valid test decides each --radius after as few samples as the votes allow (same
    table columns, plus certified_radii, n_used and against); --against label measures certified accuracy and
    does not certify unlabeled inputs. --method mix-... certifies a fixed-alpha mixture instead (its run dir, or
    --model H --mix A). With --import LOG, reads a finished Cohen-format log instead (nothing is certified).
    """
    if import_ is not None:  # a Cohen-format log in (robcli/cli/certify_import.py)
        from robcli.cli.certify_import import import_log

        return import_log(import_, out=out, sigma=sigma, n=n, n0=n0, alpha=alpha, dataset=dataset, split=split,
                          force=force, quiet=quiet)
    from robcli.cli.certify_import import require_model_and_dataset

    require_model_and_dataset(model, dataset)
    if method != "cohen" or any(v is not None for v in (lipschitz, eps, norm, mix, scale_h)):
        from robcli.cli.certify_mix import certify_mix

        return certify_mix(ctx, **{k: v for k, v in locals().items() if k != "ctx"})
    from pathlib import Path

    from robcli.certify.smoothing import CertifyConfig, run_certify, same_config, summary_text
    from robcli.cli.common import (
        ProgressCallback,
        argv,
        check_out,
        console,
        image_size_for,
        naming_nonfinite,
        progress,
        refuse_given,
    )
    from robcli.errors import UsageError
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_float_expr, parse_shard

    if not sequential:
        refuse_given(ctx, ("radius", "radius_tol", "against"), "without --sequential (fixed-N CERTIFY certifies "
                     "its own prediction and reports each example's radius)")
    sigmas = tuple(parse_float_expr(s, "--sigma") for s in (sigma or ["0.12"]))
    shard_t = parse_shard(shard)
    dev = resolve_device(device)
    # the device type is part of the configuration: CPU and CUDA generators draw different noise, so
    # resuming or merging shards across device types would mix two noise streams
    extra = {"model": model, "arch": arch, "dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip,
             "shard": shard, "device_type": dev.type}
    if sequential:
        from robcli.certify.sequential import SequentialConfig, run_sequential, sample_text

        cfg = SequentialConfig(
            sigmas=sigmas, radii=tuple(parse_float_expr(r, "--radius") for r in (radius or [])),
            against=against or "prediction", radius_tol=radius_tol, N0=n0, N=n, alpha=alpha, batch=batch,
            mode=mode, seed=seed, compile=compile_, extra=extra)
        runner = run_sequential
    else:
        cfg = CertifyConfig(sigmas=sigmas, N0=n0, N=n, alpha=alpha, batch=batch, mode=mode.strip().lower(),
                            seed=seed, compile=compile_, extra=extra)
        runner = run_certify
    out_p = Path(out)
    if out_p.suffix != ".parquet":
        raise UsageError(f"--out {out}: give a file name ending in .parquet")
    check_out(out_p, force, resume)

    from robcli.data.registry import load_split
    from robcli.models import load_model
    from robcli.tables.io import device_type, partial_path, provenance, read_table, write_table

    def check_resumable(t, path, hint: str) -> None:
        old = device_type(t)
        if old is not None and old != dev.type:
            raise UsageError(f"{path} was computed on {old}, this run is on {dev.type}: their noise streams "
                             f"differ, so the rows cannot be combined; run on {old} or {hint}")
        if not same_config({"device_type": dev.type, **t.config}, cfg.as_dict()):  # older tables lack it
            raise UsageError(f"{path} was made with a different configuration; {hint}")

    part = partial_path(out_p)
    if resume and out_p.exists() and not part.exists():
        t = read_table(out_p, "certify")
        check_resumable(t, out_p, "use --force to start over")
        if not quiet:
            console().print(f"{out_p} is already complete\n" + summary_text(t.df), highlight=False, soft_wrap=True)
        return

    data = load_split(dataset, split, data_dir=data_dir,
                      image_size=image_size_for(image_size, model)).select(n_ex=n_ex, skip=skip)
    lm = load_model(model, arch=arch, dataset_info=data.info, seed=seed, num_classes=num_classes,
                    input_shape=input_shape)
    prov = provenance(seed=seed, device=dev, models=lm.files or [], data=data.fingerprint(), command=argv())
    config = cfg.as_dict()

    done = None
    if resume and part.exists():
        t = read_table(part, "certify")
        check_resumable(t, part, "drop --resume (or use --force) to start over")
        done = t.df

    def checkpoint(df) -> None:
        write_table(df, part, "certify", config=config, prov=prov)

    with naming_nonfinite(model, part), progress(quiet) as prog:
        df = runner(lm.model, data, cfg, device=dev, shard=shard_t, done=done, checkpoint=checkpoint,
                    progress=ProgressCallback(prog))
    write_table(df, out_p, "certify", config=config, prov=prov)
    if part.exists():
        part.unlink()
    if not quiet:
        more = ("\n" + sample_text(df)) if sequential and len(df) else ""
        console().print(summary_text(df) + more + f"\nwrote {out_p} ({len(df)} rows)", highlight=False, soft_wrap=True)
