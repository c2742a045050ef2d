"""Refusing models whose outputs are not finite (NaN or +-inf logits).

Everything robcli computes from logits — ``argmax`` predictions, margins, softmax confidences, the votes of
randomized smoothing, a mixture's probabilities — is meaningless once a logit is NaN or infinite (``argmax``
of a row holding a NaN returns the NaN's index: a "prediction" that is an artefact). So:

* on clean inputs every command checks the logits of every example before it attacks, certifies or
  trains anything (one forward pass per example: negligible next to an attack or N = 100,000 noisy votes),
  and refuses the model with a one-line :class:`~robcli.errors.NonFiniteOutput` naming the examples;
* during attacks, noisy votes and validation, a :class:`FiniteWatch` sees every forward pass's output and
  accumulates ON THE DEVICE whether any value was non-finite (``isfinite().all()`` and an OR: no host sync);
  the caller asks once per block of work (an attack batch at one eps, a group of certified examples), at a
  point where it synchronizes anyway, and raises when it tripped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from robcli.errors import NonFiniteOutput


class FiniteWatch:
    """Remembers whether any tensor it saw held a non-finite value; seeing costs no host synchronization."""

    def __init__(self) -> None:
        self._flag: torch.Tensor | None = None

    def see(self, t: torch.Tensor) -> torch.Tensor:
        """Record ``t`` (returned unchanged)."""
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = ~torch.isfinite(t.detach()).all()
            self._flag = bad if self._flag is None else self._flag | bad
        return t

    def tripped(self) -> bool:
        """Whether a non-finite value was seen since the last :meth:`reset` (one host sync)."""
        return self._flag is not None and bool(self._flag)

    def reset(self) -> None:
        self._flag = None


class Watched(nn.Module):
    """``net(x)`` with its output shown to ``watch``; everything else (eval mode, parameters) is ``net``'s."""

    def __init__(self, net: nn.Module, watch: FiniteWatch):
        super().__init__()
        self.net = net
        self.watch = watch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.watch.see(self.net(x))


@contextmanager
def watching(owner: nn.Module, *names: str) -> Iterator[dict[str, FiniteWatch]]:
    """Within the block, the submodules ``owner.<name>`` are :class:`Watched`; restored afterwards.

    Used on a mixture's members (``g``, ``h``): every forward pass of either, in any attack, is watched, and
    the watch tells which member produced the non-finite value. Hooks registered on the members' own
    submodules (feature taps) keep working, since the members themselves still run.
    """
    old = {n: getattr(owner, n) for n in names}
    watches = {n: FiniteWatch() for n in names}
    for n in names:
        setattr(owner, n, Watched(old[n], watches[n]))
    try:
        yield watches
    finally:
        for n in names:
            setattr(owner, n, old[n])


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Per row: whether any logit is NaN or infinite (bool, on the logits' device)."""
    return ~torch.isfinite(logits.detach()).all(1)


def describe(idx, limit: int = 5) -> str:
    """``"idx 3, 17, 40 and 2 more"``: example ids for a one-line message."""
    ids = [int(i) for i in idx]
    head = ", ".join(str(i) for i in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"idx {head}{more}"


def raise_if_tripped(watches: dict[str, FiniteWatch], detail: str) -> None:
    """Raise :class:`NonFiniteOutput` for the first watch (a mixture member ``g``/``h``) that tripped."""
    for name, w in watches.items():
        if w.tripped():
            raise NonFiniteOutput(detail, member=name)


def check_clean_logits(forward, inputs, idx, *, batch: int = 1000, device=None, rows=None,
                       what: str = "clean inputs", member: str | None = None) -> None:
    """Refuse a model with a non-finite logit on any of the given inputs (one forward pass each, no grad).

    Args:
        forward: inputs -> logits (B, K).
        inputs: a tensor (N, ...) or a :class:`robcli.data.SplitData` (read batch by batch).
        idx: the examples' ids, named in the message (of the ``rows`` when given).
        device: where to run (default: the inputs' device).
        rows: with a SplitData, only these row positions (e.g. one shard's).
        member: ``g``/``h`` when ``forward`` is a mixture's member (recorded in the error).

    Raises:
        NonFiniteOutput: listing the examples whose logits are not finite.
    """
    batch = max(1, int(batch))
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.long)
    n = len(inputs) if rows is None else int(rows.numel())
    bad = []
    with torch.no_grad():
        for s in range(0, n, batch):
            if isinstance(inputs, torch.Tensor):
                xb = inputs[s:s + batch] if rows is None else inputs[rows[s:s + batch]]
            else:
                xb = inputs.get(slice(s, s + batch) if rows is None else rows[s:s + batch])[0]
            if device is not None:
                xb = xb.to(device)
            out = forward(xb)
            if isinstance(out, torch.Tensor) and out.dim() == 2:
                bad.append(nonfinite_rows(out))
    if not bad:
        return
    mask = torch.cat(bad).cpu()  # the only host sync
    if bool(mask.any()):
        ids = [int(i) for i in torch.as_tensor(idx)[mask]]
        raise NonFiniteOutput(f"returned non-finite logits (NaN or inf) on {len(ids)} of {n} {what} ({describe(ids)}); "
                              "nothing was computed or written: fix the model's numerics (e.g. a log of 0, a "
                              "division by 0, an overflow) or leave those examples out", member=member)
