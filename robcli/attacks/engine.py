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
run resumed from its parts equals an uninterrupted run, and ``batch`` is part of the configuration. One batch is
one chunk of a :class:`robcli.tables.run.TableRun`: it is written as one part once all its radii are done, so a
killed run loses at most the batch in flight.

Attacks are looked up in :data:`ATTACK_REGISTRY` (name -> :class:`AttackSpec`); the built-in ones are
registered here, the mixture settings ``mix-A`` .. ``mix-D`` by :mod:`robcli.mixing.attacks`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from robcli.attacks.aa import AA_ATTACKS, AA_VERSIONS, check_classes, check_inputs
from robcli.errors import ModelError, UsageError
from robcli.utils.parse import parse_eps, parse_norm
from robcli.utils.registry import Entry, Registry
from robcli.utils.seeding import hashed_seed

PYAUTOATTACK = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack")
# the configuration fields an attack may take beyond attack/eps/norm/batch/seed (AttackSpec.flags picks)
KNOBS = ("steps", "restarts", "version", "aa_attacks", "objective", "grid_points", "mix_min", "mix_max",
         "mix_attack_weight", "n_targets", "n_queries")


@dataclass(frozen=True)
class AttackSpec:
    """What the engine needs to know about one attack.

    Attributes:
        runner: ``runner(cfg, fwd, x, y, eps, seed, num_classes, notes) -> x_adv``: points for inputs ``x``
            moving away from labels ``y`` (the clean predictions); ``seed`` is the (batch, eps) seed.
        default_steps: ``--steps`` when not given.
        steps_counts: what ``--steps`` counts for this attack (for help and messages).
        flags: the :data:`KNOBS` that apply; any other knob given is refused.
        table_name: the ``attack`` column (and recorded name).
        check: ``check(cfg, input_shape, num_classes)`` before anything runs (UsageError).
        model_check: ``model_check(cfg, model)`` before the model is loaded (``model``: the ``--model`` text).
        load: ``load(cfg, model, dataset_info, device) -> LoadedModel`` instead of :func:`robcli.models.load_model`.
        columns: ``columns(fwd, x) -> {name: values}``: per-example values at a point; the table gets
            ``<name>_clean`` (at x) and ``<name>_adv`` (at the adversarial point, repeated when reused).
        members: submodules of the model watched separately for non-finite logits (a mixture's ``g``/``h``).
    """

    runner: Callable
    default_steps: int
    steps_counts: str
    flags: tuple[str, ...] = ()
    table_name: str = ""
    check: Callable | None = None
    model_check: Callable | None = None
    load: Callable | None = None
    columns: Callable | None = None
    column_names: tuple[str, ...] = ()
    members: tuple[str, ...] = ()


ATTACK_REGISTRY: Registry[AttackSpec] = Registry("attack", modules=("robcli.mixing.attacks",), normalize=str.lower)


def list_attacks(pattern: str = "*") -> list[str]:
    """The registered attack names (built-in and mixture settings)."""
    return ATTACK_REGISTRY.names(pattern)


