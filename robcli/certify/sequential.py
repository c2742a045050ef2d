"""Sequential certification: Cohen et al.'s guarantee with far fewer noise samples, in a pooled batched engine.

Per example and sigma, every requested radius r is tested with the anytime-valid mixture test of
:mod:`robcli.certify.anytime` (H0: p < Phi(r / sigma)), nested over the radii: the probability that ANY of an
example's certified claims is false is at most ``alpha``, simultaneously over its radii and whenever it
stops. An example stops as soon as every radius is decided (certified, or given up: unreachable before the
cap, or hopeless), and never draws more than ``N`` estimation samples (the cap).

The class (``against``):
* ``prediction`` (Cohen's semantics, for deployment): ``N0`` selection samples (their own noise stream)
  pick the class c_A; then FRESH estimation samples test it. The selection votes are never counted in the test.
* ``label`` (evaluation of certified accuracy on a labeled set): the label's probability is tested directly,
  with no selection samples. Such a table measures certified accuracy; it does not certify unlabeled inputs.

Without radii (the adaptive mode) the tests run on a grid of radii ``step, 2 step, ...`` (``step`` =
``radius_tol / 4``): the largest certified grid radius is a (1 - alpha) lower bound on the true radius at any
stop. An example stops when, even if p were as large as the anytime (1 - futility) upper confidence bound
allows, running to the cap would raise its radius by at most ``radius_tol`` (default ``0.02 * sigma``).

Engine: a pool of active examples shares every forward pass. Each example draws its noise from its own
generators (``noise_seed(seed, idx, sigma, "seq-select" / "seq-estimate")``) in fixed blocks
(:func:`robcli.certify.anytime.estimation_blocks`: 50, 50, 100, 100, 200, 500 for early looks, then
NOISE_BLOCK = 1000), and its tests are evaluated only at fixed points of its own stream
(:func:`~robcli.certify.anytime.look_points`). The noisy inputs of all active examples are queued and run in
full batches of ``batch``; a block split across two passes is simply counted over both. As examples finish,
new ones join. So the results do not depend on ``batch``, on which examples share a pass, on shards or on
resume (the same device type gives the same table), and a pass is only partial when the pool cannot fill it
(at the very end).

Rows: one per (example, sigma), the certify table's columns with ``radius`` = the largest certified radius
(0 and ``predict`` -1 when none), ``pA_lower`` = Phi(radius / sigma) (the certified lower bound on p_A; 0 when
nothing is certified), ``N0`` / ``N`` = selection / estimation samples actually drawn, plus ``cap``,
``n_used``, ``against``, ``certified_radii``, per-radius ``decisions`` and ``decided_n``, and ``stop``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from robcli.certify import anytime as at
from robcli.certify.bounds import ABSTAIN, check_params, check_sigmas
from robcli.certify.smoothing import COLUMNS as CERTIFY_COLUMNS
from robcli.certify.smoothing import NOISE_BLOCK, VoteCounter, noise_seed, shard_positions
from robcli.errors import UsageError

AGAINST = ("prediction", "label")
PHASE_SELECT = "seq-select"
PHASE_ESTIMATE = "seq-estimate"
TOL_PER_SIGMA = 0.02  # default --radius-tol, in units of sigma
GRID_PER_TOL = 4  # the adaptive grid step is radius_tol / GRID_PER_TOL
STOPS = ("decided", "cap", "unreachable", "tolerance", "hopeless")

COLUMNS = CERTIFY_COLUMNS + ["method", "against", "cap", "n_used", "certified_radii", "decisions",
                             "decided_n", "stop"]


def check_flags(*, sequential: bool, radii=(), radius_tol=None, against=None) -> None:
    """The CLI combinations that only make sense with ``--sequential`` (one-line UsageErrors).

    The rest (``--mode predict --sequential``, a radius <= 0, ``--radius-tol`` <= 0 or with ``--radius``)
    is checked by :class:`SequentialConfig`.
    """
    if sequential:
        return
    if radii:
        raise UsageError("--radius needs --sequential (fixed-N CERTIFY reports each example's certified radius)")
    if radius_tol is not None:
        raise UsageError("--radius-tol needs --sequential (it is the adaptive sequential mode's stopping tolerance)")
    if against is not None and str(against).strip().lower() != "prediction":
        raise UsageError("--against label needs --sequential (fixed-N CERTIFY certifies its own prediction)")


@dataclass(frozen=True)
class SequentialConfig:
    """Everything that determines a sequential certify table's contents (written into its metadata).

    Attributes:
        sigmas: noise levels (one row per example and sigma).
        radii: target L2 radii (the same at every sigma; sorted here); empty: the adaptive mode.
        against: ``prediction`` (N0 selection samples pick the class) or ``label``.
        radius_tol: the adaptive mode's tolerance (absolute L2); None: ``0.02 * sigma``.
        N0: selection samples (``against prediction``). N: the cap on estimation samples.
        alpha: the probability that any certified claim of one example is false.
        futility: level of the "hopeless" rule (None: alpha): an example whose p_A reaches a radius's p0 is
            given up on by it with probability <= futility. It changes only how long examples run.
        batch: noisy inputs per forward pass (does not change the results).
        seed: noise seed. mode: must be ``certify`` (PREDICT has no sequential version).
    """

    sigmas: tuple[float, ...] = (0.12,)
    radii: tuple[float, ...] = ()
    against: str = "prediction"
    radius_tol: float | None = None
    N0: int = 100
    N: int = 100_000
    alpha: float = 0.001
    futility: float | None = None
    batch: int = 1000
    seed: int = 0
    mode: str = "certify"
    compile: bool = False
    precision: str = "fp32"  # fp32, or bf16/fp16 under CUDA autocast (robcli.models.precision)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from robcli.utils.device import parse_precision

        object.__setattr__(self, "precision", parse_precision(self.precision))
        mode = str(self.mode).strip().lower()
        if mode == "predict":
            raise UsageError("--mode predict has no sequential version: --sequential certifies radii "
                             "(drop --mode predict or --sequential)")
        if mode != "certify":
            raise UsageError(f"--mode {self.mode!r}: choose certify or predict")
        against = str(self.against).strip().lower()
        if against not in AGAINST:
            raise UsageError(f"--against {self.against!r}: choose prediction or label")
        object.__setattr__(self, "against", against)
        check_sigmas(self.sigmas)
        radii = tuple(float(r) for r in self.radii)
        for r in radii:
            if not (math.isfinite(r) and r > 0):
                raise UsageError(f"--radius {r:g} must be > 0 (an L2 radius to certify)")
        if len(set(radii)) != len(radii):
            raise UsageError("--radius values repeat")
        object.__setattr__(self, "radii", tuple(sorted(radii)))
        if self.radius_tol is not None:
            if not (math.isfinite(self.radius_tol) and self.radius_tol > 0):
                raise UsageError(f"--radius-tol {self.radius_tol:g} must be > 0 (an L2 radius)")
            if radii:
                raise UsageError("--radius-tol is the adaptive mode's tolerance: drop it or drop --radius")
        check_params(alpha=self.alpha)
        if self.futility is not None and not (0.0 < self.futility < 1.0):
            raise UsageError(f"futility level {self.futility:g} must lie in (0, 1)")
        if self.N < 1:
            raise UsageError(f"--N {self.N} must be >= 1 (the cap on estimation samples)")
        if against == "prediction" and self.N0 < 1:
            raise UsageError(f"--N0 {self.N0} must be >= 1 (selection samples)")
        if self.batch < 1:
            raise UsageError(f"--batch {self.batch} must be >= 1")
        self._check_reachable()

    def _check_reachable(self) -> None:
        from scipy.stats import norm

        if not self.radii:
            for s in self.sigmas:
                h = self.step(s)
                m = at.min_cap(float(norm.cdf(h / s)), self.alpha, float(norm.sf(h / s)))
                if m > self.N:
                    raise UsageError(f"--N {self.N} is too small for --alpha {self.alpha:g}: the sequential test "
                                     f"needs --N >= {m} to certify any radius at --sigma {s:g}")
            return
        for r in self.radii:
            if all(at.min_cap(float(norm.cdf(r / s)), self.alpha, float(norm.sf(r / s))) > self.N
                   for s in self.sigmas):
                best = max(self.sigmas, key=lambda s: largest_radius(s, self.alpha, self.N))
                raise UsageError(
                    f"--radius {r:g} is out of reach at every --sigma: with --N {self.N} and --alpha "
                    f"{self.alpha:g} even N votes out of N certify at most "
                    f"{largest_radius(best, self.alpha, self.N):.3g} (at --sigma {best:g}); raise --N or --sigma")

    @property
    def adaptive(self) -> bool:
        return not self.radii

    @property
    def futility_level(self) -> float:
        return float(self.alpha if self.futility is None else self.futility)

    def tol(self, sigma: float) -> float:
        """The adaptive mode's radius tolerance at ``sigma``."""
        return float(self.radius_tol) if self.radius_tol is not None else TOL_PER_SIGMA * float(sigma)

    def step(self, sigma: float) -> float:
        """The adaptive mode's grid step at ``sigma``."""
        return self.tol(sigma) / GRID_PER_TOL

    def plan(self, sigma: float) -> at.Plan:
        """The precomputed tests at ``sigma`` (cached per process)."""
        if self.adaptive:
            return _grid_plan(float(sigma), self.alpha, self.N, self.futility_level, self.step(sigma))
        return _radii_plan(self.radii, float(sigma), self.alpha, self.N, self.futility_level)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        d["radii"] = list(self.radii)
        d["sequential"] = True
        d.update(d.pop("extra"))
        return d


