"""Per-example empirical robustness over an eps sweep: run an attack, verify every adversarial point, tabulate.

Robustness is judged against the model's OWN clean prediction ``F(x)`` (every attack is aimed at moving
the prediction away from ``F(x)``, not from the label), so that both robust accuracy (eq. 2 of the ERA
paper: ``F(x) = y`` and ``F(x') = F(x)`` on the ball) and robust inaccuracy (eq. 3: ``F(x) != y`` and
``F(x') = F(x)`` on the ball) are measured. ``robust`` is an empirical upper bound: an attack that finds
nothing proves nothing, an attack that finds a point proves non-robustness.

Trust nothing an attack claims: every returned point is checked to be finite, inside [0,1] and inside the
ball (a point off the ball by float rounding only, at most 1e-4 relative, is projected back; anything
more is an internal error), and the model is re-evaluated on it here.

Eps sweep: radii are processed in ascending order; an example found non-robust at a smaller radius is
non-robust at every larger one, so it is not attacked again: its row at the larger radius repeats the
adversarial point's prediction, margin and norm (``reused = True``).

Determinism: examples are processed in fixed batches of ``batch`` consecutive examples; the attack on batch
``b`` at radius ``eps`` is seeded with a hash of ``(seed, b, eps)`` (our attacks use a dedicated
``torch.Generator``; pyautoattack gets the seed right before its call, inside a forked global RNG). So a
run resumed from its partial table equals an uninterrupted run, and ``batch`` is part of the configuration.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from robcli.attacks.aa import AA_ATTACKS, AA_VERSIONS, check_classes, check_inputs
from robcli.errors import ModelError, UsageError
from robcli.utils.parse import parse_eps, parse_norm

ATTACK_NAMES = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "apgd-conf", "fab-t", "square", "autoattack", "grid")
PYAUTOATTACK = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack")
DEFAULT_STEPS = {
    "pgd": 40, "apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "apgd-conf": 100, "fab-t": 100,
    "square": 5000, "autoattack": 100, "grid": 100,
}
PGD_OBJECTIVES = ("margin", "ce")
STRICT_REL, STRICT_ABS = 1e-6, 1e-7  # a point counts as inside the ball within this tolerance
HARD_REL = 1e-4  # beyond this an attack returned a point outside the ball: internal error, not rounding

COLUMNS = [
    "idx", "label", "eps", "norm", "attack", "clean_pred", "adv_pred", "correct", "robust", "clean_margin",
    "adv_margin", "pert_norm", "clean_conf", "adv_conf_other", "found_eps", "reused", "steps", "restarts",
    "version", "batch_index",
]


class AttackInternalError(RuntimeError):
    """An attack returned a point outside the ball or the [0,1] box, or a non-finite point (a bug)."""


@dataclass(frozen=True)
class AttackConfig:
    """Everything that determines an attack table's contents (written into its metadata).

    Attributes:
        attack: one of :data:`ATTACK_NAMES`.
        eps: radii, stored sorted ascending (processed in that order).
        norm: ``Linf`` or ``L2``.
        steps: iterations (Square: queries); ``None`` -> :data:`DEFAULT_STEPS`. For ``autoattack`` with
            version standard/plus/rand the package's own settings are used and recorded (100).
        restarts: runs per attack (targeted attacks: per target class); ``None`` -> 1 (plus: 5).
        version: AutoAttack version (``attack == 'autoattack'`` only).
        aa_attacks: the attacks of ``--version custom``.
        objective: ``pgd``'s objective: ``margin`` (max other logit - logit of F(x)) or ``ce``.
        grid_points: grid values per axis for ``grid`` (``None`` -> 101 in 2-D).
        batch: examples per attack call (part of the seeding, so it changes results).
        seed: base seed.
        extra: recorded, not used (model, dataset, split, selection).
    """

    attack: str = "apgd-ce"
    eps: tuple[float, ...] = (8 / 255,)
    norm: str = "Linf"
    steps: int | None = None
    restarts: int | None = None
    version: str = "standard"
    aa_attacks: tuple[str, ...] = ()
    objective: str = "margin"
    grid_points: int | None = None
    batch: int = 256
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        attack = str(self.attack).strip().lower()
        if attack not in ATTACK_NAMES:
            raise UsageError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACK_NAMES)}")
        s(self, "attack", attack)
        norm = parse_norm(self.norm)
        s(self, "norm", norm)
        if not self.eps:
            raise UsageError("give at least one --eps")
        eps = [parse_eps(e, norm) for e in self.eps]
        if len(set(eps)) != len(eps):
            raise UsageError("--eps values repeat")
        s(self, "eps", tuple(sorted(eps)))
        version = str(self.version).strip().lower()
        if version not in AA_VERSIONS:
            raise UsageError(f"unknown --version {self.version!r}; choose one of {', '.join(AA_VERSIONS)}")
        s(self, "version", version)
        aa = tuple(str(a).strip().lower() for a in self.aa_attacks if str(a).strip())
        bad = [a for a in aa if a not in AA_ATTACKS]
        if bad:
            raise UsageError(f"unknown AutoAttack attack {bad[0]!r}; choose from {', '.join(AA_ATTACKS)}")
        if attack == "autoattack" and version == "custom" and not aa:
            raise UsageError("--version custom needs --aa-attacks, e.g. apgd-ce,apgd-t")
        if aa and not (attack == "autoattack" and version == "custom"):
            raise UsageError("--aa-attacks applies to --attack autoattack --version custom only")
        s(self, "aa_attacks", aa)
        fixed = attack == "autoattack" and version != "custom"
        if fixed and (self.steps is not None or self.restarts is not None):
            raise UsageError(f"--steps/--restarts do not apply to autoattack --version {version} "
                             "(it uses AutoAttack's own settings); use --version custom")
        for name in ("steps", "restarts", "grid_points", "batch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or int(v) < 1):
                raise UsageError(f"--{name.replace('_', '-')} {v!r} must be a positive integer")
        if self.grid_points is not None and int(self.grid_points) < 2:
            raise UsageError(f"--grid-points {self.grid_points} must be >= 2")
        if self.grid_points is not None and attack != "grid":
            raise UsageError("--grid-points applies to --attack grid only")
        s(self, "steps", int(self.steps) if self.steps is not None else DEFAULT_STEPS[attack])
        restarts = self.restarts if self.restarts is not None else (5 if fixed and version == "plus" else 1)
        s(self, "restarts", int(restarts))
        obj = str(self.objective).strip().lower()
        if obj not in PGD_OBJECTIVES:
            raise UsageError(f"unknown --objective {self.objective!r}; choose one of {', '.join(PGD_OBJECTIVES)}")
        s(self, "objective", obj)
        s(self, "seed", int(self.seed))
        s(self, "batch", int(self.batch))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = list(self.eps)
        d["aa_attacks"] = list(self.aa_attacks)
        extra = d.pop("extra")
        d.update(extra)
        return d


def same_config(a: dict, b: dict) -> bool:
    """Whether two recorded configurations describe the same table (resume check)."""
    skip = {"out", "resume", "force", "quiet", "device"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def attack_seed(seed: int, batch_index: int, eps: float) -> int:
    """The seed of one attack call: a hash of ``(seed, batch index, eps)``, 31 bits."""
    key = f"robcli-attack|{int(seed)}|{int(batch_index)}|{float(eps)!r}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 33


def margins(logits, cls):
    """``logits[cls] - max_{c != cls} logits[c]`` (eq. 2/3's decision margin w.r.t. the clean prediction)."""
    from robcli.attacks.pgd import margin

    return margin(logits, cls)


def _prepare(model, device, four_d: bool):
    """Eval mode on ``device``; channels_last for conv nets on 4-D inputs; a forward that converts inputs.

    The forward shows every output to its ``watch`` (:class:`robcli.models.finite.FiniteWatch`), so the
    non-finite logits an attack meets anywhere in its iterations are noticed without a host sync per call.
    """
    import torch
    import torch.nn as nn

    from robcli.models.finite import FiniteWatch

    model = model.to(device).eval()
    if four_d:
        try:
            model = model.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):  # pragma: no cover - exotic modules (TorchScript/export)
            four_d = False

    class _Forward(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.watch = FiniteWatch()

        def forward(self, x):
            if four_d and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.watch.see(self.net(x))

    return _Forward(model).eval()


def verify_points(x_adv, x, eps: float, norm: str, attack: str):
    """Check (and repair float-rounding excess of) attack outputs; return points inside ball and box.

    Raises:
        AttackInternalError: non-finite values, values outside [0,1], or a perturbation beyond the ball by
            more than :data:`HARD_REL` relative.
    """
    import torch

    if x_adv.shape != x.shape:
        raise AttackInternalError(f"{attack} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackInternalError(f"{attack} returned non-finite inputs")
    if x_adv.numel() and (float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0):
        raise AttackInternalError(f"{attack} returned inputs outside [0,1] "
                                  f"(min {float(x_adv.min()):.3g}, max {float(x_adv.max()):.3g})")
    x_adv = x_adv.to(x.dtype)
    d64 = (x_adv.double() - x.double()).flatten(1)
    pert = d64.abs().amax(1) if norm == "Linf" else d64.norm(dim=1)
    if not pert.numel():
        return x_adv
    if float(pert.max()) > eps * (1 + HARD_REL) + STRICT_ABS:
        raise AttackInternalError(
            f"{attack} returned a perturbation of {norm} norm {float(pert.max()):.6g} > eps = {eps:.6g}"
        )
    over = pert > eps * (1 + STRICT_REL) + STRICT_ABS
    if over.any():  # float rounding only: pull back inside, keeping a margin for the float32 cast
        dim = d64.shape[1]
        d = d64[over]
        if norm == "Linf":
            lim = max(eps - 2 * STRICT_ABS, 0.0)
            d = d.clamp(-lim, lim)
        else:
            target = max(eps * (1 - STRICT_REL) - math.sqrt(dim) * 1.2e-7, 0.0)
            d = d * (target / d.norm(dim=1, keepdim=True).clamp_min(1e-300))
        fixed = (x[over].double().flatten(1) + d).clamp(0, 1).to(x.dtype).view_as(x[over])
        x_adv = x_adv.clone()
        x_adv[over] = fixed
        d64 = (x_adv.double() - x.double()).flatten(1)
        pert = d64.abs().amax(1) if norm == "Linf" else d64.norm(dim=1)
        if float(pert.max()) > eps * (1 + STRICT_REL) + STRICT_ABS:  # pragma: no cover - defensive
            raise AttackInternalError(f"{attack}: could not bring a point inside the {norm} ball")
    return x_adv


def _run_one(cfg: AttackConfig, fwd, x, y, eps: float, seed: int, num_classes: int, notes: list[str]):
    """Attack ``x`` (moving away from labels ``y`` = clean predictions) at ``eps`` with the configured attack."""
    import torch

    from robcli.attacks.aa import run_pyautoattack
    from robcli.attacks.apgd import apgd, pgd_restarts
    from robcli.attacks.grid import grid_search
    from robcli.utils.seeding import make_generator

    gen = make_generator(seed, x.device)
    a = cfg.attack
    if a == "pgd":
        return pgd_restarts(fwd, x, y, cfg.objective, eps=eps, norm=cfg.norm, steps=cfg.steps,
                            restarts=cfg.restarts, generator=gen)
    if a == "apgd-conf":
        return apgd(fwd, x, y, "conf", eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                    generator=gen)
    if a == "grid":
        x1 = apgd(fwd, x, y, "ce", eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts, generator=gen)
        with torch.no_grad():
            left = torch.nonzero(fwd(x1).argmax(1) == y).flatten()
            if left.numel():
                g = grid_search(fwd, x[left], y[left], eps=eps, norm=cfg.norm, points=cfg.grid_points)
                hit = fwd(g).argmax(1) != y[left]
                x1[left[hit]] = g[hit]
        return x1
    with torch.no_grad():
        return run_pyautoattack(a, fwd, x, y, eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                                seed=seed, num_classes=num_classes, version=cfg.version,
                                aa_attacks=cfg.aa_attacks, notes=notes)


def _row_block(idx, labels, eps, cfg, bi, clean_pred, clean_margin, clean_conf, adv_pred, adv_margin, pert,
               adv_conf, found_eps, reused):
    robust = adv_pred == clean_pred
    correct = clean_pred == labels
    n = len(idx)
    return {
        "idx": idx, "label": labels, "eps": np.full(n, float(eps)), "norm": [cfg.norm] * n,
        "attack": [cfg.attack] * n, "clean_pred": clean_pred, "adv_pred": adv_pred.copy(), "correct": correct,
        "robust": robust, "clean_margin": clean_margin, "adv_margin": adv_margin.copy(), "pert_norm": pert.copy(),
        "clean_conf": clean_conf, "adv_conf_other": adv_conf.copy(), "found_eps": found_eps.copy(),
        "reused": reused.copy(), "steps": np.full(n, cfg.steps), "restarts": np.full(n, cfg.restarts),
        "version": [cfg.version if cfg.attack == "autoattack" else ""] * n, "batch_index": np.full(n, bi),
    }


def run_attack(
    model,
    data,
    cfg: AttackConfig,
    *,
    device,
    done=None,
    checkpoint: Callable | None = None,
    progress: Callable | None = None,
    notes: list[str] | None = None,
):
    """Attack every selected example at every radius of ``cfg.eps``; one row per (example, eps).

    Args:
        model: [0,1] inputs -> logits; moved to ``device``, put in eval mode, parameters frozen here.
        data: a :class:`robcli.data.SplitData`, already selected.
        cfg: the configuration.
        done: rows of a partial table (resume): (batch, eps) blocks present there are taken, not recomputed.
        checkpoint: ``checkpoint(df)`` after each (batch, eps) block with all rows so far.
        progress: ``progress(done, total, desc)``, one task per eps.
        notes: receives warnings of pyautoattack's sanity checks.

    Returns:
        pandas DataFrame with :data:`COLUMNS`, sorted by (idx, eps).

    Non-finite logits: the clean logits of every example are checked before anything is attacked (one
    forward pass each), and every forward pass of every attack is watched on the device; a non-finite
    logit at a point of the ball makes that example's robustness undefined (it is neither robust nor a
    flip, and ``robust`` is a bool), so the run stops with :class:`~robcli.errors.NonFiniteOutput` naming
    the examples and eps, instead of writing rows that would count it as either.

    Raises:
        UsageError: grid on inputs of dimension > 3, or too few classes for a DLR attack.
        ModelError: the model's output is not (batch, num_classes) logits.
        NonFiniteOutput: NaN/inf logits on a clean input, or met by the attack inside a ball.
        AttackInternalError: an attack returned an invalid point.
    """
    import pandas as pd
    import torch

    from robcli.attacks.grid import check_dim

    device = torch.device(device)
    notes = notes if notes is not None else []
    info = data.info
    K = int(info.num_classes)
    shape = tuple(info.input_shape)
    if cfg.attack == "grid":
        check_dim(shape)
    check_classes(cfg.attack, K, cfg.version, cfg.aa_attacks)
    check_inputs(cfg.attack, shape, cfg.version, cfg.aa_attacks)
    fwd = _prepare(model, device, len(shape) == 3)
    watch = fwd.watch
    saved = [(p, p.requires_grad) for p in fwd.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    n = len(data)
    n_batches = (n + cfg.batch - 1) // cfg.batch
    have: dict[tuple[int, float], dict] = {}
    if done is not None and len(done):
        for r in done[COLUMNS].to_dict("records"):
            have[(int(r["idx"]), float(r["eps"]))] = r
    blocks: list = []
    if have:
        blocks.append(pd.DataFrame(list(have.values()), columns=COLUMNS))
    all_idx = data.idx.numpy().astype(np.int64)
    counts = {e: 0 for e in cfg.eps}
    try:
        from robcli.models.finite import check_clean_logits

        check_clean_logits(fwd, data, data.idx, batch=cfg.batch, device=device)  # before anything is attacked
        for bi in range(n_batches):
            lo, hi = bi * cfg.batch, min(n, (bi + 1) * cfg.batch)
            idx = all_idx[lo:hi]
            need = [e for e in cfg.eps if not all((int(i), float(e)) in have for i in idx)]
            if need:
                xb, yb = data.get(torch.arange(lo, hi))
                xb = xb.to(device)
                with torch.no_grad():
                    logits = fwd(xb)
                    if logits.dim() != 2 or logits.shape[1] != K:
                        raise ModelError(f"model output has shape {tuple(logits.shape)}; expected (batch, {K}) logits")
                    cp_t = logits.argmax(1)
                    clean_pred = cp_t.cpu().numpy().astype(np.int64)
                    clean_margin = margins(logits, cp_t).double().cpu().numpy()
                    clean_conf = logits.softmax(1).amax(1).double().cpu().numpy()
            labels = (yb.numpy() if need else None)
            m = hi - lo
            nonrob = np.zeros(m, dtype=bool)
            adv_pred = np.zeros(m, dtype=np.int64)
            adv_margin = np.zeros(m)
            pert = np.zeros(m)
            adv_conf = np.zeros(m)
            found = np.full(m, np.nan)
            for eps in cfg.eps:
                key_rows = [have.get((int(i), float(eps))) for i in idx]
                if all(r is not None for r in key_rows):  # resumed block: restore the sweep state from it
                    nonrob = np.array([not r["robust"] for r in key_rows])
                    adv_pred = np.array([r["adv_pred"] for r in key_rows], dtype=np.int64)
                    adv_margin = np.array([r["adv_margin"] for r in key_rows], dtype=float)
                    pert = np.array([r["pert_norm"] for r in key_rows], dtype=float)
                    adv_conf = np.array([r["adv_conf_other"] for r in key_rows], dtype=float)
                    found = np.array([r["found_eps"] for r in key_rows], dtype=float)
                else:
                    reused = nonrob.copy()
                    todo = np.nonzero(~nonrob)[0]
                    if todo.size:
                        t = torch.as_tensor(todo, device=device)
                        xs, ys = xb[t], cp_t[t]
                        watch.reset()
                        try:
                            if eps > 0:
                                xa = _run_one(cfg, fwd, xs, ys, eps, attack_seed(cfg.seed, bi, eps), K, notes)
                                xa = verify_points(xa.detach().to(device), xs, eps, cfg.norm, cfg.attack)
                            else:
                                xa = xs.clone()
                        except Exception:
                            if watch.tripped():  # an attack that choked on NaN logits (e.g. NaN gradients)
                                _raise_nonfinite(cfg, eps, idx[todo], None)
                            raise
                        with torch.no_grad():
                            la = fwd(xa)
                            if watch.tripped():  # one sync per (batch, eps) block, which syncs below anyway
                                from robcli.models.finite import nonfinite_rows

                                _raise_nonfinite(cfg, eps, idx[todo], nonfinite_rows(la).cpu().numpy())
                            same = (xa == xs).flatten(1).all(1)
                            la[same] = logits[t][same]  # the clean point itself: identical outputs by definition
                            pa = la.argmax(1)
                            d64 = (xa.double() - xs.double()).flatten(1)
                            pn = d64.abs().amax(1) if cfg.norm == "Linf" else d64.norm(dim=1)
                            adv_pred[todo] = pa.cpu().numpy()
                            adv_margin[todo] = margins(la, ys).double().cpu().numpy()
                            pert[todo] = pn.cpu().numpy()
                            adv_conf[todo] = la.softmax(1).scatter(1, ys[:, None], float("-inf")).amax(1).double().cpu().numpy()
                        flipped = adv_pred[todo] != clean_pred[todo]
                        newly = todo[flipped]
                        found[newly] = eps
                        nonrob[newly] = True
                    blk = _row_block(idx, labels, eps, cfg, bi, clean_pred, clean_margin, clean_conf, adv_pred,
                                     adv_margin, pert, adv_conf, found, reused)
                    df_blk = pd.DataFrame(blk, columns=COLUMNS)
                    blocks.append(df_blk)
                    for r in df_blk.to_dict("records"):
                        have[(int(r["idx"]), float(r["eps"]))] = r
                    if checkpoint is not None:
                        checkpoint(_frame(blocks))
                counts[eps] += 1
                if progress is not None:
                    progress(counts[eps], n_batches, f"{cfg.attack} eps={eps:.4g}")
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)
    return _frame(blocks)


def _raise_nonfinite(cfg: AttackConfig, eps: float, ids, at_points) -> None:
    """Stop the attack: the model's logits were non-finite somewhere in the eps-ball of these examples."""
    from robcli.errors import NonFiniteOutput
    from robcli.models.finite import describe

    ids = np.asarray(ids)
    if at_points is not None and at_points.any():
        where = f"at the adversarial points of {describe(ids[at_points])}"
    else:
        where = f"inside the eps-balls of examples {describe(ids)} (met during the attack's iterations)"
    raise NonFiniteOutput(
        f"returned non-finite logits (NaN or inf) {where}, {cfg.attack} at {cfg.norm} eps {eps:.4g}: robustness "
        "there is undefined (neither robust nor a flip), so the attack stops and writes nothing; fix the model's "
        "numerics or leave those examples out (--subset)"
    )


def _frame(blocks):
    import pandas as pd

    df = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=COLUMNS)
    df = df.drop_duplicates(subset=["idx", "eps"], keep="last")
    df = df.astype({"idx": "int64", "label": "int64", "clean_pred": "int64", "adv_pred": "int64",
                    "correct": bool, "robust": bool, "reused": bool, "steps": "int64", "restarts": "int64",
                    "batch_index": "int64"})
    return df.sort_values(["idx", "eps"], kind="stable").reset_index(drop=True)[COLUMNS]


def summarize(df):
    """Natural accuracy, robust accuracy (eq. 2) and robust inaccuracy (eq. 3) per (attack, norm, eps).

    Fractions of all examples: ``nat_acc`` = F(x) = y; ``robust_acc`` = F(x) = y and no adversarial point
    found; ``robust_inacc`` = F(x) != y and no adversarial point found; ``nonrobust`` = a point found.
    """
    import pandas as pd

    out = []
    for (attack, norm, eps), g in df.groupby(["attack", "norm", "eps"], sort=True):
        c, r = g["correct"].to_numpy(bool), g["robust"].to_numpy(bool)
        out.append({"attack": attack, "norm": norm, "eps": float(eps), "n": len(g), "nat_acc": float(c.mean()),
                    "robust_acc": float((c & r).mean()), "robust_inacc": float((~c & r).mean()),
                    "nonrobust": float((~r).mean())})
    return pd.DataFrame(out)


def _eps_text(eps: float) -> str:
    k = eps * 255
    return f"{eps:.4g} ({round(k)}/255)" if abs(k - round(k)) < 1e-6 and eps > 0 else f"{eps:.4g}"


def summary_text(df) -> str:
    """The short human summary printed to stderr (fractions of all attacked examples)."""
    lines = []
    for _, r in summarize(df).iterrows():
        lines.append(
            f"{r['attack']} {r['norm']} eps={_eps_text(r['eps'])}  n={int(r['n'])}  natural acc {r['nat_acc']:.3f}  "
            f"robust acc {r['robust_acc']:.3f}  robust inaccuracy {r['robust_inacc']:.3f}"
        )
    return "\n".join(lines)
