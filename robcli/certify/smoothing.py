"""Batched Monte-Carlo randomized smoothing: Cohen et al.'s CERTIFY and PREDICT for many examples at once.

Noise model: isotropic Gaussian ``N(0, sigma^2 I)`` added in [0, 1] pixel space, *before* the model's own
input normalization (robcli models normalize inside), and NOT clipped to [0, 1]: Cohen et al.'s theorem
is about ``f(x + eta)`` for unbounded Gaussian ``eta``; clipping would change the smoothed classifier.

Reproducibility: every example draws its noise from its own ``torch.Generator`` seeded from
``(seed, idx, sigma, phase)`` (``phase`` = selection or estimation), in fixed blocks of ``NOISE_BLOCK``
samples. The noise an example sees therefore does not depend on ``--batch``, on which other examples share
its forward passes, on ``--shard`` or on ``--resume``. (CPU and CUDA generators produce different streams:
the same seed gives the same table on the same kind of device.) The generator is dedicated, so code that
reseeds the global RNG (pyautoattack does) cannot touch it.

Speed: many examples and their noise samples share each forward pass of ``batch`` inputs; votes are counted
on the device with one ``bincount`` per round (no host sync per batch); the bounds are vectorized (scipy).
``channels_last`` is used for 4-D inputs; ``compile=True`` wraps the model in ``torch.compile`` and pads the
last chunk of a round so that only one input shape is ever compiled.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from robcli.certify.bounds import (
    ABSTAIN,
    certified_radius,
    check_params,
    check_sigmas,
    cp_lower,
    predict_from_counts,
)
from robcli.errors import ModelError, UsageError
from robcli.utils.seeding import hashed_seed

NOISE_BLOCK = 1000  # samples per generator call; fixed so the noise never depends on --batch
MODES = ("certify", "predict")


@dataclass(frozen=True)
class CertifyConfig:
    """Everything that determines a certify table's contents (written into its metadata).

    Attributes:
        sigmas: noise levels (one row per example and sigma).
        N0: selection samples (CERTIFY only). N: estimation samples (CERTIFY) / votes (PREDICT).
        alpha: failure probability of each certificate / level of PREDICT's binomial test.
        batch: noisy inputs per forward pass (does not change the results).
        mode: ``certify`` or ``predict``.
        seed: noise seed.
        precision: fp32, or bf16/fp16 (CUDA autocast; the certificates are for the model as run so).
    """

    sigmas: tuple[float, ...] = (0.12,)
    N0: int = 100
    N: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    mode: str = "certify"
    seed: int = 0
    compile: bool = False
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)  # dataset, split, n_ex, skip, model ... (recorded, not used)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: choose certify or predict")
        check_sigmas(self.sigmas)
        check_params(alpha=self.alpha, n0=self.N0, n=self.N, mode=self.mode)
        if self.batch < 1:
            raise UsageError(f"--batch {self.batch} must be >= 1")
        from robcli.utils.device import parse_precision

        object.__setattr__(self, "precision", parse_precision(self.precision))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        extra = d.pop("extra")
        d.update(extra)
        return d


def noise_seed(seed: int, idx: int, sigma: float, phase: str) -> int:
    """The generator seed of one example's noise: a hash of (seed, idx, sigma, phase), 62 bits."""
    return hashed_seed("robcli-certify", str(int(seed)), str(int(idx)), repr(float(sigma)), phase, bits=62)