@lru_cache(maxsize=32)
def _radii_plan(radii: tuple[float, ...], sigma: float, alpha: float, cap: int, futility: float) -> at.Plan:
    return at.radii_plan(radii, sigma, alpha, cap, futility)


@lru_cache(maxsize=8)
def _grid_plan(sigma: float, alpha: float, cap: int, futility: float, step: float) -> at.Plan:
    return at.grid_plan(sigma, alpha, cap, futility, step)


def largest_radius(sigma: float, alpha: float, cap: int) -> float:
    """About the largest radius the sequential test can certify with ``cap`` samples (all votes on one class)."""
    from scipy.stats import norm

    lo, hi = 0.0, at.max_radius(sigma, alpha, cap)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        ok = at.mixture_boundary(cap, norm.cdf(mid / sigma), alpha, norm.sf(mid / sigma)) <= cap
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


# ------------------------------------------------------------------------------------------ the engine


class _Slot:
    """One active example in the pool."""

    __slots__ = ("sid", "idx", "label", "x", "gen", "phase", "sel_n", "sel_counts", "cls", "n_gen", "block_i",
                 "look_i", "counts", "status", "decided_n", "n0_used", "inputs", "stop")

    def __init__(self, sid: int, idx: int, label: int, x, K: int, status: np.ndarray):
        self.sid, self.idx, self.label, self.x = sid, idx, label, x
        self.gen = None
        self.phase = PHASE_ESTIMATE
        self.sel_n = 0
        self.sel_counts = np.zeros(K, dtype=np.int64)
        self.cls = -1
        self.n_gen = 0
        self.block_i = 0
        self.look_i = 0
        self.counts = np.zeros(K, dtype=np.int64)
        self.status = status
        self.decided_n = np.where(status != at.UNDECIDED, 0, -1).astype(np.int64)
        self.n0_used = 0
        self.inputs = 0
        self.stop = ""


