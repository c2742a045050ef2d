"""The entry point and shared CLI helpers (robcli/cli/main.py, robcli/cli/common.py): help, version, given flags,
the progress block on error, the existing --out message."""

import subprocess
import sys

import pytest


def test_help_lists_all_subcommands(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for c in ("finetune", "certify", "attack", "partition", "compose", "report", "run"):
        assert c in r.output


def test_help_does_not_import_torch():
    code = "import sys; from robcli.cli import main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and "robcli" in r.output


def test_given_is_decided_by_parameter_source_not_by_value():
    """An explicit flag equal to its default counts as given; an omitted one does not."""
    from typing import Annotated

    import typer
    from typer.testing import CliRunner

    from robcli.cli.common import given, handle_errors, refuse_given

    app = typer.Typer()
    seen = {}

    @app.command()
    @handle_errors
    def cmd(ctx: typer.Context, batch: Annotated[int, typer.Option("--batch", "--batch-size")] = 256,
            steps: Annotated[int, typer.Option("--steps")] = 10) -> None:
        seen["given"] = given(ctx, "batch", "steps")
        refuse_given(ctx, ["steps"], "here (a test)")

    r = CliRunner().invoke(app, ["--batch-size", "256"])
    assert r.exit_code == 0 and seen["given"] == ["--batch"]
    r = CliRunner().invoke(app, ["--steps", "10"])
    assert r.exit_code == 2 and "--steps does not apply here (a test)" in r.output


def test_error_inside_progress_leaves_only_the_message(capsys):
    """rich printed a blank line on stderr when a command failed before its first progress task."""
    from robcli.cli.common import progress

    with pytest.raises(ValueError, match="inside the progress block"):
        with progress(False):
            raise ValueError("inside the progress block")
    assert capsys.readouterr().err == ""
    with progress(False) as prog:
        t = prog.add_task("work", total=2)
        prog.update(t, completed=2)
    assert "work" in capsys.readouterr().err


def test_existing_out_message_offers_resume_only_where_it_exists(cli, tmp_path):
    table = tmp_path / "a.parquet"
    assert cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--n-ex", "4", "--steps", "2",
               "--eps", "0.05", "--out", table, "-q").exit_code == 0
    res = cli("attack", "--model", "tiny_mlp", "--dataset", "gaussians", "--eps", "0.05", "--out", table)
    assert res.exit_code == 2 and "--resume" in res.output
    res = cli("partition", table, "--out", table)
    assert res.exit_code == 2 and "--force" in res.output and "--resume" not in res.output
