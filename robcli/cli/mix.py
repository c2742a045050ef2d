"""`robcli mix ...`: mixed classifiers and adaptive smoothing (papers 002, 003/004). Parsing only; the work is in
``robcli.mixing``. Subcommands: build (fixed-alpha export), sweep (Fig. 2/4 curve), train (mixing network),
attack (settings A-D, alpha(x) per example), certify (mixture radii).
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

mix_app = typer.Typer(help="Mixed classifiers h^alpha = log((1-a) softmax(g) + a softmax(h)) and the mixing network.",
                      no_args_is_help=True)

CoreOpt = Annotated[str, typer.Option("--core", "-c", help="Accurate core model g (run dir or checkpoint).")]
RobustOpt = Annotated[str, typer.Option("--robust", "-r", help="Robust model h (run dir or checkpoint).")]
MixSpaceOpt = Annotated[str, typer.Option("--mix-space", help="prob (the paper's mixture) or logit (for comparison).")]
ScaleGOpt = Annotated[float, typer.Option("--scale-g", help="Logit scale of g (App. D.1; 1/temperature).")]
ScaleHOpt = Annotated[float, typer.Option("--scale-h", help="Logit scale of h (App. D.1; 1/temperature).")]
NormOpt = Annotated[str, typer.Option("--norm", help="Linf or L2.")]


def _data(dataset, split, data_dir, n_ex, skip, model=None):
    from robcli.cli.common import image_size_for
    from robcli.data.registry import load_split

    return load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(None, model)).select(n_ex=n_ex, skip=skip)


def _layers(spec: Optional[str]):
    if spec is None:
        return None
    parts = tuple(p.strip() for p in spec.split(",") if p.strip())
    if len(parts) != 2:
        from robcli.errors import UsageError

        raise UsageError(f"--layers {spec!r}: give two layer names, shallow,middle (e.g. net.layer1,net.layer2)")
    return parts


@mix_app.command("build")
@handle_errors
def build_cmd(
    core: CoreOpt,
    robust: RobustOpt,
    alpha: Annotated[str, typer.Option("--alpha", "--mix", help="Mixing weight in [0, 1] on the robust model.")],
    export: Annotated[str, typer.Option("--export", "-o", help="Output run directory of the mixture.")],
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the fixed-alpha mixture as a model run dir that attack and certify load."""
    from robcli.cli.common import check_out
    from robcli.mixing.io import build_mixture, load_members, save_mixture
    from robcli.mixing.mixed import check_alpha, check_scale
    from robcli.utils.parse import parse_float_expr

    a = check_alpha(parse_float_expr(alpha, "--alpha"), "--alpha")
    check_scale(scale_g, "--scale-g")
    check_scale(scale_h, "--scale-h")
    check_out(export, force)
    lg, lh = load_members(core, robust)
    m = build_mixture(lg, lh, alpha=a, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h)
    save_mixture(export, m, core=core, robust=robust, lg=lg, lh=lh, dataset=lg.card.get("dataset"))
    if not quiet:
        typer.echo(f"wrote mixture {export} (alpha {a:g}, {mix_space} space)", err=True)