class _Pool:
    """Runs the sequential tests of many examples at one sigma through shared, full forward passes."""

    def __init__(self, counter: VoteCounter, cfg: SequentialConfig, sigma: float, shape: tuple[int, ...],
                 dim: int, emit: Callable[[dict], None]):
        import torch

        self.torch = torch
        self.counter, self.cfg, self.sigma, self.shape, self.dim, self.emit = counter, cfg, float(sigma), shape, dim, emit
        self.plan = cfg.plan(sigma)
        self.tol = cfg.tol(sigma)
        self.blocks = at.estimation_blocks(cfg.N).tolist()
        self.looks = self.plan.looks.tolist()
        self.K = counter.K
        self.batch = cfg.batch
        self.device = counter.device
        smallest = min(at.EARLY_BLOCKS[0], cfg.N, cfg.N0 if cfg.against == "prediction" else cfg.N)
        self.capacity = int(min(65536, 2 * math.ceil(self.batch / max(1, smallest)) + 2))
        self.acc = torch.zeros((self.capacity, self.K), dtype=torch.long, device=self.device)
        self.ones = torch.ones(self.batch, dtype=torch.long, device=self.device)
        self.free = list(range(self.capacity - 1, -1, -1))
        self.slots: dict[int, _Slot] = {}
        self.needs: deque[int] = deque()
        self.parts: list = []  # new noisy blocks, not yet concatenated
        self.part_sid: list[int] = []  # owner (slot id) of each new block
        self.part_size: list[int] = []  # and its size
        self.left_x = None  # inputs queued but not yet run (< batch)
        self.left_own = None
        self.fifo: deque[tuple[int, int, bool]] = deque()  # (sid, end offset in the input stream, ends a look)
        self.enq = 0
        self.proc = 0
        self.t0 = time.perf_counter()

    # -- noise -------------------------------------------------------------------------------------------
    def _gen_block(self, sl: _Slot) -> bool:
        torch = self.torch
        if sl.phase == PHASE_SELECT:
            b = min(NOISE_BLOCK, self.cfg.N0 - sl.sel_n)
            sl.sel_n += b
            look = sl.sel_n == self.cfg.N0
        else:
            b = self.blocks[sl.block_i]
            sl.block_i += 1
            sl.n_gen += b
            look = sl.n_gen == self.looks[sl.look_i]
        t = torch.empty((b, *self.shape), device=self.device, dtype=sl.x.dtype)
        t.normal_(0.0, self.sigma, generator=sl.gen)
        t += sl.x
        self.parts.append(t)
        self.part_sid.append(sl.sid)
        self.part_size.append(b)
        self.enq += b
        sl.inputs += b
        self.fifo.append((sl.sid, self.enq, look))
        return look

    def _generator(self, idx: int, phase: str):
        from robcli.utils.seeding import make_generator

        return make_generator(noise_seed(self.cfg.seed, idx, self.sigma, phase), self.device)

    # -- examples ------------------------------------------------------------------------------------------
    def admit(self, idx: int, label: int, x) -> None:
        status = self.plan.initial(1)[0]
        sl = _Slot(-1, int(idx), int(label), x, self.K, status)
        if not self.cfg.adaptive and not (status == at.UNDECIDED).any():
            sl.stop = "unreachable"  # no radius can be certified within the cap: no sample is drawn
            self._finish(sl)
            return
        sl.sid = self.free.pop()
        self.slots[sl.sid] = sl
        if self.cfg.against == "prediction":
            sl.phase = PHASE_SELECT
            sl.gen = self._generator(idx, PHASE_SELECT)
        else:
            sl.cls = int(label)
            sl.gen = self._generator(idx, PHASE_ESTIMATE)
        self.needs.append(sl.sid)

    def can_admit(self) -> bool:
        return bool(self.free)

    def queued(self) -> int:
        return self.enq - self.proc

    def fill(self, more: Callable[[_Pool], bool]) -> None:
        """Queue noisy inputs until a full batch is waiting (or nothing more can be queued).

        ``more(pool)`` admits the next example into ``pool`` (returns False when none is left)."""
        while self.queued() < self.batch:
            if self.needs:
                sid = self.needs.popleft()
                if not self._gen_block(self.slots[sid]):
                    self.needs.appendleft(sid)  # the rest of its blocks up to its next look come first
            elif not (self.can_admit() and more(self)):
                break

    # -- forward passes -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the full batches waiting (or everything, when less than a batch can be queued), then the looks."""
        torch = self.torch
        q = self.queued()
        m = q - q % self.batch if q >= self.batch else q
        if self.parts:
            own_np = np.repeat(np.fromiter(self.part_sid, np.int64, len(self.part_sid)),
                               np.fromiter(self.part_size, np.int64, len(self.part_size)))
            own_new = torch.from_numpy(own_np).to(self.device)
            xs = ([self.left_x] if self.left_x is not None else []) + self.parts
            owns = ([self.left_own] if self.left_own is not None else []) + [own_new]
            buf = torch.cat(xs) if len(xs) > 1 else xs[0]
            own = torch.cat(owns) if len(owns) > 1 else owns[0]
            self.parts, self.part_sid, self.part_size = [], [], []
        else:
            buf, own = self.left_x, self.left_own
        with torch.inference_mode():
            for s in range(0, m, self.batch):
                e = min(m, s + self.batch)
                pred = self.counter._forward(buf[s:e]).argmax(1)
                self.acc.index_put_((own[s:e], pred), self.ones[:e - s], accumulate=True)
        self.left_x, self.left_own = (buf[m:], own[m:]) if m < q else (None, None)
        self.proc += m
        done: list[int] = []
        while self.fifo and self.fifo[0][1] <= self.proc:
            sid, _, look = self.fifo.popleft()
            if look:
                done.append(sid)
        if done:
            idx_t = torch.tensor(done, dtype=torch.long, device=self.device)
            votes = self.acc[idx_t].cpu().numpy()
            self.acc[idx_t] = 0
            self._looks(done, votes)

    def _looks(self, sids: list[int], votes: np.ndarray) -> None:
        est = []
        for sid, v in zip(sids, votes):
            sl = self.slots[sid]
            if sl.phase == PHASE_SELECT:
                sl.sel_counts += v
                sl.cls = int(np.argmax(sl.sel_counts))  # ties: the lowest class index
                sl.n0_used = self.cfg.N0
                sl.phase = PHASE_ESTIMATE
                sl.gen = self._generator(sl.idx, PHASE_ESTIMATE)
                self.needs.append(sid)
            else:
                sl.counts += v
                est.append(sl)
        if not est:
            return
        plan = self.plan
        k = np.array([sl.look_i for sl in est], dtype=np.int64)
        S = np.array([sl.counts[sl.cls] for sl in est], dtype=np.int64)
        old = np.stack([sl.status for sl in est])
        new = plan.decide(k, S, old)
        last = k == len(self.looks) - 1
        if self.cfg.adaptive:
            stop, reason = self._adaptive_stop(new, last)
        else:
            stop = ~(new == at.UNDECIDED).any(1)
            reason = np.where((new == at.CAPPED).any(1), "cap", "decided")
        fresh = (old == at.UNDECIDED) & (new != at.UNDECIDED)
        decided = np.where(fresh, plan.looks[k][:, None], np.stack([sl.decided_n for sl in est]))
        for i, sl in enumerate(est):
            sl.decided_n = decided[i]
            sl.status = new[i]
            sl.look_i += 1
            if stop[i]:
                sl.stop = str(reason[i])
                self._finish(sl)
            else:
                self.needs.append(sl.sid)

    def _adaptive_stop(self, status: np.ndarray, last: np.ndarray):
        """Stop when the radius at the cap, if p were as large as the hopeless rule still allows, is at most
        ``tol`` above the radius certified now."""
        plan = self.plan
        J = plan.num_radii
        j_cur = (status == at.CERTIFIED).sum(1)
        gone = (status == at.HOPELESS) | (status == at.UNREACHABLE) | (status == at.CAPPED)
        first_gone = np.where(gone.any(1), gone.argmax(1), J)
        hop = status == at.HOPELESS
        first_hop = np.where(hop.any(1), hop.argmax(1), J)
        U = np.where(first_hop < J, plan.p0[np.minimum(first_hop, J - 1)], 1.0)  # anytime upper bound on p
        j_proj = np.maximum(np.minimum(plan.projected_count(U), first_gone), j_cur)
        r = np.concatenate([[0.0], plan.radii])
        gain = r[j_proj] - r[j_cur]
        stop = last | (gain <= self.tol + 1e-12)
        reason = np.where(last, "cap", np.where(j_proj == 0, "hopeless", "tolerance"))
        return stop, reason

    # -- rows ----------------------------------------------------------------------------------------------
    def _finish(self, sl: _Slot) -> None:
        plan = self.plan
        cert = sl.status == at.CERTIFIED
        j = int(cert.sum())
        radius = float(plan.radii[j - 1]) if j else 0.0
        pred = sl.cls if j else ABSTAIN
        elapsed = time.perf_counter() - self.t0
        share = elapsed * sl.inputs / self.proc if self.proc else 0.0
        if self.cfg.adaptive:
            certified, decisions, decided = ([radius] if j else []), [], []
        else:
            certified = [float(r) for r in plan.radii[:j]]
            decisions = [at.DECISIONS[int(s)] for s in sl.status]
            decided = [int(v) for v in sl.decided_n]
        self.emit({
            "idx": sl.idx, "label": sl.label, "predict": int(pred), "radius": radius,
            "correct": bool(pred == sl.label), "time": float(share), "sigma": self.sigma, "N0": int(sl.n0_used),
            "N": int(sl.n_gen), "alpha": float(self.cfg.alpha),
            "nA": int(sl.counts[sl.cls]) if sl.cls >= 0 else 0,
            "pA_lower": float(plan.p0[j - 1]) if j else 0.0, "radius_linf": radius / math.sqrt(self.dim),
            "cA": int(sl.cls), "mode": "certify", "counts": [int(v) for v in sl.counts],
            "method": "sequential", "against": self.cfg.against, "cap": int(self.cfg.N),
            "n_used": int(sl.n0_used + sl.n_gen), "certified_radii": certified, "decisions": decisions,
            "decided_n": decided, "stop": sl.stop,
        })
        if sl.sid >= 0:
            del self.slots[sl.sid]
            self.free.append(sl.sid)

    def active(self) -> int:
        return len(self.slots)