def get_attack(name: str) -> Entry[AttackSpec]:
    """The registry entry of an attack (case-insensitive; UsageError naming the choices when unknown)."""
    return ATTACK_REGISTRY.get(name)
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
        mix_min, mix_max: mixture settings: override the mixture's stored alpha range (both or neither).
        mix_attack_weight: ``mix-D``: weight ``w`` of the ``w * log(1 - alpha(x))`` term (``None`` -> 1).
        n_targets, n_queries: ``mix-D``: target classes of its targeted parts (9), Square queries (5000).
        batch: examples per attack call (part of the seeding, so it changes results).
        seed: base seed.
        precision: fp32, or bf16/fp16: every forward pass under CUDA autocast (robcli.models.precision).
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
    mix_min: float | None = None
    mix_max: float | None = None
    mix_attack_weight: float | None = None
    n_targets: int | None = None
    n_queries: int | None = None
    batch: int = 256
    seed: int = 0
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        entry = get_attack(str(self.attack))
        attack, spec = entry.name, entry.obj
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
        if self.grid_points is not None and attack != "grid":
            raise UsageError("--grid-points applies to --attack grid only")
        for name in ("steps", "restarts", "grid_points", "mix_min", "mix_max", "mix_attack_weight", "n_targets",
                     "n_queries"):
            if getattr(self, name) is not None and name not in spec.flags:
                raise UsageError(f"--{name.replace('_', '-')} does not apply to --attack {attack}"
                                 + (f" ({spec.steps_counts})" if name == "steps" else ""))
        for name in ("steps", "restarts", "grid_points", "batch", "n_targets", "n_queries"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or int(v) < 1):
                raise UsageError(f"--{name.replace('_', '-')} {v!r} must be a positive integer")
        if self.grid_points is not None and int(self.grid_points) < 2:
            raise UsageError(f"--grid-points {self.grid_points} must be >= 2")
        s(self, "steps", int(self.steps) if self.steps is not None else spec.default_steps)
        self._mixture_knobs(spec)
        restarts = self.restarts if self.restarts is not None else (5 if fixed and version == "plus" else 1)
        s(self, "restarts", int(restarts))
        obj = str(self.objective).strip().lower()
        if obj not in PGD_OBJECTIVES:
            raise UsageError(f"unknown --objective {self.objective!r}; choose one of {', '.join(PGD_OBJECTIVES)}")
        s(self, "objective", obj)
        s(self, "seed", int(self.seed))
        s(self, "batch", int(self.batch))
        from robcli.utils.device import parse_precision

        s(self, "precision", parse_precision(self.precision))
        if self.precision != "fp32" and spec.load is not None:
            raise UsageError(f"--precision {self.precision} does not apply to --attack {attack} (mixture attacks run "
                             "in fp32)")
        if self.precision == "fp16" and attack != "square":
            raise UsageError(f"--precision fp16 does not apply to --attack {attack}: its input gradients underflow in "
                             "fp16 without loss scaling, which would weaken the attack silently; use bf16 (fp32's "
                             "range) or fp32")

    def _mixture_knobs(self, spec: AttackSpec) -> None:
        s = object.__setattr__
        if (self.mix_min is None) != (self.mix_max is None):
            raise UsageError("give both --mix-min and --mix-max (or neither)")
        if self.mix_min is not None:
            from robcli.mixing.mixed import check_alpha_range

            lo, hi = check_alpha_range(float(self.mix_min), float(self.mix_max))
            s(self, "mix_min", float(lo))
            s(self, "mix_max", float(hi))
        if "mix_attack_weight" in spec.flags:
            w = 1.0 if self.mix_attack_weight is None else float(self.mix_attack_weight)
            if not (math.isfinite(w) and w >= 0):
                raise UsageError(f"--mix-attack-weight {w:g} must be a finite number >= 0")
            s(self, "mix_attack_weight", w)
        if "n_targets" in spec.flags:
            s(self, "n_targets", 9 if self.n_targets is None else int(self.n_targets))
        if "n_queries" in spec.flags:
            s(self, "n_queries", 5000 if self.n_queries is None else int(self.n_queries))

    @property
    def spec(self) -> AttackSpec:
        return get_attack(self.attack).obj

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = list(self.eps)
        d["aa_attacks"] = list(self.aa_attacks)
        for k in ("mix_min", "mix_max", "mix_attack_weight", "n_targets", "n_queries"):
            if d[k] is None:  # knobs of the mixture settings: recorded only where they apply
                del d[k]
        extra = d.pop("extra")
        d.update(extra)
        return d


