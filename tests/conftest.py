"""Shared fixtures: fast, offline, CPU-only."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke robcli in-process: ``cli("attack", "--model", ...)`` -> click Result."""
    from robcli.cli.common import CURRENT_ARGV
    from robcli.cli.main import app

    def _run(*args):
        argv = [str(a) for a in args]
        token = CURRENT_ARGV.set(argv)
        try:
            return runner.invoke(app, argv)
        finally:
            CURRENT_ARGV.reset(token)

    return _run