class VoteCounter:
    """Counts the base classifier's votes under Gaussian noise for groups of examples.

    Args:
        model: maps a batch of [0,1] inputs to logits (B, K); put in eval mode by the caller.
        num_classes: K.
        device: where noise, forward passes and counts live.
        batch: inputs per forward pass.
        channels_last: use channels_last memory format (converts the model's parameters in place) when
            ``image`` (inputs (C, H, W)).
        compile: wrap the model with ``torch.compile`` (fixed input shape via padding).
    """

    def __init__(self, model, num_classes: int, device, batch: int, *, channels_last: bool = True,
                 compile: bool = False, image: bool = True):
        import torch

        self.device = torch.device(device)
        self.K = int(num_classes)
        self.batch = int(batch)
        self.channels_last = channels_last and image
        if self.channels_last:  # before compiling, so the compiled graph sees the final parameter layout
            model.to(memory_format=torch.channels_last)
        self.base = model  # uncompiled: for one-off calls that must not trigger another compilation
        self.model = torch.compile(model) if compile else model
        self.compiled = compile

    def _forward(self, x):
        import torch

        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.compiled and n < self.batch:
            pad = x.new_zeros((self.batch - n, *x.shape[1:]))
            return self.model(torch.cat([x, pad]))[:n]
        return self.model(x)

    def clean_forward(self, x):
        """The uncompiled model on ``x`` (channels_last when configured), for one-off passes."""
        import torch

        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.base(x.to(self.device))

    def check_output(self, x) -> None:
        """Refuse a model whose output is not (B, K) logits of the data set's classes.

        Runs the uncompiled model: a compiled one would compile a second graph for this small batch.
        """
        import torch

        with torch.inference_mode():
            out = self.base(x[:2].to(self.device))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != self.K:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"model output has shape {shape}; expected (batch, {self.K}) logits of the data set's classes")

    def counts(self, x, seeds: list[int], num: int, sigma: float, ids=None):
        """Votes of ``num`` noisy copies of each example.

        Every forward pass's logits are checked for NaN/inf on the device (a flag, no host sync per batch);
        the flag is read once, at the end (where the caller synchronizes anyway to read the counts).

        Args:
            x: (G, *shape) float inputs in [0, 1], on ``device``.
            seeds: G generator seeds (see :func:`noise_seed`).
            num: noisy samples per example.
            sigma: noise std.
            ids: the G examples' ids, for the error message.

        Returns:
            int64 tensor (G, K) on ``device``.

        Raises:
            NonFiniteOutput: a noisy copy got a non-finite logit (its vote would be an artefact of argmax).
        """
        import torch

        from robcli.models.finite import FiniteWatch
        from robcli.utils.seeding import make_generator

        G = x.shape[0]
        shape = tuple(x.shape[1:])
        K = self.K
        gens = [make_generator(s, self.device) for s in seeds]
        counts = torch.zeros(G * K, dtype=torch.long, device=self.device)
        owner_base = torch.arange(G, device=self.device) * K
        watch = FiniteWatch()
        done = 0
        with torch.inference_mode():
            while done < num:
                b = min(NOISE_BLOCK, num - done)
                buf = torch.empty((G, b, *shape), device=self.device, dtype=x.dtype)
                for i, g in enumerate(gens):
                    buf[i].normal_(0.0, sigma, generator=g)
                buf += x.unsqueeze(1)
                flat = buf.view(G * b, *shape)
                preds = torch.cat([watch.see(self._forward(flat[s:s + self.batch])).argmax(1)
                                   for s in range(0, G * b, self.batch)])
                counts += torch.bincount(owner_base.repeat_interleave(b) + preds, minlength=G * K)
                done += b
        if watch.tripped():
            from robcli.errors import NonFiniteOutput
            from robcli.models.finite import describe

            who = describe(ids) if ids is not None else f"{G} example(s)"
            raise NonFiniteOutput(
                f"returned non-finite logits (NaN or inf) on Gaussian-noisy copies (sigma {sigma:g}) of {who}: "
                "their votes would be artefacts of argmax over NaN, so certification stops and writes nothing; "
                "fix the model's numerics far from the data (noise takes inputs outside [0, 1])"
            )
        return counts.view(G, K)


def group_size(cfg: CertifyConfig) -> int:
    """How many examples share one round of forward passes (fills ``batch`` with the larger of the two samples).

    A round holds ``group x min(sample, NOISE_BLOCK)`` noisy inputs, so sizing the group by the larger
    sample (N0 may exceed N) keeps every round's buffer at about ``batch`` inputs.
    """
    per = min(max(cfg.N, cfg.N0 if cfg.mode == "certify" else 0), NOISE_BLOCK)
    return max(1, cfg.batch // per)


def certify_group(counter: VoteCounter, x, idxs: list[int], labels: list[int], sigma: float,
                  cfg: CertifyConfig) -> list[dict]:
    """CERTIFY (or PREDICT) a group of examples at one sigma; returns one row dict per example.

    CERTIFY: ``cA`` = argmax of N0 selection votes; ``nA`` = votes for ``cA`` among N fresh estimation votes;
    ``pA_lower`` = Clopper-Pearson lower bound at ``alpha``; abstain (``predict = -1``, radius 0) when
    ``pA_lower < 1/2``, else radius ``sigma * Phi^-1(pA_lower)``.
    PREDICT: N votes, top two classes, binomial test; ``radius`` is 0 (nothing is certified) and
    ``pA_lower`` NaN; ``nA`` is the top count.
    """
    t0 = time.perf_counter()
    G = len(idxs)
    d = int(np.prod(x.shape[1:]))
    if cfg.mode == "certify":
        c0 = counter.counts(x, [noise_seed(cfg.seed, i, sigma, "select") for i in idxs], cfg.N0, sigma, idxs)
        c_a = c0.argmax(1)
        c = counter.counts(x, [noise_seed(cfg.seed, i, sigma, "estimate") for i in idxs], cfg.N, sigma, idxs)
        n_a = c.gather(1, c_a[:, None])[:, 0].cpu().numpy()
        c_a = c_a.cpu().numpy()
        counts = c.cpu().numpy()
        p_low = cp_lower(n_a, cfg.N, cfg.alpha)
        radius, abstain = certified_radius(p_low, sigma)
        pred = np.where(abstain, ABSTAIN, c_a)
        n0 = cfg.N0
    else:
        c = counter.counts(x, [noise_seed(cfg.seed, i, sigma, "predict") for i in idxs], cfg.N, sigma, idxs)
        counts = c.cpu().numpy()
        pred, c_a, n_a, _ = predict_from_counts(counts, cfg.alpha)
        p_low = np.full(G, np.nan)
        radius = np.zeros(G)
        n0 = 0
    dt = (time.perf_counter() - t0) / G
    rows = []
    for j in range(G):
        rows.append({
            "idx": int(idxs[j]), "label": int(labels[j]), "predict": int(pred[j]), "radius": float(radius[j]),
            "correct": bool(pred[j] == labels[j]), "time": dt, "sigma": float(sigma), "N0": int(n0),
            "N": int(cfg.N), "alpha": float(cfg.alpha), "nA": int(n_a[j]), "pA_lower": float(p_low[j]),
            "radius_linf": float(radius[j]) / math.sqrt(d), "cA": int(c_a[j]), "mode": cfg.mode,
            "counts": [int(v) for v in counts[j]],
        })
    return rows


COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "sigma", "N0", "N", "alpha", "nA",
           "pA_lower", "radius_linf", "cA", "mode", "counts"]