def same_config(a: dict, b: dict) -> bool:
    """Whether two recorded configurations describe the same table (resume check)."""
    skip = {"out", "resume", "force", "quiet", "device"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def attack_seed(seed: int, batch_index: int, eps: float) -> int:
    """The seed of one attack call: a hash of ``(seed, batch index, eps)``, 31 bits."""
    return hashed_seed("robcli-attack", str(int(seed)), str(int(batch_index)), repr(float(eps)), bits=31)


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

        def _in(self, x):
            return x.contiguous(memory_format=torch.channels_last) if four_d and x.dim() == 4 else x

        def forward(self, x):
            return self.watch.see(self.net(self._in(x)))

        # a mixture's alpha(x) for the attacks that target it (mix-A .. mix-D) and its extra columns
        def forward_with_alpha(self, x):
            z, a = self.net.forward_with_alpha(self._in(x))
            return self.watch.see(z), a

        @property
        def adaptive(self) -> bool:
            return bool(getattr(self.net, "adaptive", False))

        def gray_box(self):
            return self.net.gray_box()

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


def _gen(seed: int, x):
    from robcli.utils.seeding import make_generator

    return make_generator(seed, x.device)


def _run_pgd(cfg, fwd, x, y, eps, seed, num_classes, notes):
    from robcli.attacks.apgd import pgd_restarts

    return pgd_restarts(fwd, x, y, cfg.objective, eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                        generator=_gen(seed, x))


def _run_apgd_conf(cfg, fwd, x, y, eps, seed, num_classes, notes):
    from robcli.attacks.apgd import apgd

    return apgd(fwd, x, y, "conf", eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                generator=_gen(seed, x))


def _run_grid(cfg, fwd, x, y, eps, seed, num_classes, notes):
    """APGD-CE, then the grid on the points APGD left robust (a cascade)."""
    from robcli.attacks.apgd import apgd
    from robcli.attacks.cascade import cascade
    from robcli.attacks.grid import grid_search

    gen = _gen(seed, x)
    return cascade(fwd, x, y, [
        lambda xs, ys: apgd(fwd, xs, ys, "ce", eps=eps, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                            generator=gen),
        lambda xs, ys: grid_search(fwd, xs, ys, eps=eps, norm=cfg.norm, points=cfg.grid_points),
    ])


def _run_pyautoattack(cfg, fwd, x, y, eps, seed, num_classes, notes):
    import torch

    from robcli.attacks.aa import run_pyautoattack

    with torch.no_grad():
        return run_pyautoattack(cfg.attack, fwd, x, y, eps=eps, norm=cfg.norm, steps=cfg.steps,
                                restarts=cfg.restarts, seed=seed, num_classes=num_classes, version=cfg.version,
                                aa_attacks=cfg.aa_attacks, notes=notes)


def _check_generic(cfg, shape, num_classes) -> None:
    check_classes(cfg.attack, num_classes, cfg.version, cfg.aa_attacks)
    check_inputs(cfg.attack, shape, cfg.version, cfg.aa_attacks)


def _check_grid(cfg, shape, num_classes) -> None:
    from robcli.attacks.grid import check_dim

    check_dim(shape)
    _check_generic(cfg, shape, num_classes)


def _register_builtins() -> None:
    sr = ("steps", "restarts")
    add = ATTACK_REGISTRY.add
    add("pgd", AttackSpec(_run_pgd, 40, "--steps counts PGD iterations", (*sr, "objective"), "pgd", _check_generic),
        "Madry et al.'s PGD with random start (ours), objective margin or ce")
    for name, what in (("apgd-ce", "APGD on cross-entropy"), ("apgd-dlr", "APGD on the DLR loss"),
                       ("apgd-t", "targeted APGD-DLR"), ("fab-t", "targeted FAB")):
        add(name, AttackSpec(_run_pyautoattack, 100, f"--steps counts {name} iterations", sr, name, _check_generic),
            f"{what} (pyautoattack)")
    add("square", AttackSpec(_run_pyautoattack, 5000, "--steps counts Square queries", sr, "square", _check_generic),
        "Square Attack, score-based (pyautoattack)")
    add("autoattack", AttackSpec(_run_pyautoattack, 100, "--steps counts APGD/FAB iterations of --version custom",
                                 (*sr, "version", "aa_attacks"), "autoattack", _check_generic),
        "AutoAttack (pyautoattack): standard, plus, rand or custom")
    add("apgd-conf", AttackSpec(_run_apgd_conf, 100, "--steps counts APGD iterations", sr, "apgd-conf",
                                _check_generic), "APGD on eq. 21's confidence objective (ours)")
    add("grid", AttackSpec(_run_grid, 100, "--steps counts the APGD-CE iterations before the grid",
                           (*sr, "grid_points"), "grid", _check_grid),
        "APGD-CE, then an exhaustive grid over the ball (inputs of dimension <= 3)")


_register_builtins()
BUILTIN_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "apgd-conf", "fab-t", "square", "autoattack", "grid")
MIX_ATTACKS = ("mix-A", "mix-B", "mix-C", "mix-D")
ATTACK_NAMES = BUILTIN_ATTACKS + MIX_ATTACKS
DEFAULT_STEPS = {n: ATTACK_REGISTRY._entries[n].obj.default_steps for n in BUILTIN_ATTACKS}


