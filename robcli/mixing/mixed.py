"""The mixed classifier of Bai et al.: h^alpha(x) = log((1 - alpha) softmax(g(x)) + alpha softmax(h(x))).

Paper 002, eq. (4), and the adaptive-smoothing paper (004), eq. (5) and App. D.1. ``g`` is the accurate
("core") model, ``h`` the robust one. The output is a vector of log-probabilities, which are valid logits, so
every attack and every certifier that takes logits applies to the mixture unchanged.

Options:
  * ``mix_space="prob"`` (the paper's choice) mixes probabilities; ``"logit"`` mixes logits,
    ``(1 - alpha) g(x) + alpha h(x)``, only to reproduce the paper's prob-vs-logit comparison (App. B, Fig. 8).
  * Logit scales ``scale_g``/``scale_h`` (App. D.1: "scaling the outputs of h by a number between 0 and 1 and
    the outputs of g by a number greater than 1"): softmax(scale_g * g(x)), softmax(scale_h * h(x)).
    A scale is an inverse temperature, T = 1 / scale.
  * ``alpha``: a fixed float in [0, 1], or an :class:`robcli.mixing.alphanet.AlphaNet` that reads features of
    ``g`` and ``h`` tapped by forward hooks in the SAME forward pass that produces the logits (Sec. 4.3).
  * ``alpha_range=(alpha_min, alpha_max)``: the adaptive alpha is mapped affinely into this range,
    ``alpha_min + (alpha_max - alpha_min) * alpha_theta(x)``, only while ``use_range`` is on (evaluation; the
    training function switches it off, App. D.1: "this range is only applied during validation").

Both base models are frozen: their parameters never require gradients and they always run in eval mode,
whatever ``train()`` is called on the mixture (only the alpha network follows ``train()``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from robcli.errors import ModelError, UsageError

MIX_SPACES = ("prob", "logit")


def check_alpha(alpha: float, what: str = "alpha") -> float:
    """Validate a mixing weight: a finite number in [0, 1].

    Raises:
        UsageError: outside [0, 1] or not finite.
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {alpha!r} is not a number; it must lie in [0, 1]") from None
    if not math.isfinite(a) or a < 0.0 or a > 1.0:
        raise UsageError(f"{what} {alpha!r} must lie in [0, 1] (0: only the core model g, 1: only the robust model h)")
    return a


def check_alpha_range(alpha_min: float, alpha_max: float, names: tuple[str, str] = ("alpha_min", "alpha_max")
                      ) -> tuple[float, float]:
    """Validate (alpha_min, alpha_max): both in [0, 1] and alpha_min <= alpha_max.

    ``names``: how the two ends are named in messages (the flags the user gave, e.g. --mix-min/--mix-max).

    Raises:
        UsageError: on a bad range.
    """
    lo = check_alpha(alpha_min, names[0])
    hi = check_alpha(alpha_max, names[1])
    if lo > hi:
        raise UsageError(f"{names[0]} {lo:g} > {names[1]} {hi:g}: the range of alpha(x) is empty")
    return lo, hi


def check_scale(scale: float, what: str) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {scale!r} is not a number") from None
    if not math.isfinite(s) or s <= 0:
        raise UsageError(f"{what} {scale!r} must be a positive number (a logit scale = 1 / temperature)")
    return s


def probe_model(model: nn.Module, input_shape, device=None) -> int:
    """Number of classes of ``model`` on inputs of ``input_shape`` (one dry forward pass in eval mode).

    Raises:
        ModelError: the forward pass fails or does not return (1, K) logits.
    """
    was = model.training
    model.eval()
    p = next(iter(model.parameters()), None)
    dev = device if device is not None else (p.device if p is not None else "cpu")
    try:
        with torch.no_grad():
            out = model(torch.full((1, *input_shape), 0.5, device=dev))
    except Exception as e:  # shape mismatches surface as RuntimeError deep inside the model
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:140]
        raise ModelError(f"a forward pass on inputs of shape {tuple(input_shape)} failed ({msg})") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise ModelError("a base model must return a (batch, classes) tensor of logits")
    return int(out.shape[1])


def check_members(g_classes: int, h_classes: int, g_shape=None, h_shape=None) -> None:
    """Refuse base models that cannot be mixed.

    Raises:
        ModelError: different class counts or input shapes.
    """
    if g_shape is not None and h_shape is not None and tuple(g_shape) != tuple(h_shape):
        raise ModelError(
            f"cannot mix models with different input shapes: core g takes {tuple(g_shape)}, robust h takes {tuple(h_shape)}"
        )
    if int(g_classes) != int(h_classes):
        raise ModelError(f"cannot mix models with different class counts: core g has {g_classes}, robust h has {h_classes}")