def shard_positions(n: int, shard: tuple[int, int] | None):
    """The positions (0..n-1) shard ``(I, K)`` takes: every K-th from I (all of them without a shard)."""
    pos = np.arange(n)
    if shard is not None:
        i, k = shard
        pos = pos[pos % k == i]
    return pos


def run_certify(
    model,
    data,
    cfg: CertifyConfig,
    *,
    device,
    shard: tuple[int, int] | None = None,
    done=None,
    checkpoint: Callable | None = None,
    checkpoint_seconds: float = 10.0,
    progress: Callable | None = None,
    blocks: Sequence[Sequence[int]] | None = None,
    on_block: Callable | None = None,
):
    """Certify (or predict) every selected example at every sigma.

    Args:
        model: [0,1] inputs -> logits; moved to ``device`` and put in eval mode here. Its logits must be
            finite, on every clean input (checked first) and on every noisy copy (checked once per group):
            :class:`~robcli.errors.NonFiniteOutput` otherwise, with no checkpoint written for it.
        data: a :class:`robcli.data.SplitData` (already selected with n_ex/skip).
        cfg: the configuration.
        device: torch device.
        shard: ``(I, K)``: keep positions ``p`` with ``p % K == I`` (disjoint by example, union = all).
        done: a data frame of rows already computed (resume); their (idx, sigma) pairs are skipped.
        checkpoint: ``checkpoint(df)`` is called with all rows so far at most every ``checkpoint_seconds``
            and once more when the run stops early (exception or interrupt), so a killed run can resume.
        progress: ``progress(done, total, desc)``.
        blocks: instead of ``shard``: lists of positions (the chunks of a :class:`robcli.tables.run.TableRun`),
            each certified at every sigma before the next; groups never span two blocks, so an example's
            forward-pass company depends only on its block.
        on_block: ``on_block(i, df)`` with the rows of block ``i`` as soon as it is done.

    Returns:
        pandas DataFrame with :data:`COLUMNS`, sorted by (idx, sigma).
    """
    import torch

    device = torch.device(device)
    model = model.to(device).eval()
    blocks = [list(b) for b in blocks] if blocks is not None else [list(shard_positions(len(data), shard))]
    pos = [p for b in blocks for p in b]
    counter = VoteCounter(model, data.info.num_classes, device, cfg.batch, compile=cfg.compile,
                          image=len(data.info.input_shape) == 3)
    # check on the data set's first examples, not the shard's: a shard may be empty (K > number of examples)
    x_all, _ = data.get(torch.arange(min(2, len(data)), dtype=torch.long))
    counter.check_output(x_all)
    from robcli.models.finite import check_clean_logits

    # one clean forward pass per example (vs N0 + N noisy ones): a model with NaN/inf logits is refused
    # before anything is certified or written
    check_clean_logits(counter.clean_forward, data, data.idx[torch.as_tensor(pos, dtype=torch.long)],
                       batch=cfg.batch, rows=pos)
    rows: list[dict] = [] if done is None or len(done) == 0 else done[COLUMNS].to_dict("records")
    have = {(int(r["idx"]), float(r["sigma"])) for r in rows}
    idx_all = data.idx.numpy()
    G = group_size(cfg)
    last = time.monotonic()
    n_done = {float(s): sum((int(idx_all[p]), float(s)) in have for p in pos) for s in cfg.sigmas}
    try:
        for b, block in enumerate(blocks):
            mark = len(rows)
            for sigma in cfg.sigmas:
                todo = [p for p in block if (int(idx_all[p]), float(sigma)) not in have]
                for start in range(0, len(todo), G):
                    grp = torch.as_tensor(todo[start:start + G], dtype=torch.long)
                    xb, yb = data.get(grp)
                    rows += certify_group(counter, xb.to(device), data.idx[grp].tolist(), yb.tolist(), sigma, cfg)
                    n_done[float(sigma)] += len(grp)
                    if progress is not None:  # one progress bar per sigma, each out of the selected examples
                        progress(n_done[float(sigma)], len(pos), f"{cfg.mode} sigma={sigma:g}")
                    if checkpoint is not None and time.monotonic() - last >= checkpoint_seconds:
                        checkpoint(_frame(rows))
                        last = time.monotonic()
            if on_block is not None:
                on_block(b, _frame(rows[mark:]))
    except BaseException as e:
        from robcli.errors import NonFiniteOutput

        if checkpoint is not None and rows and not isinstance(e, NonFiniteOutput):  # that run cannot resume
            checkpoint(_frame(rows))
        raise
    return _frame(rows)