@mix_app.command("sweep")
@handle_errors
def sweep_cmd(
    core: CoreOpt,
    robust: RobustOpt,
    dataset: DatasetOpt,
    eps: Annotated[str, typer.Option("--eps", help="Attack radius, e.g. 8/255.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Compose table (Parquet), one row per alpha.")] = None,
    alpha: Annotated[Optional[list[str]], typer.Option("--alpha", help="Alpha grid values; repeatable (default 0, 0.1, ..., 1).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="PGD steps of the STD/ROB/MIX attacks.")] = 20,
    norm: NormOpt = "Linf",
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="Examples per attack batch.")] = 256,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Natural vs attacked accuracy over a grid of fixed alpha (attacks on g, h and the mixture; 002 Fig. 2)."""
    from robcli.cli.common import argv, check_out, naming_nonfinite
    from robcli.errors import UsageError
    from robcli.mixing.evaluate import sweep_compose_frame
    from robcli.mixing.io import load_members
    from robcli.mixing.mixed import check_alpha
    from robcli.mixing.sweep import alpha_sweep
    from robcli.tables.io import provenance, write_table
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    nrm = parse_norm(norm)
    e = parse_eps(eps, nrm)
    grid = [check_alpha(parse_float_expr(a, "--alpha"), "--alpha") for a in alpha] if alpha else [i / 10 for i in range(11)]
    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be >= 1")
    if out is not None:
        check_out(out, force)
    dev = resolve_device(device)
    data = _data(dataset, split, data_dir, n_ex, skip, core)
    lg, lh = load_members(core, robust, dataset_info=data.info, device=dev)
    x, y = data.tensors()
    with naming_nonfinite(None, core=core, robust=robust):
        df = alpha_sweep(lg.model, lh.model, x.to(dev), y.to(dev), grid, eps=e, norm=nrm, steps=steps,
                         mix_space=mix_space, scale_g=scale_g, scale_h=scale_h, batch=batch)
    table = sweep_compose_frame(df, core=core, robust=robust)
    if out is not None:
        config = {"core": core, "robust": robust, "alphas": grid, "eps": e, "norm": nrm, "steps": steps,
                  "mix_space": mix_space, "scale_g": scale_g, "scale_h": scale_h, "dataset": dataset, "split": split,
                  "n_ex": n_ex, "skip": skip}
        prov = provenance(seed=seed, device=dev, models=[core, robust], data=data.fingerprint(), command=argv())
        write_table(table, out, "compose", config=config, prov=prov)
    if not quiet:
        from robcli.report.render import markdown_table

        typer.echo(markdown_table(df[["alpha", "nat_acc", "std_acc", "rob_acc", "mix_acc", "robust_acc"]]))


@mix_app.command("train")
@handle_errors
def train_cmd(
    core: CoreOpt,
    robust: RobustOpt,
    dataset: DatasetOpt,
    eps: Annotated[str, typer.Option("--eps", help="Training attack radius (radii drawn from U(eps_low*eps, eps)).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output run directory of the adaptive mixture.")],
    train_attack: Annotated[str, typer.Option("--train-attack", help="A (gray-box PGD), B (white-box PGD) or C (APGD).")] = "B",
    attack_steps: Annotated[int, typer.Option("--attack-steps", help="Max training attack steps (drawn in [1, N]).")] = 10,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    batch: Annotated[int, typer.Option("--batch", "--batch-size")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    c_ce: Annotated[float, typer.Option("--c-ce", help="Composite loss weight of CE (004 eq. 8).")] = 0.0,
    c_bce: Annotated[float, typer.Option("--c-bce", help="Composite loss weight of BCE.")] = 1.5,
    c_prod: Annotated[float, typer.Option("--c-prod", help="Composite loss weight of CE*BCE.")] = 0.2,
    ema: Annotated[Optional[float], typer.Option("--ema", help="EMA decay of the mixing network's weights (paper: 0.8).")] = None,
    alpha_min: Annotated[float, typer.Option("--alpha-min", help="Lower end of alpha(x) at evaluation.")] = 0.0,
    alpha_max: Annotated[float, typer.Option("--alpha-max", help="Upper end of alpha(x) at evaluation.")] = 1.0,
    layers_g: Annotated[Optional[str], typer.Option("--layers-g", help="shallow,middle layer names of g (default per architecture).")] = None,
    layers_h: Annotated[Optional[str], typer.Option("--layers-h", help="shallow,middle layer names of h.")] = None,
    width: Annotated[int, typer.Option("--width", help="Mixing network width.")] = 16,
    blocks: Annotated[int, typer.Option("--blocks", help="ResNet blocks in the mixing network's trunk.")] = 1,
    eps_low: Annotated[float, typer.Option("--eps-low", help="Training radii are drawn from U(eps_low*eps, eps), eps_low in [0, 1].")] = 0.25,
    alpha_weight: Annotated[float, typer.Option("--alpha-weight", help="Max weight of the training attack's log(1-alpha) term (drawn from U(0, w) per batch; B, C).")] = 1.0,
    sigmoid_scale: Annotated[float, typer.Option("--sigmoid-scale", help="Scale of the sigmoid input (App. C.2).")] = 2.0,
    norm: NormOpt = "Linf",
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    split: SplitOpt = "train",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the adaptive mixing network alpha_theta(x) with both base models frozen (004 Sec. 4)."""
    from robcli.cli.common import argv, check_out, naming_nonfinite
    from robcli.mixing.io import build_mixture, load_members, save_mixture
    from robcli.mixing.mixed import check_alpha_range, check_scale
    from robcli.mixing.train import MixnetConfig, train_mixnet
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_norm

    nrm = parse_norm(norm)
    e = parse_eps(eps, nrm)
    rng = check_alpha_range(alpha_min, alpha_max)
    check_scale(scale_g, "--scale-g")
    check_scale(scale_h, "--scale-h")
    lay_g, lay_h = _layers(layers_g), _layers(layers_h)
    cfg = MixnetConfig(eps=e, norm=nrm, steps=attack_steps, eps_low=eps_low, setting=train_attack.upper(),
                       alpha_weight=alpha_weight, c_ce=c_ce, c_bce=c_bce, c_prod=c_prod, epochs=epochs, batch=batch,
                       lr=lr, ema=ema, width=width, blocks=blocks, sigmoid_scale=sigmoid_scale, seed=seed)
    check_out(out, force)
    dev = resolve_device(device)
    data = _data(dataset, split, data_dir, n_ex, skip, core)
    lg, lh = load_members(core, robust, dataset_info=data.info, device=dev)
    m = build_mixture(lg, lh, alpha=None, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h,
                      alpha_range=None if rng == (0.0, 1.0) else rng, layers_g=lay_g, layers_h=lay_h, width=width,
                      blocks=blocks, sigmoid_scale=sigmoid_scale, device=dev, seed=seed)
    x, y = data.tensors()

    def show(epoch, row):
        if not quiet:
            typer.echo(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f} ce {row['ce']:.4f} bce {row['bce']:.4f} "
                       f"alpha clean {row['alpha_clean']:.3f} attacked {row['alpha_adv']:.3f}", err=True)

    with naming_nonfinite(None, core=core, robust=robust):
        log = train_mixnet(m, x, y, cfg, callback=show, device=dev)
    training = {"loss": "mixnet", "config": cfg.as_dict(), "log": log, "command": argv(), "data": data.fingerprint()}
    save_mixture(out, m, core=core, robust=robust, lg=lg, lh=lh, training=training, dataset=dataset)
    if not quiet:
        typer.echo(f"wrote adaptive mixture {out}", err=True)