def run_sequential(
    model,
    data,
    cfg: SequentialConfig,
    *,
    device,
    done=None,
    checkpoint: Callable | None = None,
    progress: Callable | None = None,
    shard: tuple[int, int] | None = None,
    checkpoint_seconds: float = 10.0,
    blocks=None,
    on_block: Callable | None = None,
):
    """Sequentially certify every selected example at every sigma (same shape as ``run_certify``).

    Args:
        model: [0,1] inputs -> logits; moved to ``device`` and put in eval mode here.
        data: a :class:`robcli.data.SplitData` (already selected with n_ex/skip).
        cfg: the configuration.
        device: torch device (CPU or CUDA; the pool runs there).
        done: a data frame of rows already computed (resume); their (idx, sigma) pairs are skipped.
        checkpoint: ``checkpoint(df)`` with all rows so far, at most every ``checkpoint_seconds`` and once
            more when the run stops early (exception or interrupt).
        progress: ``progress(done, total, desc)`` as examples finish.
        shard: ``(I, K)``: keep positions ``p`` with ``p % K == I``.
        blocks: instead of ``shard``: lists of positions (a table run's chunks), each certified at every sigma
            (its own pool) before the next, so an example's forward-pass company depends only on its block.
        on_block: ``on_block(i, df)`` with the rows of block ``i`` as soon as it is done.

    Returns:
        pandas DataFrame with :data:`COLUMNS`, sorted by (idx, sigma).
    """
    import torch

    device = torch.device(device)
    model = model.to(device).eval()
    blocks = [list(b) for b in blocks] if blocks is not None else [[int(p) for p in shard_positions(len(data), shard)]]
    pos = [p for b in blocks for p in b]
    shape = tuple(data.info.input_shape)
    counter = VoteCounter(model, data.info.num_classes, device, cfg.batch, compile=cfg.compile,
                          image=len(shape) == 3)
    x_chk, _ = data.get(torch.arange(min(2, len(data)), dtype=torch.long))
    counter.check_output(x_chk)
    rows: list[dict] = [] if done is None or len(done) == 0 else done[COLUMNS].to_dict("records")
    have = {(int(r["idx"]), float(r["sigma"])) for r in rows}
    idx_all = data.idx.numpy()
    dim = int(np.prod(shape))
    state = {"last": time.monotonic()}

    n_done = {float(s): sum((int(idx_all[p]), float(s)) in have for p in pos) for s in cfg.sigmas}

    def emit(row: dict) -> None:
        rows.append(row)
        n_done[float(state["sigma"])] += 1
        if progress is not None:
            progress(n_done[float(state["sigma"])], len(pos), f"sequential sigma={state['sigma']:g}")
        if checkpoint is not None and time.monotonic() - state["last"] >= checkpoint_seconds:
            checkpoint(_frame(rows))
            state["last"] = time.monotonic()

    try:
        for b, block in enumerate(blocks):
            mark = len(rows)
            for sigma in cfg.sigmas:
                todo = [int(p) for p in block if (int(idx_all[p]), float(sigma)) not in have]
                state["sigma"] = sigma
                pool = _Pool(counter, cfg, sigma, shape, dim, emit)
                feed = _Feed(data, todo, device)
                while True:
                    pool.fill(feed.next_into)
                    if pool.queued() == 0:
                        if pool.active() or feed.left():  # pragma: no cover - an engine bug, never a user error
                            raise RuntimeError("sequential pool stalled")
                        break
                    pool.run()
            if on_block is not None:
                on_block(b, _frame(rows[mark:]))
    except BaseException:
        if checkpoint is not None and rows:
            checkpoint(_frame(rows))
        raise
    return _frame(rows)