def _row_block(idx, labels, eps, cfg, bi, clean_pred, clean_margin, clean_conf, adv_pred, adv_margin, pert,
               adv_conf, found_eps, reused):
    robust = adv_pred == clean_pred
    correct = clean_pred == labels
    n = len(idx)
    return {
        "idx": idx, "label": labels, "eps": np.full(n, float(eps)), "norm": [cfg.norm] * n,
        "attack": [cfg.spec.table_name or cfg.attack] * n, "clean_pred": clean_pred, "adv_pred": adv_pred.copy(),
        "correct": correct, "robust": robust, "clean_margin": clean_margin, "adv_margin": adv_margin.copy(),
        "pert_norm": pert.copy(), "clean_conf": clean_conf, "adv_conf_other": adv_conf.copy(),
        "found_eps": found_eps.copy(), "reused": reused.copy(), "steps": np.full(n, cfg.steps),
        "restarts": np.full(n, cfg.restarts), "version": [cfg.version if cfg.attack == "autoattack" else ""] * n,
        "batch_index": np.full(n, bi),
    }


def columns(cfg: AttackConfig) -> list[str]:
    """The columns of an attack table of this configuration (:data:`COLUMNS` plus the attack's own)."""
    extra = [f"{c}_{w}" for c in cfg.spec.column_names for w in ("clean", "adv")]
    return COLUMNS + extra


