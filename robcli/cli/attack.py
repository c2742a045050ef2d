"""`robcli attack` (being written)."""

from __future__ import annotations

from typing import Optional

import typer

from robcli.cli.common import fail


def attack(args: Optional[list[str]] = typer.Argument(None, hidden=True)) -> None:
    """Not yet available."""
    fail("'robcli attack' is not yet available in this version")
