"""`robcli report`: paper-style tables and plots from robcli tables and run dirs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import DataDirOpt, ForceOpt, check_out, handle_errors


@handle_errors
def report(
    inputs: Annotated[list[str], typer.Argument(help="Tables (attack, certify, partition, compose, train_log), shard folders or run dirs.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="markdown, csv, latex (booktabs rules: needs \\usepackage{booktabs}), json or html.")] = "markdown",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Write the report here (default: stdout).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write the plots (Pareto fronts, certified accuracy vs radius) to FILE.png or FILE.svg.")] = None,
    regions: Annotated[Optional[list[str]], typer.Option("--regions", help="RUN=TABLE: draw the Fig. 1 decision regions of a 2-D model with its attack/partition table's splits; repeatable.")] = None,
    regions_eps: Annotated[Optional[str], typer.Option("--regions-eps", help="Radius of the --regions attack tables to colour the splits by (when they hold several).")] = None,
    plot_regions: Annotated[Optional[str], typer.Option("--plot-regions", help="Where to write the --regions figure (.png/.svg); html embeds it anyway.")] = None,
    pareto: Annotated[Optional[str], typer.Option("--pareto", help="X,Y: add the Pareto front on two metrics (per data set, norm and eps; with --plot a panel). Higher is better for nat_acc, robust_acc, robust_selection, selected_robust_acc, selection_rate, delta_nat_acc, delta_robust_acc; lower for robust_inaccuracy.")] = None,
    radii: Annotated[Optional[list[float]], typer.Option("--radius", help="Radii for the certified-accuracy table (repeatable).")] = None,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Render Table 1/2/3/4/6/8/9-style tables (markdown to stdout by default) and Figure 1-4-style plots."""
    from pathlib import Path

    from robcli.errors import UsageError
    from robcli.report.build import DEFAULT_RADII, build_report, collect, plot_report
    from robcli.report.build import plot_regions as draw_regions
    from robcli.report.render import FORMATS, render
    from robcli.utils.parse import parse_eps

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
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

    rep = build_report(collect(inputs), radii=tuple(radii) if radii else DEFAULT_RADII, pareto=metrics)
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