class _Batch:
    """The engine's state for one run: the prepared model, the checks, and the attack of one batch (= chunk)."""

    def __init__(self, model, data, cfg: AttackConfig, device, progress, notes, total: int):
        import torch

        self.cfg, self.data, self.spec = cfg, data, cfg.spec
        self.device = torch.device(device)
        self.notes = notes
        self.progress = progress
        self.total = total
        self.counts = {e: 0 for e in cfg.eps}
        info = data.info
        self.K = int(info.num_classes)
        shape = tuple(info.input_shape)
        if self.spec.check is not None:
            self.spec.check(cfg, shape, self.K)
        self.fwd = _prepare(model, self.device, len(shape) == 3)
        self.all_idx = data.idx.numpy().astype(np.int64)
        self.member_watches: dict = {}

    def __call__(self, bi: int, lo: int, hi: int):
        import pandas as pd
        import torch

        cfg, fwd, spec, device = self.cfg, self.fwd, self.spec, self.device
        idx = self.all_idx[lo:hi]
        xb, yb = self.data.get(torch.arange(lo, hi))
        xb = xb.to(device)
        with torch.no_grad():
            logits = fwd(xb)
            if logits.dim() != 2 or logits.shape[1] != self.K:
                raise ModelError(f"model output has shape {tuple(logits.shape)}; expected (batch, {self.K}) logits")
            cp_t = logits.argmax(1)
            clean_pred = cp_t.cpu().numpy().astype(np.int64)
            clean_margin = margins(logits, cp_t).double().cpu().numpy()
            clean_conf = logits.softmax(1).amax(1).double().cpu().numpy()
            extra_clean = spec.columns(fwd, xb) if spec.columns is not None else {}
        labels = yb.numpy()
        m = hi - lo
        nonrob = np.zeros(m, dtype=bool)
        adv_pred = np.zeros(m, dtype=np.int64)
        adv_margin, pert, adv_conf = np.zeros(m), np.zeros(m), np.zeros(m)
        extra_adv = {k: np.zeros(m) for k in extra_clean}
        found = np.full(m, np.nan)
        blocks = []
        for eps in cfg.eps:
            reused = nonrob.copy()
            todo = np.nonzero(~nonrob)[0]
            if todo.size:
                t = torch.as_tensor(todo, device=device)
                xs, ys = xb[t], cp_t[t]
                self._reset()
                try:
                    if eps > 0:
                        xa = spec.runner(cfg, fwd, xs, ys, eps, attack_seed(cfg.seed, bi, eps), self.K, self.notes)
                        xa = verify_points(xa.detach().to(device), xs, eps, cfg.norm, cfg.attack)
                    else:
                        xa = xs.clone()
                except Exception:
                    self._raise_if_tripped(eps, idx[todo], None)
                    raise
                with torch.no_grad():
                    la = fwd(xa)
                    self._raise_if_tripped(eps, idx[todo], la)  # one sync per (batch, eps) block
                    same = (xa == xs).flatten(1).all(1)
                    la[same] = logits[t][same]  # the clean point itself: identical outputs by definition
                    pa = la.argmax(1)
                    adv_pred[todo] = pa.cpu().numpy()
                    adv_margin[todo] = margins(la, ys).double().cpu().numpy()
                    pert[todo] = _pert_norm(xa, xs, cfg.norm).cpu().numpy()
                    adv_conf[todo] = la.softmax(1).scatter(1, ys[:, None], float("-inf")).amax(1).double().cpu().numpy()
                    if extra_adv:
                        for k, v in spec.columns(fwd, xa).items():
                            extra_adv[k][todo] = v
                flipped = adv_pred[todo] != clean_pred[todo]
                newly = todo[flipped]
                found[newly] = eps
                nonrob[newly] = True
            blk = _row_block(idx, labels, eps, cfg, bi, clean_pred, clean_margin, clean_conf, adv_pred,
                             adv_margin, pert, adv_conf, found, reused)
            for k in extra_clean:
                blk[f"{k}_clean"] = np.asarray(extra_clean[k], dtype=float)
                blk[f"{k}_adv"] = extra_adv[k].copy()
            blocks.append(pd.DataFrame(blk))
            self.counts[eps] += 1
            if self.progress is not None:
                self.progress(self.counts[eps], self.total, f"{cfg.spec.table_name or cfg.attack} eps={eps:.4g}")
        return _frame(blocks, columns(cfg))

    def _reset(self) -> None:
        self.fwd.watch.reset()
        for w in self.member_watches.values():
            w.reset()

    def _raise_if_tripped(self, eps, ids, logits) -> None:
        for name, w in self.member_watches.items():  # a mixture's member first, so the message names it
            if w.tripped():
                _raise_nonfinite(self.cfg, eps, ids, None, member=name)
        if self.fwd.watch.tripped():
            from robcli.models.finite import nonfinite_rows

            at = nonfinite_rows(logits).cpu().numpy() if logits is not None else None
            _raise_nonfinite(self.cfg, eps, ids, at)


def _pert_norm(xa, x, norm: str):
    """Per-example perturbation norm, computed in float64 (the table's ``pert_norm``)."""
    d64 = (xa.double() - x.double()).flatten(1)
    return d64.abs().amax(1) if norm == "Linf" else d64.norm(dim=1)


