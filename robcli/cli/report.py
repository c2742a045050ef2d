"""`robcli report`: paper-style tables and plots from robcli tables and run dirs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import DataDirOpt, ForceOpt, check_out, handle_errors


@handle_errors
def report(
    inputs: Annotated[list[str], typer.Argument(help="Tables (attack, certify, partition, compose, train_log), shard folders, run dirs, or Cohen-format certification logs (with --sigma).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="markdown, csv, latex (booktabs rules: needs \\usepackage{booktabs}), json, html, or cohen-tsv (each certify table and sigma as a Cohen et al. log: --out FILE.tsv or --out FOLDER).")] = "markdown",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Write the report here (default: stdout).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write the plots (Pareto fronts, certified accuracy vs radius) to FILE.png or FILE.svg.")] = None,
    regions: Annotated[Optional[list[str]], typer.Option("--regions", help="RUN=TABLE: draw the Fig. 1 decision regions of a 2-D model with its attack/partition table's splits; repeatable.")] = None,
    regions_eps: Annotated[Optional[str], typer.Option("--regions-eps", help="Radius of the --regions attack tables to colour the splits by (when they hold several).")] = None,
    plot_regions: Annotated[Optional[str], typer.Option("--plot-regions", help="Where to write the --regions figure (.png/.svg); html embeds it anyway.")] = None,
    pareto: Annotated[Optional[str], typer.Option("--pareto", help="X,Y: add the Pareto front on two metrics (per data set, norm and eps; with --plot a panel). Higher is better for nat_acc, robust_acc, robust_selection, selected_robust_acc, selection_rate, delta_nat_acc, delta_robust_acc; lower for robust_inaccuracy.")] = None,
    radii: Annotated[Optional[list[float]], typer.Option("--radius", help="Radii for the certified-accuracy table (repeatable).")] = None,
    rho: Annotated[float, typer.Option("--rho", help="Certified accuracy's confidence statement: acc_lb@r holds with probability >= 1 - rho.")] = 0.001,
    sigma: Annotated[Optional[list[str]], typer.Option("--sigma", help="Cohen-format log inputs: the sigma they were certified with (one for all, or one per log in order).")] = None,
    n: Annotated[int, typer.Option("--N", help="Cohen-format log inputs: estimation samples N they were certified with.")] = 100_000,
    n0: Annotated[int, typer.Option("--N0", help="Cohen-format log inputs: selection samples N0.")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="Cohen-format log inputs: failure probability alpha of each certificate.")] = 0.001,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Render Table 1/2/3/4/6/8/9-style tables (markdown to stdout by default) and Figure 1-4-style plots."""
    from pathlib import Path

    from robcli.analysis.certified import check_rho
    from robcli.errors import UsageError
    from robcli.report.build import DEFAULT_RADII, build_report, cohen_log_inputs, collect, plot_report
    from robcli.report.build import plot_regions as draw_regions
    from robcli.report.render import FORMATS, render
    from robcli.utils.parse import parse_eps, parse_float_expr

    if fmt not in FORMATS + ("cohen-tsv",):
        raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS + ('cohen-tsv',))}")
    check_rho(rho)
    logs = cohen_log_inputs(inputs)
    sigmas = [parse_float_expr(s, "--sigma") for s in (sigma or [])]
    if sigmas and not logs:
        raise UsageError("--sigma declares the sigma of Cohen-format log inputs; none of the inputs is one")
    if logs and not sigmas:
        raise UsageError(f"{logs[0]} is a Cohen-format log, which does not record its parameters: give --sigma "
                         "(and --N, --N0, --alpha when not 100000, 100, 0.001)")
    if logs and len(sigmas) not in (1, len(logs)):
        raise UsageError(f"{len(sigmas)} --sigma values for {len(logs)} Cohen-format logs: give one for all, or one per log")
    declared = {p: {"sigma": sigmas[0] if len(sigmas) == 1 else sigmas[i], "N": n, "N0": n0, "alpha": alpha}
                for i, p in enumerate(logs)}
    if fmt == "cohen-tsv":
        from robcli.tables.cohen import plan_cohen_export

        if plot is not None or regions or pareto is not None:
            raise UsageError("--format cohen-tsv writes logs only: drop --plot, --regions and --pareto")
        plan = plan_cohen_export(collect(inputs, declared), out)
        for dest, _ in plan:
            check_out(dest, force)
        from robcli.utils.fsio import atomic_write_bytes

        for dest, text in plan:
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, text.encode())
        typer.echo(f"wrote {len(plan)} Cohen-format log(s): {', '.join(str(d) for d, _ in plan[:3])}"
                   f"{', ...' if len(plan) > 3 else ''}", err=True)
        return
    for p in (plot, plot_regions):
        if p is not None and Path(p).suffix.lower() not in (".png", ".svg"):
            raise UsageError(f"{p}: plots are written as .png or .svg")
    pairs = []
    for spec in regions or []:
        if "=" not in spec:
            raise UsageError(f"--regions {spec!r} must look like RUN_DIR=TABLE")
        run, tab = spec.split("=", 1)
        pairs.append((run, tab))
    if plot_regions is not None and not pairs:
        raise UsageError("--plot-regions needs at least one --regions RUN=TABLE")
    from robcli.analysis.pareto import parse_metrics

    metrics = parse_metrics(pareto) if pareto is not None else None
    if radii and any(r < 0 for r in radii):
        raise UsageError("--radius must be >= 0")
    for p in (out, plot, plot_regions):
        if p is not None:
            check_out(p, force)

    rep = build_report(collect(inputs, declared), radii=tuple(radii) if radii else DEFAULT_RADII, pareto=metrics,
                       rho=rho)
    if not rep.sections:
        raise UsageError("no tables to report on")
    png = plot_report(rep, plot) if (plot is not None or fmt == "html") else None
    if plot is not None and png is None:
        raise UsageError("nothing to plot: give attack, compose or certify tables")
    if png is not None:
        rep.figures.append(("Pareto fronts and certified accuracy", png))
    if pairs:
        rep.figures.append(("Decision regions with the four splits (Fig. 1)", draw_regions(pairs, plot_regions, data_dir, eps=parse_eps(regions_eps) if regions_eps else None)))
    text = render(rep, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        from robcli.utils.fsio import atomic_write_bytes

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out), text.encode())