class _Feed:
    """The examples still to admit, loaded from the data set a chunk at a time."""

    CHUNK = 64

    def __init__(self, data, todo: list[int], device):
        self.data, self.todo, self.device = data, todo, device
        self.i = 0
        self.xb = self.yb = self.ib = None
        self.j = 0

    def left(self) -> bool:
        return self.i < len(self.todo) or (self.xb is not None and self.j < len(self.yb))

    def next_into(self, pool: _Pool) -> bool:
        import torch

        if self.xb is None or self.j >= len(self.yb):
            if self.i >= len(self.todo):
                return False
            grp = torch.as_tensor(self.todo[self.i:self.i + self.CHUNK], dtype=torch.long)
            self.i += len(grp)
            xb, yb = self.data.get(grp)
            self.xb, self.yb, self.ib = xb.to(self.device), yb.tolist(), self.data.idx[grp].tolist()
            self.j = 0
        j = self.j
        self.j += 1
        pool.admit(self.ib[j], self.yb[j], self.xb[j])
        return True


def _dtypes() -> dict[str, str]:
    from robcli.tables.schema import SCHEMAS

    return {**SCHEMAS["certify"], "radius_linf": "float64", "cA": "int64", "mode": "str", "counts": "object",
            "method": "str", "against": "str", "cap": "int64", "n_used": "int64", "certified_radii": "object",
            "decisions": "object", "decided_n": "object", "stop": "str"}


