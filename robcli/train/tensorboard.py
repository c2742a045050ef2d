"""``finetune --tensorboard DIR``: each epoch's ``train_log`` row as TensorBoard scalars, to watch a run live.

One scalar per numeric column of the row (``loss``, ``train_nat_acc``, ``val_nat_acc``, ``val_robust_acc``,
``lr``, the loss's own terms, ...), tagged with the column's name, at step = epoch; booleans (``collapsed``) as
0/1. The writer is flushed after every epoch. TensorBoard is an optional extra (``pip install
'robcli[tensorboard]'``); torch's :class:`torch.utils.tensorboard.SummaryWriter` writes the event files.
"""

from __future__ import annotations

import math
from pathlib import Path

from robcli.errors import UsageError

INSTALL_HINT = "pip install 'robcli[tensorboard]' (or pip install tensorboard)"


def open_writer(logdir: str | Path, *, first_epoch: int = 1):
    """A SummaryWriter on ``logdir``. ``first_epoch`` > 1 (a resumed run): events of that epoch on, left by an
    earlier attempt in the same folder, are dropped when TensorBoard reads it (``purge_step``), so every epoch
    is shown once, with the values the run kept.

    Raises:
        UsageError: the tensorboard package is not installed, or ``logdir`` is a file.
    """
    p = Path(logdir)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--tensorboard {logdir}: exists and is not a folder")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}") from None
    return SummaryWriter(log_dir=str(p), purge_step=first_epoch if first_epoch > 1 else None)


def check_available(logdir: str | Path) -> None:
    """Raise :class:`UsageError` now (before anything is written) when tensorboard is not installed or
    ``logdir`` is a file."""
    import importlib.util

    p = Path(logdir)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--tensorboard {logdir}: exists and is not a folder")

    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except ValueError:  # a module object without a spec (e.g. blocked in sys.modules)
        found = False
    if not found:
        raise UsageError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}")


def scalars(row: dict) -> dict[str, float]:
    """The numeric fields of a train_log row (booleans as 0/1; ``epoch`` itself is the step, not a scalar)."""
    out = {}
    for k, v in row.items():
        if k == "epoch" or v is None or isinstance(v, str):
            continue
        if isinstance(v, bool):
            v = float(v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def write_epoch(writer, row: dict) -> None:
    """Add ``row``'s scalars at step ``row["epoch"]`` and flush, so a running TensorBoard shows it at once."""
    step = int(row["epoch"])
    for k, v in scalars(row).items():
        writer.add_scalar(k, v, global_step=step)
    writer.flush()
