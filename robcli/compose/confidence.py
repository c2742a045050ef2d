"""Softmax-response confidences by running the robust model (when its tables do not carry them).

``clean_conf`` = max_c softmax(f(x))_c. ``min_conf`` = the lowest max-softmax our PGD finds on B_2eps(x)
(objective: minimise max_c softmax, i.e. push the model to abstain), combined with the APGD-conf
(eq. 21) point when the attack table has one. Attacks give upper bounds on the true minimum, so robust
selection from these numbers is optimistic in the same way as every empirical robustness number.
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
    sd = load_split(name, sp, data_dir=data_dir)
    idx = view.df.index.to_numpy()
    sd = sd.select(subset=idx.tolist())
    order = torch.argsort(sd.idx)
    x, y = sd.get(order)
    if not np.array_equal(sd.idx[order].numpy(), idx) or not np.array_equal(y.numpy(), view.df["label"].to_numpy()):
        raise DataError(f"{view.source}: labels or indices disagree with {name}/{sp}: a different data set?")
    return x, y, sd.info


def softmax_confidences(model: Any, x, *, eps: float, norm: str, steps: int = 50, restarts: int = 1,
                        batch: int = 256, seed: int = 0, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per-example (clean max-softmax, lowest max-softmax found on B_eps(x)); pass eps = 2 * eps for eq. 16."""
    import torch

    from robcli.attacks.pgd import pgd

    model = model.to(device).eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def objective(logits, _x):
        return -torch.softmax(logits, 1).amax(1)

    clean, low = [], []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].to(device)
        with torch.no_grad():
            c = torch.softmax(model(xb), 1).amax(1)
        best = c.clone()
        for r in range(max(1, restarts) + 1):
            xa = pgd(model, xb, objective, eps=eps, norm=norm, steps=steps, rand_init=r > 0, generator=gen)
            with torch.no_grad():
                best = torch.minimum(best, torch.softmax(model(xa), 1).amax(1))
        clean.append(c.cpu())
        low.append(best.cpu())
    return torch.cat(clean).numpy(), torch.cat(low).numpy()
