"""`robcli certify --method mix-...`: certified radii of a fixed-alpha mixture run directory. Flags -> one library
call (robcli.mixing.certify.certify_mixture_table) -> print. `robcli certify` dispatches here at the top of its body."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import given, refuse_given

METHOD_HELP = (
    "What is certified. cohen (default): Cohen et al.'s CERTIFY of the --model as its run directory computes it, "
    "smoothed with --sigma. For a fixed-alpha mixture run directory (robcli compose --mix): mix-lipschitz (the mixing paper's Thm "
    "1, --lipschitz L of h's probabilities: the run directory's own mixture, certified_model mixture); "
    "mix-smoothed-h (Thm 2) and mix-lipschitz-rs (Thm 1, Lip = sqrt(2/pi)/sigma) certify the mixture with the "
    "Gaussian-SMOOTHED h (certified_model mixture-with-smoothed-h, which no run directory computes; compose, "
    "partition and report refuse such tables); mix-local-estimate: the App. C.3 radius ESTIMATE of the run "
    "directory's mixture (radius_is_estimate). The mixture certificates hold whatever the core model does.")
MethodOpt = Annotated[str, typer.Option("--method", help=METHOD_HELP)]
LipschitzOpt = Annotated[Optional[float], typer.Option("--lipschitz", help="--method mix-lipschitz: Lipschitz constant of h's probabilities (in --norm).")]
MixEpsOpt = Annotated[Optional[str], typer.Option("--eps", help="--method mix-local-estimate: ball radius of the estimate.")]
MixOpt = Annotated[Optional[str], typer.Option("--mix", help="--method mix-...: the mixture weight on h (> 1/2 to certify) when --model is the robust model h itself (the certificate then holds for any core model); default: the mixture run directory's.")]
ScaleHOpt = Annotated[Optional[float], typer.Option("--scale-h", help="--method mix-...: logit scale of h (App. D.1; default 1, or the mixture run directory's).")]
MixNormOpt = Annotated[Optional[str], typer.Option("--norm", help="--method mix-lipschitz / mix-local-estimate: L2 (default) or Linf.")]

MIX_ONLY = ("lipschitz", "eps", "norm", "mix", "scale_h")
COHEN_ONLY = ("mode", "arch", "num_classes", "input_shape", "image_size", "compile_", "sequential", "radius", "against",
              "radius_tol", "precision")


def certify_mix(ctx, *, model, dataset, out, sigma, method, lipschitz, eps, norm, mix, scale_h, n0, n, alpha, batch,
                split, n_ex, skip, shard, chunk, data_dir, seed, device, resume, force, quiet, **_cohen_only) -> None:
    """`certify --method mix-*` (and the refusal of the mixture flags with --method cohen)."""
    from robcli.cli.common import argv, console, job_world, naming_nonfinite, parts_left_text
    from robcli.errors import UsageError
    from robcli.mixing.certify import (
        SMOOTHED,
        WHY_NOT,
        MixCertifyConfig,
        certify_mixture_table,
        check_method,
        refused_params,
        resolve_mixture,
    )
    from robcli.tables.schema import CERTIFIED_MODELS
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    if method.strip().lower() == "cohen":
        refuse_given(ctx, MIX_ONLY, "to --method cohen (they belong to the mixture certificates --method mix-...)")
        raise AssertionError("certify_mix called for --method cohen without mixture flags")  # a bug in the dispatch
    m = check_method(method)
    refuse_given(ctx, COHEN_ONLY, f"to --method {m} (a mixture certificate)")
    for p in refused_params(m):
        refuse_given(ctx, (p,), f"to --method {m}{WHY_NOT.get(p, '')}")
    smoothed = m in SMOOTHED
    if smoothed and len(sigma or []) > 1:
        raise UsageError(f"--method {m} takes one --sigma")
    nrm = parse_norm(norm or "L2")
    cfg = MixCertifyConfig(method=m, sigma=parse_float_expr(sigma[0], "--sigma") if smoothed and given(ctx, "sigma") else None,
                           lipschitz=lipschitz, eps=parse_eps(eps, nrm) if eps is not None else None, norm=nrm,
                           n0=n0, n=n, alpha=alpha, batch=batch, seed=seed)
    world = job_world(shard)
    quiet = quiet or (world.grouped and not world.is_main)
    mix_a = parse_float_expr(mix, "--mix") if mix is not None else None
    spec = resolve_mixture(model, mix_a, scale_h)  # for the message naming a member with non-finite logits
    with naming_nonfinite(spec["model"], robust=spec["robust"]):
        res = certify_mixture_table(cfg, model=model, dataset=dataset, out=out, mix=mix_a, scale_h=scale_h,
                                    split=split, n_ex=n_ex, skip=skip, data_dir=data_dir, device=device, resume=resume,
                                    force=force, world=world, chunk=chunk, command=argv())
    if quiet or (res.df is None and world.grouped):
        return
    if res.df is None:
        return console().print(parts_left_text(world, res.parts, res.out), highlight=False, soft_wrap=True)
    df, config = res.df, res.config
    if config["mix_alpha"] <= 0.5:
        typer.echo("note: a mixture weight <= 1/2 certifies nothing (the mixing paper's Lemma 1: g may outvote h); "
                   "every example abstains", err=True)
    cm = config["certified_model"]
    cert_acc = (df["correct"] & (df["radius"] > 0)).mean()
    tag = " (ESTIMATE, not a certificate)" if config["radius_is_estimate"] else ""
    what = "estimates radii of" if config["radius_is_estimate"] else "certifies"
    typer.echo(f"{m}: {what} {cm} ({CERTIFIED_MODELS[cm]})")
    typer.echo(f"{m}{tag}: certified-correct {cert_acc:.4f}, mean radius {df['radius'].mean():.4f}"
               + (" (already complete)" if res.complete else f"; wrote {res.out} ({len(df)} rows)"))
