"""Softmax-response confidences: the lowest max-softmax found on a ball, from attack tables or the model.

``clean_conf`` = max_c softmax(f(x))_c. The lowest max-softmax on B_r(x) (r = eps decides eq. 16's selector,
r = 2*eps its robust selection) is the minimum over x itself, every attack point at radius r the attack table
has (APGD-conf, eq. 21, and any other attack: :func:`min_conf_over_rows`) and, when the model is given, every
iterate of our confidence-minimising PGD (:func:`ball_min_confidence`, also the inner attack of an exported
eq. 16 composite). A point where the prediction flipped caps the estimate at 0.5 (the two top classes tie on
the segment to it). Attacks give upper bounds on the true minimum, so selection from these numbers is
optimistic in the same way as every empirical robustness number.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def load_view_examples(view, data_dir: str | None = None, dataset: str | None = None, split: str | None = None):
    """Inputs and labels of the examples of ``view`` (sorted by idx), from the data set named in its table.

    Raises:
        DataError: the data set is not named (pass ``dataset``), or labels disagree with the table.
    """
    import torch

    from robcli.data.registry import load_split
    from robcli.errors import DataError

    name = dataset or view.data.get("dataset")
    sp = split or view.data.get("split") or "test"
    if not name:
        raise DataError(f"{view.source} does not record its data set; pass --dataset")
    sd = load_split(name, sp, data_dir=data_dir, image_size=view.data.get("image_size"))
    idx = view.df.index.to_numpy()
    sd = sd.select(subset=idx.tolist())
    order = torch.argsort(sd.idx)
    x, y = sd.get(order)
    if not np.array_equal(sd.idx[order].numpy(), idx) or not np.array_equal(y.numpy(), view.df["label"].to_numpy()):
        raise DataError(f"{view.source}: labels or indices disagree with {name}/{sp}: a different data set?")
    return x, y, sd.info


def adv_max_softmax(rows) -> np.ndarray:
    """Max softmax at each attack point of an attack table's rows.

    ``robcli attack`` records, at the adversarial point x', ``adv_conf_other`` = max_{c != y} softmax_c(x')
    and ``adv_margin`` = z_y(x') - max_{c != y} z_c(x') (logits; y = the clean prediction). Hence
    max_c softmax_c(x') = adv_conf_other * exp(max(adv_margin, 0)), computed in log space. An explicit
    ``adv_conf`` column (max softmax at x') is used as is. Where ``adv_conf_other`` underflowed to 0 the
    prediction kept a huge margin and the max softmax is 1 to double precision. Rows without confidences
    (NaN) give 1.0 (no information). This is the value at x'; for the ball's lowest max-softmax use
    :func:`min_conf_bound`.
    """
    if "adv_conf" in rows.columns:
        val = rows["adv_conf"].to_numpy(float)
    elif "adv_conf_other" in rows.columns and "adv_margin" in rows.columns:
        other = rows["adv_conf_other"].to_numpy(float)
        m = np.maximum(rows["adv_margin"].to_numpy(float), 0.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            val = np.exp(np.log(other) + m)
        val = np.where(other > 0, val, 1.0)
    else:
        val = np.ones(len(rows))
    val = np.where(np.isnan(val), 1.0, val)
    return np.clip(val, 0.0, 1.0)


def min_conf_bound(rows) -> np.ndarray:
    """Per row: an upper bound on the lowest max-softmax of the ball that the row's attack point proves.

    Flipped points (``adv_margin < 0``, or ``robust`` False): the prediction changes between x (class y on
    top) and x' (another class on top), so on the segment x -> x', which lies in the (convex) ball, two
    classes tie on top somewhere and the max softmax there is at most 0.5. The bound is then
    min(max softmax at x', 0.5): the other class's high confidence at x' is not the lowest max-softmax on
    the ball. Unflipped points give the max softmax at x'.
    """
    val = adv_max_softmax(rows)
    flipped = np.zeros(len(rows), dtype=bool)
    if "adv_margin" in rows.columns:
        flipped |= rows["adv_margin"].to_numpy(float) < 0
    if "robust" in rows.columns:
        flipped |= ~rows["robust"].to_numpy(bool)
    return np.where(flipped, np.minimum(val, 0.5), val)


def min_conf_over_rows(rows, index) -> np.ndarray:
    """Per example of ``index``: the minimum of :func:`min_conf_bound` over all its rows (1.0 where none)."""
    import pandas as pd

    if not len(rows):
        return np.ones(len(index))
    v = pd.Series(min_conf_bound(rows), index=rows["idx"].to_numpy()).groupby(level=0).min()
    return v.reindex(index).fillna(1.0).to_numpy(float)


def shared_offset(gen, x, eps: float, norm: str):
    """One seeded random offset of the eps-ball, shared by every example of ``x`` (shape (1, ...)).

    Shared offsets keep an attack's decision at x independent of the other inputs of the batch.
    """
    import torch

    shape = (1, *x.shape[1:])
    if norm == "Linf":
        return (2 * torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
    g = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
    r_ = torch.rand((), generator=gen, device=x.device, dtype=x.dtype)
    return g / g.flatten().norm().clamp_min(1e-12) * eps * r_


def ball_min_confidence(model: Any, x, *, eps: float, norm: str, steps: int = 20, restarts: int = 1, seed: int = 0):
    """Per example of ``x``: (max softmax at x, lowest max softmax found on B_eps(x) intersected with [0,1]).

    PGD minimising max_c log softmax(f(x'))_c (the top class recomputed at every step). ``restarts`` starts: the
    first at x, the others at seeded offsets shared by every example (:func:`shared_offset`, generator seeded
    with ``seed`` on each call), so an example's value does not depend on the batch it sits in. Every point PGD
    evaluates counts (x, every iterate, the last point); a point whose prediction differs from the one at x
    counts as at most 0.5 (the top two classes tie on the segment to it). Returns detached tensors.
    """
    import torch

    from robcli.attacks.pgd import pgd
    from robcli.utils.seeding import make_generator

    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError("the confidence attack needs steps >= 1 and restarts >= 1")
    if torch.is_inference_mode_enabled():  # the attack needs autograd
        with torch.inference_mode(False):
            return ball_min_confidence(model, x.clone(), eps=eps, norm=norm, steps=steps, restarts=restarts, seed=seed)
    xd = x.detach()
    with torch.no_grad():
        p0 = torch.softmax(model(xd), 1)
    clean, y0 = p0.amax(1), p0.argmax(1)
    low = clean.clone()

    def record(logits):
        with torch.no_grad():
            p = torch.softmax(logits.detach(), 1)
            v = torch.where(p.argmax(1) != y0, p.amax(1).clamp(max=0.5), p.amax(1))
            torch.minimum(low, v, out=low)

    def objective(logits, _x):  # maximised by pgd: minus the top class's log-probability
        record(logits)
        return -torch.log_softmax(logits, 1).amax(1)

    if eps > 0:
        gen = make_generator(seed, xd.device)
        for r in range(int(restarts)):
            start = xd if r == 0 else (xd + shared_offset(gen, xd, eps, norm)).clamp(0, 1)
            xa = pgd(model, xd, objective, eps=eps, norm=norm, steps=int(steps), x_init=start)
            with torch.no_grad():
                record(model(xa))
    return clean, low


def softmax_confidences(model: Any, x, *, eps: float, norm: str, steps: int = 50, restarts: int = 2,
                        batch: int = 256, seed: int = 0, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per-example (clean max-softmax, lowest max-softmax found on B_eps(x)) by :func:`ball_min_confidence`,
    in batches (the values do not depend on the batching)."""
    import torch

    model = model.to(device).eval()
    clean, low = [], []
    for i in range(0, x.shape[0], batch):
        c, lo = ball_min_confidence(model, x[i:i + batch].to(device), eps=eps, norm=norm, steps=steps,
                                    restarts=restarts, seed=seed)
        clean.append(c.cpu())
        low.append(lo.cpu())
    return torch.cat(clean).numpy(), torch.cat(low).numpy()
