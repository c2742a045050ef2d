"""`robcli run RECIPE.toml` (placeholder until the runner lands)."""

from __future__ import annotations

import typer

from robcli.cli.common import fail


def run(recipe: str = typer.Argument(..., help="Recipe TOML file.")) -> None:
    fail("'robcli run' is not yet available")