@mix_app.command("attack")
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


@mix_app.command("certify")
@handle_errors
def certify_cmd(
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Certify table (Parquet).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A fixed-alpha mixture run dir (mix build / compose --mix): alpha, --scale-h and the robust member come from its card.")] = None,
    robust: Annotated[Optional[str], typer.Option("--robust", "-r", help="Robust model h (run dir or checkpoint); instead of --model.")] = None,
    alpha: Annotated[Optional[str], typer.Option("--mix", "--mix-alpha", help="The mixture's weight on h (> 1/2 to certify); instead of --model.")] = None,
    method: Annotated[str, typer.Option("--method", help="smoothing (Thm 2) and lipschitz-rs (Thm 1, Lip = sqrt(2/pi)/sigma) certify the mixture with the Gaussian-SMOOTHED h (certified_model mixture-with-smoothed-h, not what a mixture run dir computes; compose, partition and report refuse such tables); lipschitz (Thm 1, --lipschitz given) certifies the mixture run dir's own classifier (certified_model mixture); local: App. C.3 radius ESTIMATE of it (radius_is_estimate).")] = "smoothing",
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="Smoothing noise of h (smoothing, lipschitz-rs).")] = None,
    lipschitz: Annotated[Optional[float], typer.Option("--lipschitz", help="Lipschitz constant of h's probabilities (method lipschitz).")] = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="Ball radius of the local estimate (method local).")] = None,
    norm: NormOpt = "L2",
    n0: Annotated[int, typer.Option("--N0", "--n0")] = 100,
    n: Annotated[int, typer.Option("--N", "--n")] = 100_000,
    alpha_cert: Annotated[float, typer.Option("--alpha", help="Failure probability of each certificate.")] = 0.001,
    scale_h: Annotated[Optional[float], typer.Option("--scale-h", help="Logit scale of h (App. D.1; default 1, or the --model card's).")] = None,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    batch: Annotated[int, typer.Option("--batch", "--batch-size")] = 1000,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Certified radii of h^alpha whatever the core model does (002 Thm 1/2; 004 App. C.3 estimate, flagged).

    The table's certified_model column (and config) says which classifier the radii are for: "mixture" (the
    deterministic mixture a mixture run directory computes; --method lipschitz, and local as an estimate) or
    "mixture-with-smoothed-h" (--method smoothing / lipschitz-rs: h replaced by its Gaussian-smoothed hard
    classifier, which no run directory computes).
    """
    import time
    from pathlib import Path

    from robcli.cli.common import argv, check_out, naming_nonfinite
    from robcli.errors import UsageError
    from robcli.mixing.evaluate import certify_frame
    from robcli.mixing.mixed import check_alpha, check_scale
    from robcli.mixing.radii import (
        certify_lipschitz_mixture,
        certify_local_estimate,
        certify_smoothed_mixture,
    )
    from robcli.models import load_model
    from robcli.tables.io import provenance, write_table
    from robcli.tables.schema import CERTIFIED_MODELS
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm
    from robcli.utils.seeding import make_generator

    if model is not None:
        from robcli.mixing.io import fixed_mixture_spec, is_mixnet_dir

        if not is_mixnet_dir(model):
            raise UsageError(f"--model {model} is not a mixture run directory (mix build / compose --mix)")
        spec = fixed_mixture_spec(model)
        conflicts = []
        if robust is not None and Path(robust).expanduser().resolve() != Path(spec["robust"]).resolve():
            conflicts.append(f"--robust {robust} (the card's robust member is {spec['robust']})")
        if alpha is not None and check_alpha(parse_float_expr(alpha, "--mix"), "--mix") != spec["alpha"]:
            conflicts.append(f"--mix {alpha} (the card's alpha is {spec['alpha']:g})")
        if scale_h is not None and float(scale_h) != spec["scale_h"]:
            conflicts.append(f"--scale-h {scale_h:g} (the card's scale_h is {spec['scale_h']:g})")
        if conflicts:
            raise UsageError(f"--model {model} conflicts with {'; '.join(conflicts)}: drop the flag or the --model")
        robust, a, scale_h = spec["robust"], spec["alpha"], spec["scale_h"]
    else:
        if robust is None or alpha is None:
            raise UsageError("give --model MIXRUN (a fixed-alpha mixture run dir), or both --robust and --mix")
        a = check_alpha(parse_float_expr(alpha, "--mix"), "--mix")
        scale_h = 1.0 if scale_h is None else scale_h
    check_scale(scale_h, "--scale-h")
    if a <= 0.5 and not quiet:
        typer.echo("note: a mixture weight <= 1/2 certifies nothing (002 Lemma 1: g may outvote h); every example "
                   "abstains", err=True)
    methods = ("smoothing", "lipschitz-rs", "lipschitz", "local")
    if method not in methods:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(methods)}")
    if method in ("smoothing", "lipschitz-rs") and sigma is None:
        raise UsageError(f"--method {method} needs --sigma (the smoothing noise of h)")
    if method == "lipschitz" and (lipschitz is None or not lipschitz > 0):
        raise UsageError("--method lipschitz needs --lipschitz L > 0 (of h's probabilities, in --norm)")
    nrm = parse_norm(norm)
    e = parse_eps(eps, nrm) if eps is not None else None
    if method == "local" and not e:
        raise UsageError("--method local needs --eps > 0")
    if method in ("smoothing", "lipschitz-rs"):
        from robcli.certify.bounds import check_params
        from robcli.mixing.radii import check_estimation_samples

        check_estimation_samples(n, alpha_cert, a)  # the mixture's floor, stricter than plain CERTIFY's
        check_params(sigma=sigma, alpha=alpha_cert, n0=n0, n=n, mode="certify")
    check_out(out, force)
    dev = resolve_device(device)
    data = _data(dataset, split, data_dir, n_ex, skip, robust)
    lm = load_model(robust, dataset_info=data.info, device=dev)
    x, y = data.tensors()
    x = x.to(dev)
    t0 = time.perf_counter()
    with naming_nonfinite(model, robust=robust):
        if method in ("smoothing", "lipschitz-rs"):
            cert = certify_smoothed_mixture(lm.model, x, alpha=a, sigma=sigma, n0=n0, n=n, alpha_cert=alpha_cert,
                                            batch=batch, seed=seed, idx=data.idx.tolist(),
                                            method="smoothing" if method == "smoothing" else "lipschitz",
                                            num_classes=lm.num_classes, device=dev)
        elif method == "lipschitz":
            cert = certify_lipschitz_mixture(lm.model, x, alpha=a, lip=lipschitz, scale_h=scale_h, batch=batch)
        else:
            cert = certify_local_estimate(lm.model, x, alpha=a, eps=e, norm=nrm, scale_h=scale_h,
                                          generator=make_generator(seed, dev))
    secs = time.perf_counter() - t0
    smoothed = method in ("smoothing", "lipschitz-rs")
    df = certify_frame(cert, data.idx.numpy(), y.numpy(), sigma=sigma if smoothed else 0.0,
                       n0=n0 if smoothed else 0, n=n if smoothed else 0,
                       alpha_cert=alpha_cert, alpha=a, seconds=secs,
                       norm="L2" if method in ("smoothing", "lipschitz-rs") else nrm,
                       dim=math.prod(data.info.input_shape))
    config = {"model": model, "robust": robust, "mix_alpha": a, "scale_h": scale_h, "method": method, "sigma": sigma, "lipschitz": lipschitz, "eps": e,
              "norm": df["norm"].iloc[0], "N0": n0, "N": n, "alpha": alpha_cert, "dataset": dataset, "split": split,
              "n_ex": n_ex, "skip": skip, "certified_model": cert.certified_model,
              "certified_model_is": CERTIFIED_MODELS[cert.certified_model], "radius_is_estimate": cert.estimate}
    # the certified run directory first (the name readers show), then the robust member's weights
    prov = provenance(seed=seed, device=dev, models=([model] if model is not None else []) + list(lm.files),
                      data=data.fingerprint(), command=argv())
    write_table(df, out, "certify", config=config, prov=prov)
    if not quiet:
        cert_acc = (df["correct"] & (df["radius"] > 0)).mean()
        tag = " (ESTIMATE, not a certificate)" if cert.estimate else ""
        what = "estimates radii of" if cert.estimate else "certifies"
        typer.echo(f"{method}: {what} {cert.certified_model} ({CERTIFIED_MODELS[cert.certified_model]})")
        typer.echo(f"{method}{tag}: certified-correct {cert_acc:.4f}, mean radius {df['radius'].mean():.4f}")
