"""Shared option types, error handling and console helpers for the CLI (no torch at import time)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from typing import Annotated, Optional

import typer

from robcli.errors import RobcliError

# argv of the command being run (set by main() or the recipe runner); recorded in every output
CURRENT_ARGV: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("robcli_argv", default=None)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Data set: gaussians, digits, cifar10, cifar100, mnist, svhn, imagefolder.")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="Folder holding on-disk data sets.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download a torchvision data set into --data-dir.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", help="Side length for imagefolder images (default 64).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Run directory, checkpoint file, TorchScript/.pt2 file, or registered architecture.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a bare checkpoint file.")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classes of a TorchScript/.pt2 model (default: read from the model, checked against the data set).")]
InputShapeOpt = Annotated[Optional[str], typer.Option("--input-shape", help="Input shape C,H,W of a TorchScript/.pt2 model (default: read from the model or the data set).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, or on CUDA bf16/fp16: every forward pass under autocast in that dtype (recorded in the table; the results are for the model as run in that precision). Refused on CPU.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
NormOpt = Annotated[str, typer.Option("--norm", help="Threat model norm: Linf or L2.")]
EpsListOpt = Annotated[Optional[list[str]], typer.Option("--eps", help="Radius, e.g. 8/255 or 0.031; repeatable.")]
SplitOpt = Annotated[str, typer.Option("--split", help="train, val (carved from train) or test.")]
NExOpt = Annotated[Optional[int], typer.Option("--n-ex", help="How many examples (after --skip).")]
SkipOpt = Annotated[int, typer.Option("--skip", help="Skip the first N examples of the split.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue a killed run where it stopped.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    msg = " ".join(str(message).split())
    typer.echo(f"robcli: error: {msg}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn library errors into one-line messages; keep tracebacks for real bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RobcliError as e:
            if getattr(e, "echo", False):  # another rank of this job printed it (robcli.distributed._echo)
                raise typer.Exit(e.exit_code) from None
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            typer.echo("robcli: interrupted (use --resume to continue)", err=True)
            raise typer.Exit(130) from None
        except FileNotFoundError as e:
            fail(f"file not found: {e.filename or e}")
        except PermissionError as e:
            fail(f"permission denied: {e.filename or e}")

    return wrapper


def _flag(ctx, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name:
            longs = [o for o in p.opts if o.startswith("--")]
            return (longs or p.opts)[0]
    raise KeyError(name)  # a bug: no such parameter


def given(ctx, *names: str) -> list[str]:
    """The flags (``--name``) among the parameters ``names`` that the user gave (command line or recipe).

    Decided by click's parameter source, never by comparing a value with a copied default: an explicit
    ``--batch 256`` counts as given even when 256 is the default.
    """
    from typer._click.core import ParameterSource  # typer vendors click

    out = []
    for n in names:
        src = ctx.get_parameter_source(n)
        if src is not None and src not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            out.append(_flag(ctx, n))
    return out


def refuse_given(ctx, names, why: str) -> None:
    """Raise a one-line UsageError when the user gave any of the parameters ``names``: ``--a, --b <why>``."""
    from robcli.errors import UsageError

    flags = given(ctx, *names)
    if flags:
        verb = "does" if len(flags) == 1 else "do"
        raise UsageError(f"{', '.join(flags)} {verb} not apply {why}")


@contextlib.contextmanager
def naming_nonfinite(model_name: str | None, partial=None, *, core: str | None = None, robust: str | None = None):
    """Name the model in a :class:`~robcli.errors.NonFiniteOutput` raised in the block, and leave no partial
    table behind: ``partial`` (a resume file this run writes) is removed when this run created it (a partial
    table that existed before, from a run being resumed, is the user's and stays).

    ``core``/``robust``: the paths of a mixture's members, named when the error is about member g or h
    (``model_name``, the mixture itself, is then mentioned too when given).
    """
    from pathlib import Path

    from robcli.errors import NonFiniteOutput

    existed = partial is not None and Path(partial).exists()
    try:
        yield
    except NonFiniteOutput as e:
        if partial is not None and not existed and Path(partial).exists():
            Path(partial).unlink()
        if getattr(e, "echo", False):  # another rank's error: that rank names the model and prints it
            raise
        member = {"g": ("core", core), "h": ("robust", robust)}.get(e.member or "")
        of = f" of the mixture {model_name}" if model_name else ""
        if member is not None and member[1] is not None:
            raise NonFiniteOutput(e.detail, f"{member[0]} model {member[1]} (member {e.member}{of})", e.member) from None
        if member is not None and model_name is not None:
            raise NonFiniteOutput(e.detail, f"the {member[0]} model {e.member}{of}", e.member) from None
        if model_name is not None and e.who == "the model":
            raise e.named(model_name) from None
        raise


def argv() -> list[str]:
    a = CURRENT_ARGV.get()
    return list(a) if a is not None else list(sys.argv[1:])


def console(stderr: bool = True):
    """A rich console on stderr (or stdout). Not on a terminal (a pipe, a log file, a notebook's captured output)
    and without $COLUMNS, tables are laid out 120 columns wide instead of rich's 80, so the summary tables keep
    their model names readable."""
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = not getattr(stream, "isatty", lambda: False)() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=120 if wide else None)


def progress(quiet: bool = False):
    """A rich Progress on stderr (disabled when quiet or not a terminal-friendly context)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class _LazyProgress(Progress):
        """Starts its display with the first task: an error raised before any work (bad input found while
        loading) then leaves stderr holding only the one-line message, not a blank line from rich."""

        def start(self) -> None:
            if self.tasks:
                super().start()

        def add_task(self, *args, **kwargs):
            task = super().add_task(*args, **kwargs)
            if not self.live.is_started:
                super().start()
            return task

        def stop(self) -> None:
            if self.live.is_started:
                super().stop()

        def __exit__(self, exc_type, exc, tb):
            # a user error found mid-way (e.g. NaN logits met by an attack) ends in ONE line on stderr:
            # the bar is cleared instead of left above it (an interrupt keeps it: it shows how far it got)
            if exc_type is not None and issubclass(exc_type, RobcliError):
                self.live.transient = True
            return super().__exit__(exc_type, exc, tb)

    return _LazyProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console(True), disable=quiet, transient=False,
    )


class ProgressCallback:
    """Adapts library progress callbacks ``cb(done, total, desc)`` to a rich Progress."""

    def __init__(self, prog):
        self.prog = prog
        self.tasks: dict[str, int] = {}

    def __call__(self, done: int, total: int, desc: str = "working") -> None:
        if desc not in self.tasks:
            self.tasks[desc] = self.prog.add_task(desc, total=total)
        self.prog.update(self.tasks[desc], completed=done, total=total)


def check_out(out, force: bool, resume: bool | None = None) -> None:
    """Refuse to overwrite an existing output unless --force (or --resume continues it).

    ``resume=None``: the command has no --resume, so the message does not offer it.
    """
    from pathlib import Path

    p = Path(out)
    if p.exists() and not force and not resume:
        hint = " or --resume to continue" if resume is not None else ""
        fail(f"{p} exists; pass --force to overwrite{hint}")


def job_world(shard: str | None):
    """Where this process stands in its job: ``--shard I/K``, torchrun/srun ranks, a SLURM array task or alone."""
    from robcli.distributed import detect
    from robcli.utils.parse import parse_shard

    return detect(shard=parse_shard(shard))


def parts_left_text(world, parts, out) -> str:
    """What a shard or array task that leaves its parts tells the user."""
    who = f"shard {world.rank}/{world.size}" if world.launcher == "shard" else f"array task {world.rank}/{world.size}"
    return (f"wrote the parts of {who} to {parts}; when every one is done: robcli merge {parts} --out {out} "
            "(or the same command without --shard, with --resume)")
