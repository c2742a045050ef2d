"""``robcli``: the Typer app. Commands are registered explicitly; heavy imports happen inside commands."""

from __future__ import annotations

import sys

import typer

from robcli import __version__
from robcli.cli.completion import CompletingGroup

app = typer.Typer(
    name="robcli",
    help="Make image classifiers robust without losing accuracy, and prove how robust they are.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; values from robcli.names (robcli.cli.completion)
    cls=CompletingGroup,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"robcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """robcli: finetune, attack, certify, partition, compose, report; `robcli run RECIPE.toml` runs a pipeline."""
    # `robcli run` runs a recipe's steps through this same entry point (handed down, so cli.run does not import main)
    ctx.obj = {"invoke": invoke}


def _register() -> None:
    from robcli.cli import attack, certify, compose, finetune, listing, merge, partition, report, run

    app.command("finetune", help="Train or fine-tune a model (std, trades, era, dga, noise, cra; mixnet: the adaptive mixing network).")(finetune.finetune)
    app.command("attack", help="Empirical robustness per example (PGD, APGD, AutoAttack, APGD-conf, grid).")(attack.attack)
    app.command("certify", help="Certified radii per example: randomized smoothing (Cohen et al.) or, --method mix-..., of a mixture.")(certify.certify)
    app.command("partition", help="The four robustness/accuracy splits of a data set.")(partition.partition)
    app.command("compose", help="Robust model + selector + core model compositions; --mix / --mix-sweep: mixtures of models.")(compose.compose)
    app.command("report", help="Paper-style tables and plots from robcli tables.")(report.report)
    app.command("merge", help="Join the parts of shards or SLURM array tasks (OUT.parts/) into one table.")(merge.merge)
    app.command("run", help="Run a recipe (TOML): an ordered list of robcli commands.")(run.run)
    app.command("list", help="List registered data sets, models, losses or attacks.")(listing.list_cmd)
    # the removed `robcli mix` group: one line naming the new spelling (robcli/cli/mix.py)
    from robcli.cli import mix

    app.command("mix", hidden=True, add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(mix.removed)


_register()


# Commands whose runs are long enough for a scheduler to stop them (recipes run them too).
LONG_RUNS = frozenset({"finetune", "attack", "certify", "run"})
SIGTERM_EXIT = 128 + 15
_sigterm = {"count": 0, "armed": 0}  # SIGTERMs received; count at the time the outermost handler was installed


def _raise_interrupt(signum, frame):
    """SIGTERM handler: the first signal raises KeyboardInterrupt, so the command's Ctrl-C path runs (finetune
    keeps its last completed epoch in resume_state.pt, attack/certify write the rows done so far, and
    `--resume` continues); later ones are ignored so that this cleanup is not cut short."""
    _sigterm["count"] += 1
    if _sigterm["count"] == _sigterm["armed"] + 1:
        raise KeyboardInterrupt


class sigterm_as_interrupt:
    """Within the block, SIGTERM (a cluster scheduler stopping the job) acts like Ctrl-C.

    Installed only in the main thread (Python allows signal handlers nowhere else); the previous handler is
    restored on exit. Nested blocks (a recipe's steps) share the outer one's handler. ``received`` tells
    whether a SIGTERM arrived during the block.
    """

    def __init__(self, enabled: bool = True):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous = None
        self.before = 0

    def __enter__(self):
        import signal

        self.before = _sigterm["count"]
        if self.enabled:
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            if self.previous is not _raise_interrupt:
                _sigterm["armed"] = self.before
        return self

    @property
    def received(self) -> bool:
        return _sigterm["count"] > self.before

    def __exit__(self, *exc):
        import signal

        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
        return False


def invoke(argv: list[str]) -> int:
    """Run one robcli command line in this process; return its exit code (usage errors: one line, code 2).

    For the commands in :data:`LONG_RUNS`, SIGTERM is treated like Ctrl-C (:class:`sigterm_as_interrupt`)
    and the exit code is then 143 (128 + SIGTERM).
    """
    from typer._click import exceptions as click_exc  # typer vendors click

    from robcli.cli.common import CURRENT_ARGV

    token = CURRENT_ARGV.set(list(argv))
    guard = sigterm_as_interrupt(enabled=bool(argv) and argv[0] in LONG_RUNS)
    try:
        with guard:
            rv = app(args=list(argv), prog_name="robcli", standalone_mode=False)
        return SIGTERM_EXIT if guard.received else (rv if isinstance(rv, int) else 0)
    except click_exc.NoArgsIsHelpError as e:
        return e.exit_code
    except click_exc.ClickException as e:
        msg = " ".join(e.format_message().split())
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "robcli"
        sys.stderr.write(f"robcli: error: {msg} (see '{where} --help')\n")
        return e.exit_code
    except typer.Abort:
        sys.stderr.write("robcli: aborted\n")
        return SIGTERM_EXIT if guard.received else 1
    finally:
        CURRENT_ARGV.reset(token)


def main() -> None:
    sys.exit(invoke(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
