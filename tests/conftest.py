"""Shared fixtures and checks: fast, offline, CPU-only.

``cli(*args)`` runs one robcli command line in-process through the console-script entry point named in
pyproject.toml (``robcli = "robcli.cli.main:main"``), so usage errors print and exit exactly as for a user
(one ``robcli: error: ...`` line on stderr, exit 2). ``one_line_error(result, *words)`` checks that.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def entry_point():
    """The object the ``robcli`` console script calls (``[project.scripts]`` in pyproject.toml)."""
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["robcli"]
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def invoke_cli(*args, input=None, env=None):
    """``robcli ARGS...`` in this process: the entry point with ``sys.argv`` set, its ``sys.exit`` code caught,
    stdout/stderr captured by typer's CliRunner -> a ``typer.testing.Result``."""
    from typer.testing import CliRunner, Result

    runner = CliRunner()
    main = entry_point()
    argv = ["robcli", *(str(a) for a in args)]
    exit_code, exception, exc_info = 0, None, None
    with runner.isolation(input=input, env=env) as (stdout, stderr, output):
        saved, sys.argv = sys.argv, argv
        try:
            main()
        except SystemExit as e:
            code = 0 if e.code is None else e.code
            if not isinstance(code, int):
                sys.stdout.write(f"{code}\n")
                code = 1
            exit_code, exception = code, (e if code else None)
            exc_info = sys.exc_info() if code else None
        except Exception as e:  # an uncaught error: exit 1, kept for the test's message (like CliRunner.invoke)
            exit_code, exception, exc_info = 1, e, sys.exc_info()
        finally:
            sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
            out, err, both = stdout.getvalue(), stderr.getvalue(), output.getvalue()
    return Result(runner=runner, stdout_bytes=out, stderr_bytes=err, output_bytes=both, return_value=None,
                  exit_code=exit_code, exception=exception, exc_info=exc_info)


def check_one_line_error(result, *words) -> str:
    """Exit 2 and all the output one ``robcli: error:`` line (on stderr) holding every one of ``words``;
    returns that line."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robcli: error:"), result.output
    assert lines[0] in result.stderr, result.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def cli():
    """Invoke robcli in-process: ``cli("attack", "--model", ...)`` -> click Result (session-scoped, so that
    module-scoped fixtures can build their tables with it)."""
    return invoke_cli


@pytest.fixture(scope="session")
def one_line_error():
    """``one_line_error(result, *words)``: see :func:`check_one_line_error`."""
    return check_one_line_error