# the pandas dtype of every column, so that a table without rows (an empty shard) still has the schema's types
# (``counts``, a list of ints per row, is stored null-typed when there are no rows)
def _dtypes() -> dict[str, str]:
    from robcli.tables.schema import SCHEMAS

    return {**SCHEMAS["certify"], "radius_linf": "float64", "cA": "int64", "mode": "str", "counts": "object"}


def _frame(rows: list[dict]):
    import pandas as pd

    if not rows:  # an empty shard: a valid, typed table with no rows
        dtypes = _dtypes()
        return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in COLUMNS})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["idx", "sigma"], kind="stable").reset_index(drop=True)


SUMMARY_COLUMNS = ["sigma", "radius", "n", "certified_acc", "certified_robust_inacc", "abstain"]


def summarize(df, radii_per_sigma: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0), *, radii=None):
    """Certified accuracy, abstain rate and certified robust inaccuracy per sigma.

    Radii are given in units of sigma (``radii_per_sigma``), or as absolute L2 radii with ``radii`` (the
    same radii at every sigma). Certified accuracy at r: fraction with ``predict == label`` and
    ``radius >= r``; certified robust inaccuracy at r: fraction with ``predict`` not in {label, -1} and
    ``radius >= r`` (a wrong prediction that is certified). In predict mode only r = 0 is meaningful (there
    certified accuracy is the smoothed classifier's accuracy).

    Returns:
        pandas DataFrame with :data:`SUMMARY_COLUMNS`, one row per (sigma, r); no rows for an empty table.
    """
    import pandas as pd

    out = []
    for sigma, g in df.groupby("sigma", sort=True):
        n = len(g)
        abstain = float((g["predict"] == ABSTAIN).mean())
        if not (g["mode"] == "certify").all():
            rs = (0.0,)
        elif radii is not None:
            rs = tuple(float(r) for r in radii)
        else:
            rs = tuple(m * float(sigma) for m in radii_per_sigma)
        for r in rs:
            ok = g["radius"] >= r - 1e-12
            out.append({
                "sigma": float(sigma), "radius": r, "n": n,
                "certified_acc": float(((g["predict"] == g["label"]) & ok).mean()),
                "certified_robust_inacc": float(((g["predict"] != g["label"]) & (g["predict"] != ABSTAIN) & ok).mean()),
                "abstain": abstain,
            })
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def summary_text(df) -> str:
    """The short human summary printed to stderr."""
    if len(df) == 0:
        return "no examples to certify here (an empty shard: K exceeds the number of examples)"
    s = summarize(df)
    lines = []
    mode = str(df["mode"].iloc[0]) if len(df) else "certify"
    for sigma, g in s.groupby("sigma", sort=True):
        head = f"sigma={sigma:g}  n={int(g['n'].iloc[0])}  abstain={g['abstain'].iloc[0]:.3f}"
        if mode == "predict":
            lines.append(f"{head}  smoothed acc={g['certified_acc'].iloc[0]:.3f}  "
                         f"wrong (not abstained)={g['certified_robust_inacc'].iloc[0]:.3f}")
            continue
        parts = [f"r={r:.3g}: acc {a:.3f} / rob.inacc {b:.3f}"
                 for r, a, b in zip(g["radius"], g["certified_acc"], g["certified_robust_inacc"])]
        lines.append(head + "  certified " + "; ".join(parts))
    return "\n".join(lines)


def same_config(a: dict, b: dict) -> bool:
    """Whether two recorded configurations describe the same table (resume check)."""
    skip = {"out", "resume", "force", "quiet", "compile", "batch"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
