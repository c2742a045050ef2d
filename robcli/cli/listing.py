"""`robcli list WHAT`: registered data sets, models, losses, attacks."""

from __future__ import annotations

import typer

from robcli.cli.common import fail, handle_errors


@handle_errors
def list_cmd(what: str = typer.Argument(..., help="datasets, models, losses or attacks")) -> None:
    if what == "datasets":
        from robcli.data.registry import DATASETS, list_datasets

        for n in list_datasets():
            typer.echo(f"{n}\t{DATASETS[n].description}")
    elif what == "models":
        from robcli.models.registry import _MODELS, list_models

        for n in list_models():
            typer.echo(f"{n}\t{_MODELS[n].description}")
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
