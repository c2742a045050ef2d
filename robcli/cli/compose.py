"""`robcli compose`: robust model(s) + selector + core model from tables (paper eq. 15), or mixtures of models.
Flags -> one library call (robcli.compose.tables.compose_tables, robcli.compose.mixtures) -> print."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import (
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NExOpt,
    QuietOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    argv,
    given,
    handle_errors,
    naming_nonfinite,
    refuse_given,
)

MixSpaceOpt = Annotated[str, typer.Option("--mix-space", help="prob (the paper's mixture) or logit (for comparison).")]
ScaleGOpt = Annotated[float, typer.Option("--scale-g", help="Logit scale of g (App. D.1; 1/temperature).")]
ScaleHOpt = Annotated[float, typer.Option("--scale-h", help="Logit scale of h (App. D.1; 1/temperature).")]

SELECTOR_HELP = (
    "ri (robustness indicator, eq. 12/13), sr (softmax response as eq. 16 states it: select x when the max-softmax "
    "stays >= threshold on all of B_eps(x)) or sr-pointwise (select when the max-softmax at x >= threshold; not "
    "eq. 16). Soundness rule: an example counts as robust and accurate for H only if the selector's decision cannot "
    "flip inside B_eps(x) and the model it routes to is robust and accurate there. Robust selection uses the 2*eps "
    "rule (eq. 14): the robust model robust on B_2eps(x) (-r EPS_TABLE,2EPS_TABLE of one model); sr: lowest "
    "max-softmax on B_eps(x) >= threshold decides the selection, on B_2eps(x) the robust selection (APGD-conf and "
    "every attack row at that radius, capped at 0.5 where the prediction flipped); sr-pointwise: lowest max-softmax "
    "on B_eps(x) >= threshold is its robust selection. Abstain case (not robustly selected): the robust model must "
    "still be right at x (ri; sr with threshold > 0.5) or robust and accurate (sr-pointwise; sr with threshold <= "
    "0.5) wherever it might be selected, and the core model robust and accurate at eps; robust abstention is never "
    "claimed. Certified selector: radius >= 2*eps by default, --selection-check eps for the paper's radius >= eps."
)


CERT_HELP = (
    "Certify tables (-r/-c): one example's claim can rest on up to m + 1 certificates (m robust members and the "
    "core), each failing with probability up to its alpha, so the table records composition_alpha = the sum of "
    "their alphas (union bound); for a composition-level alpha A, certify each table at A/(m+1)."
)


# which flags belong where (decided by whether the user gave them: click's parameter source)
MIX_FLAGS = ("mix_grid", "mix_space", "scale_g", "scale_h", "split", "n_ex", "skip", "batch")
TABLE_FLAGS = ("selector", "threshold", "do_sweep", "sigma", "check", "robust_model", "core_model", "export_threshold",
               "export_inner_attack", "export_inner_steps", "export_inner_restarts")
SWEEP_ONLY = ("out", "eps", "mix_grid", "dataset", "norm", "steps", "split", "n_ex", "skip", "batch")


@handle_errors
def compose(
    ctx: typer.Context,
    robust: Annotated[list[str], typer.Option("--robust", "-r", help="Robust model's attack (or certify) table(s), comma-joined when eps and 2*eps sit in separate files; repeat for a cascade (tried in order). " + CERT_HELP + " With --mix/--mix-sweep: the robust MODEL h (run dir or checkpoint).")],
    core: Annotated[str, typer.Option("--core", "-c", help="Core model's attack (or certify) table at eps. With --mix/--mix-sweep: the core MODEL g.")],
    eps: Annotated[Optional[str], typer.Option("--eps", help="Threat radius of the composition, e.g. 1/255 (certified: the L2 radius); --mix-sweep: the attack radius.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Compose table (Parquet).")] = None,
    selector: Annotated[str, typer.Option("--selector", help=SELECTOR_HELP)] = "ri",
    threshold: Annotated[Optional[list[str]], typer.Option("--threshold", help="Softmax-response threshold in [0,1]; repeatable.")] = None,
    do_sweep: Annotated[bool, typer.Option("--sweep", help="Softmax response: thresholds 0, 0.05, ..., 1.")] = False,
    norm: Annotated[Optional[str], typer.Option("--norm", help="Linf or L2 (default: the tables' norm; certify tables: L2; --mix-sweep: Linf).")] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="Certify tables holding several sigmas: which one.")] = None,
    check: Annotated[str, typer.Option("--selection-check", help="2eps (sound, eq. 14) or eps (the paper's certified criterion; not sound for the selector).")] = "2eps",
    robust_model: Annotated[Optional[list[str]], typer.Option("--robust-model", help="Robust model run dir(s), same order as --robust: softmax confidences and --export.")] = None,
    core_model: Annotated[Optional[str], typer.Option("--core-model", help="Core model run dir (for --export).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Data set, when the tables do not record it (--mix-sweep: required).")] = None,
    data_dir: DataDirOpt = None,
    export: Annotated[Optional[str], typer.Option("--export", help="Write the composite (or, with --mix, the mixture) as a model run dir that every --model loads.")] = None,
    export_threshold: Annotated[Optional[list[str]], typer.Option("--export-threshold", help="Softmax-response export (--selector sr or sr-pointwise): threshold(s) of the exported selector (default: the --threshold).")] = None,
    export_inner_attack: Annotated[str, typer.Option("--export-inner-attack", help="Robustness-indicator and softmax-response (sr, eq. 16) export: the attack run inside every forward (ri: robustness at the input, pgd from x, batch-independent, or apgd-ce; sr: pgd minimising the max softmax).")] = "pgd",
    export_inner_steps: Annotated[int, typer.Option("--export-inner-steps", help="Robustness-indicator and sr export: PGD steps of the inner attack run in every forward of the exported model.")] = 20,
    export_inner_restarts: Annotated[int, typer.Option("--export-inner-restarts", help="Robustness-indicator and sr export: starts of the inner attack (the first from x).")] = 1,
    steps: Annotated[Optional[int], typer.Option("--steps", help="PGD steps of the confidence attack on --robust-model (default 50; 2 starts, the first from x); --mix-sweep: PGD steps of each STD/ROB/MIX attack (default 20).")] = None,
    mix: Annotated[Optional[str], typer.Option("--mix", help="Mixture weight A in [0, 1] on the robust MODEL: writes the fixed-alpha mixture log((1-A) softmax(g) + A softmax(h)) (the mixing paper) of --core g and --robust h to --export RUN.")] = None,
    mix_sweep: Annotated[bool, typer.Option("--mix-sweep", help="Natural vs STD/ROB/MIX-attacked accuracy of fixed-alpha mixtures of the MODELS --core/--robust over the --mix-grid weights (the mixing paper's Fig. 2/4).")] = False,
    mix_grid: Annotated[Optional[list[str]], typer.Option("--mix-grid", help="--mix-sweep: mixture weights in [0, 1]; repeatable (default 0, 0.1, ..., 1).")] = None,
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="--mix-sweep: examples per attack batch.")] = 256,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    old_alpha: Annotated[Optional[list[str]], typer.Option("--alpha", hidden=True, help="Gone: --mix-grid.")] = None,
) -> None:
    """Selector compositions from tables (robcli.compose.tables.compose_tables; the soundness rule is in
    robcli.compose.selectors) or, with --mix/--mix-sweep, mixtures of models (robcli.compose.mixtures)."""
    from robcli.errors import UsageError
    from robcli.report.render import markdown_table

    if given(ctx, "old_alpha"):
        raise UsageError("compose --alpha is gone: the sweep's mixture weights are --mix-grid A (repeatable); "
                         "--alpha always means a failure probability")
    if mix is not None or mix_sweep:
        from robcli.compose.mixtures import SWEEP_COLUMNS, export_mixture, sweep_mixtures

        if mix is not None and mix_sweep:
            raise UsageError("give --mix A (export one mixture) or --mix-sweep (evaluate a --mix-grid), not both")
        refuse_given(ctx, TABLE_FLAGS, "to --mix/--mix-sweep (they belong to table compositions)")
        if mix is not None:
            refuse_given(ctx, SWEEP_ONLY, "to --mix A (it only exports the mixture with --export RUN; see --mix-sweep)")
            a = export_mixture(core, robust, mix, export, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h,
                               force=force)
            if not quiet:
                typer.echo(f"wrote mixture {export} (alpha {a:g}, {mix_space} space)", err=True)
            return
        with naming_nonfinite(None, core=core, robust=robust[0] if len(robust) == 1 else None):
            df = sweep_mixtures(core, robust, dataset=dataset, eps=eps, out=out, export=export, norm=norm,
                                mix_grid=mix_grid, steps=steps, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h,
                                split=split, n_ex=n_ex, skip=skip, batch=batch, data_dir=data_dir,
                                device=device, seed=seed, force=force, command=argv()).df
        if not quiet:
            typer.echo(markdown_table(df[SWEEP_COLUMNS]))
        return
    refuse_given(ctx, MIX_FLAGS, "without --mix/--mix-sweep (they belong to mixtures of models)")
    if eps is None:
        raise UsageError("missing --eps (the threat radius of the composition)")
    import robcli.compose.tables as ct

    comp = ct.compose_tables(
        robust, core, eps=eps, out=out, selector=selector, threshold=threshold, do_sweep=do_sweep, norm=norm,
        sigma=sigma, check=check, robust_model=robust_model, core_model=core_model, dataset=dataset,
        data_dir=data_dir, export=export, export_threshold=export_threshold, export_inner_attack=export_inner_attack,
        export_inner_steps=export_inner_steps, export_inner_restarts=export_inner_restarts,
        steps=50 if steps is None else steps, device=device, seed=seed, force=force, command=argv(),
        given=frozenset(given(ctx, "export_inner_attack", "export_inner_steps", "export_inner_restarts")))
    ct.write_composition(comp, out)
    if not quiet and comp.card is not None:
        typer.echo(ct.export_summary(comp), err=True)
    if not quiet and comp.certs:
        typer.echo(ct.certificates_note(comp), err=True)
    if not quiet:
        typer.echo(markdown_table(comp.df[ct.LEAD + ["core_nat_acc", "core_robust_acc"]]))
