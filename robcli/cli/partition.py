"""`robcli partition` (not yet available)."""

from __future__ import annotations

from typing import Optional

import typer

from robcli.cli.common import fail


def partition(args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Not yet available."""
    fail("'robcli partition' is not yet available in this version")
