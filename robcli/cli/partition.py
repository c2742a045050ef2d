"""`robcli partition`: the four robustness/accuracy splits of a data set (paper A.9, Tables 8-9)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import ForceOpt, QuietOpt, argv, check_out, handle_errors

SPLIT_HELP = "robust_accurate, robust_inaccurate, nonrobust_accurate or nonrobust_inaccurate"


@handle_errors
def partition(
    table: Annotated[str, typer.Argument(help="An attack table (robcli attack) or a certify table (robcli certify).")],
    eps: Annotated[Optional[str], typer.Option("--eps", help="Threat radius in the attack table, e.g. 2/255 (needed when it holds several).")] = None,
    radius: Annotated[Optional[str], typer.Option("--radius", help="Certify tables: robust means certified radius >= this.")] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="Certify tables holding several sigmas: which one.")] = None,
    attack: Annotated[Optional[str], typer.Option("--attack", help="Use only this attack's rows (default: worst case over all attacks at eps).")] = None,
    norm: Annotated[Optional[str], typer.Option("--norm", help="Linf or L2 (attack tables holding both; certify tables: L2 default, Linf needs radius_linf).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Write the partition table (Parquet) here.")] = None,
    export_split: Annotated[Optional[str], typer.Option("--export-split", help=f"Split to export as an index list: {SPLIT_HELP}.")] = None,
    export: Annotated[Optional[str], typer.Option("--export", help="Index list file (one idx per line after a header comment naming data set and split) for finetune --train-subset / attack --subset.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Summary format on stdout: text, markdown, csv, json.")] = "text",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Assign every example to robust/non-robust x accurate/inaccurate and print the Table 8-style summary."""
    from robcli.analysis.partition import partition_frame, partition_view, split_summary
    from robcli.errors import UsageError
    from robcli.report.render import render_partition_summary
    from robcli.tables.io import provenance, read_table, write_table
    from robcli.tables.schema import PARTITION_SPLITS
    from robcli.utils.parse import parse_norm

    if (export_split is None) != (export is None):
        raise UsageError("--export-split and --export go together: name the split and the file to write")
    split = None
    if export_split is not None:
        split = export_split.strip().lower().replace("-", "_").replace("non_robust", "nonrobust")
        if split not in PARTITION_SPLITS:
            raise UsageError(f"unknown split {export_split!r}; choose {SPLIT_HELP}")
    if fmt not in ("text", "markdown", "csv", "json"):
        raise UsageError(f"unknown --format {fmt!r}; choose text, markdown, csv or json")
    nrm = parse_norm(norm) if norm is not None else None  # checked before anything is read
    for p in (out, export):
        if p is not None:
            check_out(p, force)
    if out is not None and export is not None and str(out) == str(export):
        raise UsageError("--out and --export name the same file")

    t = read_table(table, ("attack", "certify"))
    view = partition_view(t, eps=eps, radius=radius, sigma=sigma, attack=attack, norm=nrm, name=str(table))

    part = partition_frame(view)
    summary = split_summary(part)
    config = {"table": str(table), "eps": view.eps, "norm": view.norm, "kind": t.kind, "attacks": list(view.attacks),
              "sigma": sigma, "out": out, "export_split": split, "export": export}
    if out is not None:
        prov = provenance(data=t.meta.get("data"), command=argv())
        prov["models"] = t.meta.get("models") or []
        write_table(part, out, "partition", config=config, prov=prov)
    if export is not None:
        from pathlib import Path

        from robcli.utils.fsio import atomic_write_bytes

        ids = part.loc[part["split"] == split, "idx"].sort_values()
        p = Path(export)
        p.parent.mkdir(parents=True, exist_ok=True)
        from robcli.data.indices import header_line

        text = header_line(t.meta.get("data")) + "".join(f"{int(i)}\n" for i in ids)
        atomic_write_bytes(p, text.encode())
        if not quiet:
            typer.echo(f"wrote {len(ids)} {split} indices to {p}", err=True)
    if not quiet or fmt != "text":
        title = f"{view.model} | {view.norm} eps={view.eps:g} | {', '.join(view.attacks)} | n={len(part)}"
        typer.echo(render_partition_summary(summary, title, fmt))