def _log_weights(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log a, log(1 - a)) of per-example weights, exactly -inf at the endpoints a = 0 and a = 1.

    At an endpoint the mixture is then exactly the other member's log-probabilities (logaddexp(-inf, z) = z),
    with no trace of the member whose weight is 0. The inner ``where`` keeps the backward pass finite there
    (log(0) would give 0 * inf = nan): the gradient through the zero-weight member's branch is 0, as it was
    with the old clamps.
    """
    neg_inf = torch.full_like(a, float("-inf"))
    pos, below_one = a > 0, a < 1
    la = torch.where(pos, torch.log(torch.where(pos, a, torch.ones_like(a))), neg_inf)
    l1a = torch.where(below_one, torch.log1p(-torch.where(below_one, a, torch.zeros_like(a))), neg_inf)
    return la, l1a


def mix_log_probs(zg: torch.Tensor, zh: torch.Tensor, alpha, *, mix_space: str = "prob",
                  scale_g: float = 1.0, scale_h: float = 1.0) -> torch.Tensor:
    """Eq. (4) of 002 / eq. (5) of 004 on given logits.

    Args:
        zg, zh: logits of g and h, (B, K).
        alpha: float in [0, 1] or a tensor (B,) / (B, 1) of per-example weights.
        mix_space: ``prob``: log((1-a) softmax(s_g zg) + a softmax(s_h zh)) computed stably as a logsumexp of
            log-probabilities; ``logit``: (1-a) s_g zg + a s_h zh.

    Returns:
        (B, K) logits of the mixture (log-probabilities for ``prob``).
    """
    zg = zg * scale_g if scale_g != 1.0 else zg
    zh = zh * scale_h if scale_h != 1.0 else zh
    if isinstance(alpha, torch.Tensor):
        a = alpha.reshape(-1, 1).to(zg.dtype)
        if mix_space == "logit":
            return (1 - a) * zg + a * zh
        la, l1a = _log_weights(a)
    else:
        a = float(alpha)
        if mix_space == "logit":
            return (1 - a) * zg + a * zh
        la = torch.tensor(math.log(a) if a > 0 else float("-inf"), dtype=zg.dtype, device=zg.device)
        l1a = torch.tensor(math.log1p(-a) if a < 1 else float("-inf"), dtype=zg.dtype, device=zg.device)
        if a == 0.0:
            return F.log_softmax(zg, 1)
        if a == 1.0:
            return F.log_softmax(zh, 1)
    return torch.logaddexp(l1a + F.log_softmax(zg, 1), la + F.log_softmax(zh, 1))


class FeatureTaps:
    """Forward hooks that keep the outputs of named submodules of one model during its forward pass.

    Raises:
        ModelError: a layer name the model does not have (the message lists the available names).
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], who: str):
        modules = dict(model.named_modules())
        self.names = tuple(names)
        self.store: dict[str, torch.Tensor] = {}
        self.handles = []
        for n in self.names:
            if n not in modules or n == "":
                avail = [k for k in modules if k]
                raise ModelError(f"{who} has no layer {n!r}; available layers: {', '.join(avail)}")
            self.handles.append(modules[n].register_forward_hook(self._hook(n)))

    def _hook(self, name: str):
        def fn(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.store[name] = out

        return fn

    def pop(self) -> list[torch.Tensor]:
        try:
            feats = [self.store[n] for n in self.names]
        except KeyError as e:
            raise ModelError(f"layer {e.args[0]!r} was not run in the forward pass; choose layers on the main path") from None
        self.store = {}
        return feats

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class MixedClassifier(nn.Module):
    """h^alpha(x) = log((1 - alpha(x)) softmax(s_g g(x)) + alpha(x) softmax(s_h h(x))) (the mixing paper's eq. 4; the adaptive-smoothing paper's eq. 5).

    Args:
        g: accurate core model ([0,1] inputs -> logits).
        h: robust model ([0,1] inputs -> logits).
        alpha: fixed weight in [0, 1], or an ``AlphaNet`` (adaptive smoothing, the adaptive-smoothing paper's Sec. 4.3).
        mix_space: ``prob`` (the paper's mixture) or ``logit``.
        scale_g, scale_h: logit scales (App. D.1).
        alpha_range: (alpha_min, alpha_max) applied to an adaptive alpha while ``use_range`` is True.
        layers_g, layers_h: names of the (shallow, middle) submodules of g and h whose outputs feed the alpha
            network (only with an ``AlphaNet``).
        input_shape: when given, both members are probed and checked for equal class counts.

    Raises:
        ModelError: members with different class counts or input shapes, unknown layer names.
        UsageError: alpha or scales out of range, unknown ``mix_space``, bad ``alpha_range``.
    """

    def __init__(self, g: nn.Module, h: nn.Module, alpha: float | nn.Module = 0.5, *, mix_space: str = "prob",
                 scale_g: float = 1.0, scale_h: float = 1.0, alpha_range: tuple[float, float] | None = None,
                 layers_g: tuple[str, ...] | None = None, layers_h: tuple[str, ...] | None = None,
                 input_shape=None, num_classes: int | None = None):
        super().__init__()
        if mix_space not in MIX_SPACES:
            raise UsageError(f"unknown mix space {mix_space!r}; choose prob or logit")
        self.g, self.h = g, h
        for m in (g, h):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self.mix_space = mix_space
        self.scale_g = check_scale(scale_g, "scale_g")
        self.scale_h = check_scale(scale_h, "scale_h")
        self.alpha_range = check_alpha_range(*alpha_range) if alpha_range is not None else None
        self.use_range = True
        self.detach_alpha = False  # attack setting A (gray box): no gradient through alpha(x)
        if input_shape is not None:
            kg, kh = probe_model(g, input_shape), probe_model(h, input_shape)
            check_members(kg, kh)
            if num_classes is not None and kg != int(num_classes):
                raise ModelError(f"the base models output {kg} classes, not the {num_classes} of the data")
            num_classes = kg
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if isinstance(alpha, nn.Module):
            self.alpha_net: nn.Module | None = alpha
            self.alpha_value: float | None = None
            self.register_buffer("alpha_fixed", torch.tensor(float("nan")))
            if layers_g is None or layers_h is None:
                raise UsageError("an adaptive alpha network needs the feature layer names of g and h")
            self.layers_g, self.layers_h = tuple(layers_g), tuple(layers_h)
            self._taps_g = FeatureTaps(g, self.layers_g, "core model g")
            self._taps_h = FeatureTaps(h, self.layers_h, "robust model h")
        else:
            self.alpha_net = None
            # the exact Python float (double) is what the mixture applies and what the card records; the
            # float32 buffer only mirrors it in the weights file (0.7 would read back as 0.699999988)
            self.alpha_value = check_alpha(alpha)
            self.register_buffer("alpha_fixed", torch.tensor(self.alpha_value))
            self.layers_g = self.layers_h = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.alpha_net is None and prefix + "alpha_fixed" in state_dict:
            # keep the exact float when the loaded buffer is its float32 image; adopt a genuinely different one
            loaded = float(self.alpha_fixed)
            if loaded != float(torch.tensor(self.alpha_value, dtype=self.alpha_fixed.dtype)):
                self.alpha_value = check_alpha(loaded)

    # ---- modes --------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Only the alpha network follows ``mode``; the frozen base models stay in eval mode."""
        self.training = mode
        if self.alpha_net is not None:
            self.alpha_net.train(mode)
        self.g.eval()
        self.h.eval()
        return self

    @property
    def adaptive(self) -> bool:
        return self.alpha_net is not None

    @contextmanager
    def full_range(self) -> Iterator[MixedClassifier]:
        """Temporarily ignore ``alpha_range`` (training uses the full (0, 1) range, the adaptive-smoothing paper's App. D.1)."""
        old = self.use_range
        self.use_range = False
        try:
            yield self
        finally:
            self.use_range = old

    @contextmanager
    def gray_box(self) -> Iterator[MixedClassifier]:
        """Attack setting A: the alpha network's output is detached (no gradient path through alpha)."""
        old = self.detach_alpha
        self.detach_alpha = True
        try:
            yield self
        finally:
            self.detach_alpha = old

    # ---- forward ------------------------------------------------------------------------------------------
    def members(self, x: torch.Tensor, *, need_features: bool | None = None):
        """One forward pass of g and h: (zg, zh, features) with features = taps of g then of h (or None)."""
        zg = self.g(x)
        zh = self.h(x)
        feats = None
        if self.alpha_net is not None and need_features is not False:
            feats = self._taps_g.pop() + self._taps_h.pop()
        return zg, zh, feats

    def alpha_from(self, feats, *, raw: bool = False) -> torch.Tensor:
        """alpha(x) (B,) from tapped features; mapped into ``alpha_range`` when it applies."""
        a = self.alpha_net(feats)
        if self.detach_alpha:
            a = a.detach()
        if not raw and self.alpha_range is not None and self.use_range:
            lo, hi = self.alpha_range
            a = lo + (hi - lo) * a
        return a

    def mix(self, zg: torch.Tensor, zh: torch.Tensor, alpha) -> torch.Tensor:
        return mix_log_probs(zg, zh, alpha, mix_space=self.mix_space, scale_g=self.scale_g, scale_h=self.scale_h)

    def forward_with_alpha(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), alpha (B,)) from a single forward pass of both base models."""
        zg, zh, feats = self.members(x)
        if self.alpha_net is None:
            # the log-weights are computed in double from the Python float and cast to the logits' dtype at use
            a = torch.full((zg.shape[0],), self.alpha_value, dtype=zg.dtype, device=zg.device)
            return self.mix(zg, zh, self.alpha_value), a
        a = self.alpha_from(feats)
        return self.mix(zg, zh, a), a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_alpha(x)[0]

    @torch.no_grad()
    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """alpha(x) per example (B,), as used by ``forward`` (range applied when on)."""
        return self.forward_with_alpha(x)[1]

    def mixing_state(self) -> dict[str, torch.Tensor]:
        """State of the mixture without the base models' weights (what a mixnet run dir stores)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("g.", "h."))}