def run_attack(
    model,
    data,
    cfg: AttackConfig,
    *,
    device,
    run=None,
    chunks=None,
    merge: bool = True,
    progress: Callable | None = None,
    notes: list[str] | None = None,
):
    """Attack every selected example at every radius of ``cfg.eps``; one row per (example, eps).

    Args:
        model: [0,1] inputs -> logits; moved to ``device``, put in eval mode, parameters frozen here.
        data: a :class:`robcli.data.SplitData`, already selected.
        cfg: the configuration.
        run: a :class:`robcli.tables.run.TableRun` with chunk size ``cfg.batch``: only its pending chunks (batches)
            are attacked, each stored as one part, and the parts are merged into its table at the end. Without
            it everything is computed in memory.
        chunks: with ``run``: attack only these chunks of its plan (this process's share) instead of all
            pending ones.
        merge: with ``run``: merge the parts into its table at the end (``False``: leave them, return ``None``;
            :func:`robcli.distributed.run_table` merges once every process is done).
        progress: ``progress(done, total, desc)``, one task per eps.
        notes: receives warnings of pyautoattack's sanity checks.

    Returns:
        pandas DataFrame with :func:`columns`, sorted by (idx, eps) (``None`` with ``merge=False``).

    Non-finite logits: the clean logits of every example are checked before anything is attacked (one
    forward pass each), and every forward pass of every attack is watched on the device; a non-finite
    logit at a point of the ball makes that example's robustness undefined (it is neither robust nor a
    flip, and ``robust`` is a bool), so the run stops with :class:`~robcli.errors.NonFiniteOutput` naming
    the examples and eps (and a mixture's member), instead of writing rows that would count it as either.

    Raises:
        UsageError: grid on inputs of dimension > 3, too few classes for a DLR attack, a mixture setting on a
            model that is not one.
        ModelError: the model's output is not (batch, num_classes) logits.
        NonFiniteOutput: NaN/inf logits on a clean input, or met by the attack inside a ball.
        AttackInternalError: an attack returned an invalid point.
    """
    import contextlib

    from robcli.models.finite import check_clean_logits, watching
    from robcli.tables.run import plan_chunks

    if chunks is not None and run is None:
        raise ValueError("chunks needs a TableRun")  # a bug in the caller
    notes = notes if notes is not None else []
    if chunks is None:
        chunks = run.pending() if run is not None else plan_chunks(len(data), cfg.batch)
    work = _Batch(model, data, cfg, device, progress, notes, len(chunks))
    fwd = work.fwd
    saved = [(p, p.requires_grad) for p in fwd.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    frames = []
    try:
        with contextlib.ExitStack() as stack:
            if chunks:
                for name in work.spec.members:  # before anything is attacked; each member on its own
                    check_clean_logits(getattr(fwd.net, name), data, data.idx, batch=cfg.batch, device=work.device,
                                       member=name)
                check_clean_logits(fwd, data, data.idx, batch=cfg.batch, device=work.device)
                if work.spec.members:
                    work.member_watches = stack.enter_context(watching(fwd.net, *work.spec.members))
            for c in chunks:
                df = work(c.id, c.lo, c.hi)
                if run is not None:
                    run.write(c, df)
                else:
                    frames.append(df)
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)
    if run is None:
        return _frame(frames, columns(cfg))
    if not merge:
        return None
    return run.finish(sort_by=("idx", "eps"), frame=lambda fs: _frame(fs, columns(cfg)))


def _raise_nonfinite(cfg: AttackConfig, eps: float, ids, at_points, member: str | None = None) -> None:
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
        "numerics or leave those examples out (--subset)", member=member,
    )


def _frame(blocks, cols=COLUMNS):
    import pandas as pd

    blocks = [b for b in blocks if len(b)]
    df = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=cols)
    df = df.drop_duplicates(subset=["idx", "eps"], keep="last")
    df = df.astype({"idx": "int64", "label": "int64", "clean_pred": "int64", "adv_pred": "int64",
                    "correct": bool, "robust": bool, "reused": bool, "steps": "int64", "restarts": "int64",
                    "batch_index": "int64"})
    return df.sort_values(["idx", "eps"], kind="stable").reset_index(drop=True)[list(cols)]


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
