"""Training the mixing network alpha_theta (the adaptive-smoothing paper's Sec. 4.2, 4.4, 5.2, App. C.2, D.1).

Composite loss (the adaptive-smoothing paper's eq. 8), per example, with pseudo label alpha~ = 0 for clean inputs (prefer g) and 1 for
attacked inputs (prefer h):

    c_CE * CE(h^alpha(x'), y) + c_BCE * BCE(alpha(x'), alpha~) + c_prod * CE(h^alpha(x'), y) * BCE(alpha(x'), alpha~)

Defaults are the best constants of App. C.2 / Table 6: c_CE = 0, c_BCE = 1.5, c_prod = 0.2.

Training attacks (Sec. 5.2): per batch a random number of steps in [1, steps], per example a random radius
U(eps_low * eps, eps), and (settings B, C) a randomly weighted term ``w * log(1 - alpha)`` with
w ~ U(0, alpha_weight) that tries to trick the mixing network into favoring g:
  * A: gray-box PGD (alpha detached), * B: white-box PGD, * C: APGD-CE + targeted APGD-DLR (APGD components
    of AutoAttack, as in the paper; FAB/Square excluded from training).
The full (0, 1) range of alpha is used throughout training (App. D.1); the alpha range applies at evaluation.

This does not fit the generic ``fn(model, x, y, cfg, gen)`` loss loop: the attack must run with the alpha
network in eval mode, the two halves of the batch carry pseudo labels, and the base models must run once per
step under ``no_grad``; hence this module's own training function.

Speed: one optimizer step = the attack (``k`` forward+backward passes of the mixture) + ONE forward pass of
both base models (no grad, features tapped by hooks in that same pass) + forward/backward of the small alpha
network. The base models are never run twice for the same inputs within the update.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from robcli.errors import TrainingCollapse, UsageError
from robcli.mixing.attacks import apgd, make_loss, pgd_mix, top_targets
from robcli.mixing.mixed import MixedClassifier

TRAIN_SETTINGS = ("A", "B", "C")


@dataclass(frozen=True)
class MixnetConfig:
    """Hyperparameters of mixing-network training (recorded in card.json).

    Attributes:
        eps, norm: training threat model. steps: max attack steps (randomized in [1, steps]).
        eps_low: radii are drawn from U(eps_low * eps, eps) per example.
        setting: training attack, A, B or C (the adaptive-smoothing paper's Sec. 4.2).
        alpha_weight: max weight of the log(1 - alpha) attack term (B, C); drawn per batch from U(0, max).
        c_ce, c_bce, c_prod: composite loss constants (eq. 8); defaults from App. C.2.
        epochs, batch, lr, weight_decay: AdamW training (Sec. 5.2).
        ema: EMA decay of the alpha network's weights (App. D.1 used 0.8; None = off).
        width, blocks, sigmoid_scale: alpha network size and sigmoid input scale (App. C.2, Table 7: 2).
    """

    eps: float = 8 / 255
    norm: str = "Linf"
    steps: int = 10
    eps_low: float = 0.25
    setting: str = "B"
    alpha_weight: float = 1.0
    c_ce: float = 0.0
    c_bce: float = 1.5
    c_prod: float = 0.2
    epochs: int = 10
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema: float | None = None
    width: int = 16
    blocks: int = 1
    sigmoid_scale: float = 2.0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.setting.upper() not in TRAIN_SETTINGS:
            raise UsageError(f"--train-attack {self.setting!r}: choose A (gray-box PGD), B (white-box PGD) or C (APGD)")
        if self.norm not in ("Linf", "L2"):
            raise UsageError(f"--norm {self.norm!r}: choose Linf or L2")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise UsageError("mixing-network training needs --eps > 0 (attacked inputs are half of its data)")
        if self.steps < 1:
            raise UsageError("--attack-steps must be >= 1")
        if not (0.0 <= self.eps_low <= 1.0):  # also refuses NaN
            raise UsageError(f"--eps-low {self.eps_low!r} must lie in [0, 1] (radii are drawn from U(eps_low*eps, eps))")
        for n in ("c_ce", "c_bce", "c_prod", "alpha_weight", "weight_decay"):
            v = getattr(self, n)
            if not (math.isfinite(v) and v >= 0):
                flag = "--mix-attack-weight" if n == "alpha_weight" else f"--{n.replace('_', '-')}"
                raise UsageError(f"{flag} {v!r} must be a finite number >= 0")
        if self.c_ce == self.c_bce == self.c_prod == 0:
            raise UsageError("the composite loss constants c_CE, c_BCE, c_prod are all 0")
        if self.epochs < 1 or self.batch < 2:
            raise UsageError("need --epochs >= 1 and --batch >= 2")
        if not (self.lr > 0):
            raise UsageError("--lr must be > 0")
        if self.ema is not None and not (0.0 < self.ema < 1.0):
            raise UsageError("--ema decay must lie in (0, 1)")
        if self.width < 1 or self.blocks < 1 or not (math.isfinite(self.sigmoid_scale) and self.sigmoid_scale > 0):
            raise UsageError("--width and --blocks must be >= 1 and --sigmoid-scale a finite number > 0")

    def as_dict(self) -> dict:
        return asdict(self)


def composite_loss(logits: torch.Tensor, alpha: torch.Tensor, y: torch.Tensor, pseudo: torch.Tensor,
                   c_ce: float, c_bce: float, c_prod: float) -> tuple[torch.Tensor, dict]:
    """the adaptive-smoothing paper's eq. (8), batch mean. ``alpha`` in (0, 1) (B,), ``pseudo`` in {0, 1} (B,)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    bce = F.binary_cross_entropy(alpha.clamp(1e-6, 1 - 1e-6), pseudo.to(alpha.dtype), reduction="none")
    loss = (c_ce * ce + c_bce * bce + c_prod * ce * bce).mean()
    return loss, {"ce": float(ce.detach().mean()), "bce": float(bce.detach().mean()), "loss": float(loss.detach())}


def training_attack(model: MixedClassifier, x: torch.Tensor, y: torch.Tensor, cfg: MixnetConfig,
                    gen: torch.Generator) -> torch.Tensor:
    """Randomized training attack (radius per example, steps per batch, alpha-term weight per batch)."""
    dev = gen.device
    B = x.shape[0]
    u = torch.rand(B, generator=gen, device=dev).to(x)
    eps = cfg.eps * (cfg.eps_low + (1 - cfg.eps_low) * u)
    steps = int(torch.randint(1, cfg.steps + 1, (1,), generator=gen, device=dev).item())
    w = float(torch.rand(1, generator=gen, device=dev).item()) * cfg.alpha_weight
    s = cfg.setting.upper()
    if s == "A":
        with model.gray_box():
            return pgd_mix(model, x, y, eps=eps, norm=cfg.norm, steps=steps)
    if s == "B":
        return pgd_mix(model, x, y, eps=eps, norm=cfg.norm, steps=steps, loss=make_loss("ce", w))
    # C: half the batch untargeted APGD-CE, half targeted APGD-DLR at a random runner-up class (per example radii
    # are not supported by APGD's step schedule: one radius per batch, drawn like the others)
    e = float(eps.mean())
    half = B // 2
    xa = x.clone()
    xa[:half] = apgd(model, x[:half], y[:half], eps=e, norm=cfg.norm, n_iter=max(steps, 2),
                     loss=make_loss("ce", w), generator=gen)
    if B - half > 0:
        tg = top_targets(model, x[half:], 3)
        t = tg[int(torch.randint(0, len(tg), (1,), generator=gen, device=dev).item())]
        kind = "dlr-targeted" if model.num_classes is None or model.num_classes >= 3 else "ce-targeted"
        xa[half:] = apgd(model, x[half:], y[half:], eps=e, norm=cfg.norm, n_iter=max(steps, 2),
                         loss=make_loss(kind, w), target=t, generator=gen)
    return xa


def mixnet_step(model: MixedClassifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                x_adv: torch.Tensor, cfg: MixnetConfig) -> dict:
    """One update of the alpha network on clean (pseudo label 0) + attacked (pseudo label 1) inputs.

    The base models run ONCE on the concatenated batch, under ``no_grad`` (they are frozen); the features for
    alpha come from hooks in that same pass.
    """
    xb = torch.cat([x, x_adv])
    yb = torch.cat([y, y])
    pseudo = torch.cat([torch.zeros_like(y), torch.ones_like(y)]).float()
    model.train()
    with model.full_range():
        with torch.no_grad():
            zg, zh, feats = model.members(xb)
        a = model.alpha_from(feats)
        logits = model.mix(zg, zh, a)
        loss, terms = composite_loss(logits, a, yb, pseudo, cfg.c_ce, cfg.c_bce, cfg.c_prod)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        terms["alpha_clean"] = float(a[: x.shape[0]].mean())
        terms["alpha_adv"] = float(a[x.shape[0]:].mean())
    return terms


class EMA:
    """Exponential moving average of the alpha network's parameters and buffers (the adaptive-smoothing paper's App. D.1)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(net).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for s, p in zip(self.shadow.state_dict().values(), net.state_dict().values()):
            if s.dtype.is_floating_point:
                s.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            else:
                s.copy_(p)


def train_mixnet(model: MixedClassifier, x_train: torch.Tensor, y_train: torch.Tensor, cfg: MixnetConfig, *,
                 callback=None, device=None) -> list[dict]:
    """Train ``model.alpha_net`` (base models frozen). Returns one log row per epoch.

    Args:
        model: an adaptive ``MixedClassifier`` (its alpha network is trained in place; with EMA the EMA
            weights are copied in at the end).
        x_train, y_train: training inputs in [0, 1] and labels (CPU or device tensors).
        callback: called as ``callback(epoch, row)`` after each epoch (progress display).

    Raises:
        UsageError: a fixed-alpha model. TrainingCollapse: a non-finite loss.
        NonFiniteOutput: a member (``g``/``h``) returned NaN/inf logits on a clean training input (checked
            first) or at a training attack's point (then instead of TrainingCollapse: lowering --lr would
            not help).
    """
    from robcli.models.finite import check_clean_logits, raise_if_tripped, watching

    if not model.adaptive:
        raise UsageError("train_mixnet needs a mixture with an alpha network, not a fixed alpha")
    dev = torch.device(device) if device is not None else next(model.alpha_net.parameters()).device
    model.to(dev)
    ids = torch.arange(x_train.shape[0])
    for m in ("g", "h"):
        check_clean_logits(getattr(model, m), x_train, ids, batch=max(cfg.batch, 256), device=dev,
                           what="clean training inputs", member=m)
    with watching(model, "g", "h") as watches:
        try:
            return _train_mixnet(model, x_train, y_train, cfg, callback, dev)
        except TrainingCollapse:
            raise_if_tripped(watches, "returned non-finite logits (NaN or inf) at the training attack's points "
                                      "(the mixing-network loss became non-finite); fix the model's numerics")
            raise


def _train_mixnet(model: MixedClassifier, x_train, y_train, cfg: MixnetConfig, callback, dev) -> list[dict]:
    from robcli.utils.seeding import make_generator

    gen = make_generator(cfg.seed, dev)
    cpu_gen = make_generator(cfg.seed + 1)
    opt = torch.optim.AdamW(model.alpha_net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model.alpha_net, cfg.ema) if cfg.ema is not None else None
    n = x_train.shape[0]
    log = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=cpu_gen)
        sums: dict[str, float] = {}
        nb = 0
        for s in range(0, n - 1, cfg.batch):
            ix = perm[s:s + cfg.batch]
            if ix.numel() < 2:
                continue
            x = x_train[ix].to(dev)
            y = y_train[ix].to(dev)
            model.eval()  # attack with BN running statistics (the alpha network in eval mode)
            with model.full_range():
                x_adv = training_attack(model, x, y, cfg, gen)
            terms = mixnet_step(model, opt, x, y, x_adv, cfg)
            if not math.isfinite(terms["loss"]):
                raise TrainingCollapse(f"mixing-network loss became {terms['loss']} in epoch {epoch + 1}; lower --lr")
            if ema is not None:
                ema.update(model.alpha_net)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            nb += 1
        row = {"epoch": epoch + 1, **{k: v / max(nb, 1) for k, v in sums.items()},
               "time": time.perf_counter() - t0}
        log.append(row)
        if callback is not None:
            callback(epoch + 1, row)
    if ema is not None:
        model.alpha_net.load_state_dict(ema.shadow.state_dict())
    model.eval()
    return log


def alpha_values(model: MixedClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """alpha(x) per example (range applied as configured), for writing to a table."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            out.append(model.forward_with_alpha(x[s:s + batch])[1].detach().cpu())
    return torch.cat(out) if out else torch.zeros(0)

