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
    PrecisionOpt,
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
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/K: this process certifies the chunks (--chunk consecutive examples each) with number % K == I and writes their parts to OUT.parts/ (no table); then robcli merge OUT.parts --out OUT.")] = None,
    chunk: Annotated[Optional[int], typer.Option("--chunk", help="Examples per chunk = one part file in OUT.parts/ and the unit that --resume, --shard and launched ranks share out (default 8; 64 with --sequential). Does not change results.")] = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    input_shape: InputShapeOpt = None,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
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
    from robcli.certify.smoothing import CertifyConfig, summary_text
    from robcli.certify.table import certify_table
    from robcli.cli.common import (
        ProgressCallback,
        argv,
        console,
        job_world,
        naming_nonfinite,
        parts_left_text,
        progress,
        refuse_given,
    )
    from robcli.utils.parse import parse_float_expr

    if not sequential:
        refuse_given(ctx, ("radius", "radius_tol", "against"), "without --sequential (fixed-N CERTIFY certifies "
                     "its own prediction and reports each example's radius)")
    sigmas = tuple(parse_float_expr(s, "--sigma") for s in (sigma or ["0.12"]))
    extra = {"model": model, "arch": arch, "dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip}
    if sequential:
        from robcli.certify.sequential import SequentialConfig, sample_text

        cfg = SequentialConfig(
            sigmas=sigmas, radii=tuple(parse_float_expr(r, "--radius") for r in (radius or [])),
            against=against or "prediction", radius_tol=radius_tol, N0=n0, N=n, alpha=alpha, batch=batch,
            mode=mode, seed=seed, compile=compile_, precision=precision, extra=extra)
    else:
        cfg = CertifyConfig(sigmas=sigmas, N0=n0, N=n, alpha=alpha, batch=batch, mode=mode.strip().lower(),
                            seed=seed, compile=compile_, precision=precision, extra=extra)
    world = job_world(shard)
    quiet = quiet or (world.grouped and not world.is_main)  # one progress bar and summary per job
    with naming_nonfinite(model), progress(quiet) as prog:
        res = certify_table(cfg, model=model, dataset=dataset, out=out, split=split, n_ex=n_ex, skip=skip, arch=arch,
                            num_classes=num_classes, input_shape=input_shape, data_dir=data_dir,
                            image_size=image_size, device=device, resume=resume, force=force,
                            world=world, chunk=chunk, progress=ProgressCallback(prog), command=argv())
    if quiet or (res.df is None and world.grouped):
        return
    if res.df is None:
        msg = parts_left_text(world, res.parts, res.out)
    elif res.complete:
        msg = f"{res.out} is already complete\n" + summary_text(res.df)
    else:
        more = ("\n" + sample_text(res.df)) if sequential and len(res.df) else ""
        msg = summary_text(res.df) + more + f"\nwrote {res.out} ({len(res.df)} rows)"
    console().print(msg, highlight=False, soft_wrap=True)
