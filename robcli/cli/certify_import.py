"""`robcli certify --import LOG`: a Cohen et al. certification log in, a certify table out (nothing certified here).

Kept apart from :mod:`robcli.cli.certify` so that the command's body only dispatches here. The work is
:func:`robcli.tables.cohen.import_cohen_log`; this module checks the flags and prints the summary.
"""

from __future__ import annotations

# certify's parameters that describe a certification run this command would do; an import does none
RUN_ONLY = ("model", "mode", "batch", "n_ex", "skip", "shard", "arch", "num_classes", "input_shape", "data_dir",
            "image_size", "seed", "device", "precision", "compile_", "chunk", "resume", "sequential", "radius",
            "against", "radius_tol", "method", "lipschitz", "eps", "norm", "mix", "scale_h")


def import_log(log: str, *, out: str, sigma: list[str] | None, n: int, n0: int, alpha: float,
               dataset: str | None, split: str, force: bool, quiet: bool) -> None:
    """Validate the flags of ``certify --import``, write the certify table ``out`` and print its summary.

    ``sigma``, ``n``, ``n0``, ``alpha``: the parameters the log was certified with (a log does not record them);
    ``dataset``/``split``: the data it ran on, recorded as provenance only.

    Raises:
        UsageError: a flag of a certification run (--model, --batch, --resume, ...), no or several --sigma, an
            unknown data set, an --out that is not .parquet, or an existing --out without --force.
        TableError: a malformed log (one line, naming the line).
    """
    from pathlib import Path

    from typer._click.globals import get_current_context  # typer vendors click

    from robcli.cli.common import argv, check_out, console, given, refuse_given
    from robcli.errors import UsageError
    from robcli.utils.parse import parse_float_expr

    ctx = get_current_context()
    refuse_given(ctx, RUN_ONLY, "to --import (it reads a finished log; nothing is certified)")
    if not sigma:
        raise UsageError(f"--import {log}: give the --sigma it was certified with (a Cohen-format log does not "
                         "record it), and --N, --N0, --alpha when not 100000, 100, 0.001")
    if len(sigma) > 1:
        raise UsageError(f"--import takes one log of one sigma; {len(sigma)} --sigma values given")
    s = parse_float_expr(sigma[0], "--sigma")
    if dataset is not None:
        from robcli.names import DATASETS

        if dataset not in DATASETS:
            raise UsageError(f"--dataset {dataset!r} is not a registered data set ({', '.join(DATASETS)})")
    out_p = Path(out)
    if out_p.suffix != ".parquet":
        raise UsageError(f"--out {out}: give a file name ending in .parquet")
    check_out(out_p, force)

    from robcli.certify.smoothing import summary_text
    from robcli.tables.cohen import import_cohen_log
    from robcli.tables.io import read_table

    split_given = bool(given(ctx, "split"))
    import_cohen_log(log, out_p, sigma=s, N=n, N0=n0, alpha=alpha, dataset=dataset,
                     split=split if (dataset is not None or split_given) else None, command=argv())
    if not quiet:
        df = read_table(out_p, "certify").df
        console().print(summary_text(df) + f"\nimported {log} -> {out_p} ({len(df)} rows; sigma={s:g}, N={n}, "
                        f"N0={n0}, alpha={alpha:g} as declared)", highlight=False, soft_wrap=True)


def require_model_and_dataset(model: str | None, dataset: str | None) -> None:
    """Without --import, certify needs --model and --dataset (optional only because --import takes neither).

    Raises:
        UsageError: the one(s) missing, named.
    """
    from robcli.errors import UsageError

    missing = [f for f, v in (("--model", model), ("--dataset", dataset)) if v is None]
    if missing:
        raise UsageError(f"missing option {' and '.join(missing)} (or --import LOG to read a Cohen-format log)")