def _frame(rows: list[dict]):
    import pandas as pd

    if not rows:
        dtypes = _dtypes()
        return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in COLUMNS})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["idx", "sigma"], kind="stable").reset_index(drop=True)


SAMPLE_COLUMNS = ["sigma", "n", "mean_n_used", "median_n_used", "max_n_used", "at_cap"]


def sample_summary(df):
    """Samples drawn per example, per sigma: mean, median, max, and the fraction that ran to the cap."""
    import pandas as pd

    out = []
    for sigma, g in df.groupby("sigma", sort=True):
        n = g["n_used"].to_numpy()
        out.append({"sigma": float(sigma), "n": len(g), "mean_n_used": float(n.mean()),
                    "median_n_used": float(np.median(n)), "max_n_used": int(n.max()),
                    "at_cap": float((g["N"] >= g["cap"]).mean())})
    return pd.DataFrame(out, columns=SAMPLE_COLUMNS)


def sample_text(df) -> str:
    """One line per sigma for the CLI: samples drawn per example (mean, median, max) and how many hit the cap."""
    lines = []
    for r in sample_summary(df).to_dict("records"):
        lines.append(f"sigma={r['sigma']:g}  samples per example: mean {r['mean_n_used']:.0f}, median "
                     f"{r['median_n_used']:.0f}, max {r['max_n_used']}; at the cap {r['at_cap']:.3f}")
    return "\n".join(lines)
