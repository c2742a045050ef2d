"""`robcli list WHAT`: registered data sets, models, losses, attacks."""

from __future__ import annotations

import typer

from robcli.cli.common import fail, handle_errors


@handle_errors
def list_cmd(what: str = typer.Argument(..., help="datasets, models, losses or attacks")) -> None:
    if what == "datasets":
        from robcli.data.registry import dataset_entry, list_datasets

        def fmt(d: dict) -> str:
            def v(x):
                if isinstance(x, (tuple, list)):
                    return ",".join(f"{m:g}" for m in x) if x else "none"
                return f"{x:g}" if isinstance(x, float) else str(x)

            return ", ".join(f"--{k.replace('_', '-')} {v(x)}" for k, x in d.items())

        for n in list_datasets():
            entry = dataset_entry(n)
            typer.echo(f"{n}\t{entry.description}")
            groups: dict[int, list] = {}  # finetune's defaults for the flags not given, one line per entry
            for arch, rec in entry.train_defaults.items():
                groups.setdefault(id(rec), [rec]).append("any other architecture" if arch == "*" else arch)
            for rec, *archs in groups.values():
                typer.echo(f"\tfinetune defaults ({', '.join(archs)}): from scratch {fmt(rec.scratch)}; "
                           f"with --init {fmt(rec.finetune)}")
    elif what == "models":
        from robcli.models.registry import list_models, model_entry

        for n in list_models():
            typer.echo(f"{n}\t{model_entry(n).description}")
    elif what == "losses":
        from robcli.losses import LOSSES, _ensure_registered

        _ensure_registered()
        for n in sorted(LOSSES):
            typer.echo(n)
    elif what == "attacks":
        from robcli.attacks import ATTACKS

        for n in sorted(ATTACKS):
            typer.echo(n)
    else:
        fail(f"unknown list {what!r}; choose datasets, models, losses or attacks")
