"""`robcli merge`: join the parts that shards or SLURM array tasks left in OUT.parts/ into one table."""

from __future__ import annotations

from typing import Annotated

import typer

from robcli.cli.common import ForceOpt, QuietOpt, handle_errors


@handle_errors
def merge(
    parts: Annotated[str, typer.Argument(help="The parts folder (OUT.parts/) that attack/certify --shard or a job array wrote.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The table to write (.parquet).")],
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check that the parts hold every planned chunk exactly once, all made with one configuration, and write the
    table atomically (then remove the parts). A missing, duplicated or mismatched part is refused; nothing is
    written then."""
    from robcli.cli.common import console
    from robcli.tables.run import TableRun

    run = TableRun.from_parts(parts, out, force=force)
    df = run.finish()
    if not quiet:
        console().print(f"merged {len(run.chunks)} parts of a {run.kind} table: wrote {out} ({len(df)} rows)",
                        highlight=False, soft_wrap=True)
