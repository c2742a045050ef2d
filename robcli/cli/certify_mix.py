"""`robcli certify --method mix-...`: certified radii of a fixed-alpha mixture run directory. Flags -> one library
call (robcli.mixing.certify.certify_mixture) -> print. `robcli certify` dispatches here at the top of its body."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import check_out, given, refuse_given

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
COHEN_ONLY = ("mode", "shard", "chunk", "arch", "num_classes", "input_shape", "image_size", "compile_", "resume",
              "sequential", "radius", "against", "radius_tol")


def certify_mix(ctx, *, model, dataset, out, sigma, method, lipschitz, eps, norm, mix, scale_h, n0, n, alpha, batch, split, n_ex,
                skip, data_dir, seed, device, force, quiet, **_cohen_only) -> None:
    """`certify --method mix-*` (and the refusal of the mixture flags with --method cohen)."""
    from robcli.cli.common import argv, image_size_for, naming_nonfinite
    from robcli.data.registry import load_split
    from robcli.errors import UsageError
    from robcli.mixing.certify import MixCertifyConfig, check_method, resolve_mixture
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    if method.strip().lower() == "cohen":
        refuse_given(ctx, MIX_ONLY, "to --method cohen (they belong to the mixture certificates --method mix-...)")
        raise AssertionError("certify_mix called for --method cohen without mixture flags")  # a bug in the dispatch
    m = check_method(method)
    refuse_given(ctx, COHEN_ONLY, f"to --method {m} (a mixture certificate)")
    from robcli.cli.common import job_world

    if job_world(None).size > 1:
        raise UsageError(f"--method {m} runs in one process (not spread over ranks or array tasks yet); start it "
                         "without torchrun/srun or the job array")
    smoothed = m in ("mix-smoothed-h", "mix-lipschitz-rs")
    if not smoothed:
        refuse_given(ctx, ("sigma",), f"to --method {m} (it smooths nothing)")
    elif len(sigma or []) > 1:
        raise UsageError(f"--method {m} takes one --sigma")
    refuse_given(ctx, () if m == "mix-lipschitz" else ("lipschitz",), f"to --method {m}")
    refuse_given(ctx, () if m == "mix-local-estimate" else ("eps",), f"to --method {m}")
    if smoothed:
        refuse_given(ctx, ("norm",), f"to --method {m} (its radii are L2)")
    nrm = parse_norm(norm or "L2")
    cfg = MixCertifyConfig(method=m, sigma=parse_float_expr(sigma[0], "--sigma") if smoothed and given(ctx, "sigma") else None,
                           lipschitz=lipschitz, eps=parse_eps(eps, nrm) if eps is not None else None, norm=nrm,
                           n0=n0, n=n, alpha=alpha, batch=batch, seed=seed)
    run = resolve_mixture(model, parse_float_expr(mix, "--mix") if mix is not None else None, scale_h)
    from robcli.mixing.certify import certify_mixture, check_samples

    check_samples(run, cfg)
    check_out(out, force)
    if run["alpha"] <= 0.5 and not quiet:
        typer.echo("note: a mixture weight <= 1/2 certifies nothing (the mixing paper's Lemma 1: g may outvote h); every example "
                   "abstains", err=True)
    from robcli.tables.io import provenance, write_table
    from robcli.tables.schema import CERTIFIED_MODELS
    from robcli.utils.device import resolve_device

    dev = resolve_device(device)
    data = load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(None, run["robust"])).select(
        n_ex=n_ex, skip=skip)
    with naming_nonfinite(run["model"], robust=run["robust"]):
        df, config, files = certify_mixture(run, data, cfg, device=dev)
    config.update({"dataset": dataset, "split": split, "n_ex": n_ex, "skip": skip})
    # the certified run directory first (the name readers show), then the robust member's weights
    prov = provenance(seed=seed, device=dev, models=([model] if run["model"] else []) + files, data=data.fingerprint(),
                      command=argv())
    write_table(df, out, "certify", config=config, prov=prov)
    if not quiet:
        cm = config["certified_model"]
        cert_acc = (df["correct"] & (df["radius"] > 0)).mean()
        tag = " (ESTIMATE, not a certificate)" if config["radius_is_estimate"] else ""
        what = "estimates radii of" if config["radius_is_estimate"] else "certifies"
        typer.echo(f"{m}: {what} {cm} ({CERTIFIED_MODELS[cm]})")
        typer.echo(f"{m}{tag}: certified-correct {cert_acc:.4f}, mean radius {df['radius'].mean():.4f}")
