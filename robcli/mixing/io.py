"""Mixture run directories: build a mixture from two ``--model`` specs, save it, load it back.

A mixture run directory holds ``model.safetensors`` (only the mixing state: the alpha network's weights and
the fixed-alpha buffer; never the base models' weights) and ``card.json`` with ``arch: "mixnet"``:

    {"arch": "mixnet", "num_classes", "input_shape", "mixnet": {
        "alpha": 0.7 | null (adaptive), "mix_space", "scale_g", "scale_h", "alpha_range",
        "layers_g", "layers_h", "alpha_net": {...AlphaNet config...},
        "members": {"core": {"path", "relpath", "files": {name: sha256}}, "robust": {...}}},
     "training": {...}}

``load_mixnet`` resolves each member path (relative to the run directory first, then absolute), checks the
sha256 of every member weight file, and refuses a mismatch: a mixture certified or trained against one pair
of models must not silently run with another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from robcli.errors import ModelError
from robcli.mixing.alphanet import AlphaNet, build_alpha_net, default_layers
from robcli.mixing.mixed import MixedClassifier, check_alpha, check_members
from robcli.utils.fsio import atomic_write_bytes

ARCH = "mixnet"
CARD = "card.json"
WEIGHTS = "model.safetensors"


def load_members(core: str, robust: str, *, dataset_info=None, device=None, seed: int = 0):
    """Load the core model g and the robust model h (``--core``/``--robust``) and check they can be mixed.

    Raises:
        ModelError: unloadable members, or different class counts / input shapes.
    """
    from robcli.models import load_model

    lg = load_model(core, dataset_info=dataset_info, seed=seed, device=device)
    lh = load_model(robust, dataset_info=dataset_info, seed=seed, device=device)
    check_members(lg.num_classes, lh.num_classes, lg.input_shape, lh.input_shape)
    return lg, lh


def build_mixture(lg, lh, *, alpha: float | None = 0.5, mix_space: str = "prob", scale_g: float = 1.0,
                  scale_h: float = 1.0, alpha_range: tuple[float, float] | None = None,
                  layers_g: tuple[str, str] | None = None, layers_h: tuple[str, str] | None = None,
                  width: int = 16, blocks: int = 1, sigmoid_scale: float = 2.0, device=None,
                  seed: int = 0) -> MixedClassifier:
    """A ``MixedClassifier`` over two ``LoadedModel``s: fixed ``alpha``, or ``alpha=None`` for a fresh alpha net.

    Raises:
        ModelError: incompatible members or unknown layer names. UsageError: bad alpha/range/scales.
    """
    check_members(lg.num_classes, lh.num_classes, lg.input_shape, lh.input_shape)
    shape = lg.input_shape
    if alpha is not None:
        check_alpha(alpha)
        fixed = MixedClassifier(lg.model, lh.model, float(alpha), mix_space=mix_space, scale_g=scale_g,
                                scale_h=scale_h, num_classes=lg.num_classes, input_shape=None)
        return fixed.to(device) if device is not None else fixed
    lay_g = tuple(layers_g) if layers_g else default_layers(lg.model, lg.card.get("arch"), "core model g")
    lay_h = tuple(layers_h) if layers_h else default_layers(lh.model, lh.card.get("arch"), "robust model h")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_alpha_net(lg.model, lh.model, lay_g, lay_h, shape, width=width, blocks=blocks,
                              sigmoid_scale=sigmoid_scale, device=device)
    m = MixedClassifier(lg.model, lh.model, net, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h,
                        alpha_range=alpha_range, layers_g=lay_g, layers_h=lay_h, num_classes=lg.num_classes)
    m.input_shape = tuple(shape)
    return m.to(device) if device is not None else m


def _member_entry(spec: str, lm, run_dir: Path) -> dict:
    from robcli.utils.hashing import sha256_file

    if not lm.files:
        raise ModelError(
            f"member {spec!r} has no weight file (a fresh registered architecture); train or save it first"
        )
    p = Path(spec).expanduser().resolve()
    try:
        rel = os.path.relpath(p, run_dir.resolve())
    except ValueError:  # another drive on Windows
        rel = None
    return {"path": str(p), "relpath": rel, "files": {Path(f).name: sha256_file(f) for f in lm.files}}


def save_mixture(run_dir: str | Path, model: MixedClassifier, *, core: str, robust: str, lg, lh,
                 training: dict | None = None, dataset: str | None = None) -> Path:
    """Write a mixture run directory (weights of the mixing state + ``card.json``), atomically per file.

    Raises:
        ModelError: a member without a weight file.
    """
    from safetensors.torch import save

    run_dir = Path(run_dir)
    members = {"core": _member_entry(core, lg, run_dir), "robust": _member_entry(robust, lh, run_dir)}
    mix: dict[str, Any] = {
        "alpha": None if model.adaptive else model.alpha_value,
        "mix_space": model.mix_space, "scale_g": model.scale_g, "scale_h": model.scale_h,
        "alpha_range": list(model.alpha_range) if model.alpha_range is not None else None,
        "layers_g": list(model.layers_g), "layers_h": list(model.layers_h),
        "alpha_net": dict(model.alpha_net.config) if model.adaptive else None,
        "members": members,
    }
    card = {"robcli_card": 1, "arch": ARCH, "arch_kwargs": {}, "num_classes": int(lg.num_classes),
            "input_shape": [int(s) for s in lg.input_shape], "dataset": dataset,
            "normalization": {"mean": None, "std": None}, "class_names": lg.card.get("class_names"),
            "mixnet": mix, "training": training or {}}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.mixing_state().items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / WEIGHTS, save(sd, metadata={"robcli.card": json.dumps(card, sort_keys=True)}))
    atomic_write_bytes(run_dir / CARD, json.dumps(card, indent=2, sort_keys=True).encode())
    return run_dir


def is_mixnet_dir(path: str | Path) -> bool:
    """True when ``path`` is a run directory whose card says ``arch: "mixnet"``."""
    p = Path(path) / CARD
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("arch") == ARCH
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _resolve_member(entry: dict, run_dir: Path, who: str) -> Path:
    cands = []
    if entry.get("relpath"):
        cands.append((run_dir / entry["relpath"]).resolve())
    if entry.get("path"):
        cands.append(Path(entry["path"]))
    for c in cands:
        if c.exists():
            return c
    raise ModelError(f"{run_dir}: the {who} model is missing (looked for {', '.join(map(str, cands)) or 'nothing'})")


def _read_card(run_dir: Path) -> dict:
    try:
        card = json.loads((run_dir / CARD).read_text())
    except FileNotFoundError:
        raise ModelError(f"{run_dir} is not a robcli run directory (no {CARD})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{run_dir / CARD} is corrupt (not JSON)") from None
    if not isinstance(card, dict) or card.get("arch") != ARCH or not isinstance(card.get("mixnet"), dict):
        raise ModelError(f"{run_dir} is not a mixture run directory (card arch is not {ARCH!r})")
    return card


def fixed_mixture_spec(run_dir: str | Path, *, verify: bool = True) -> dict:
    """What certifying a fixed-alpha mixture run needs, from its card: ``alpha`` (the exact float),
    ``scale_h``, ``mix_space`` and ``robust`` (the resolved path of the robust member h, its weight files'
    sha256 checked against the card when ``verify``).

    Raises:
        ModelError: not a mixture run, an adaptive (mixing-network) mixture, a logit-space mixture (the
            certificates are for probability mixing), or a missing / modified robust member.
    """
    from robcli.models import load_model
    from robcli.utils.hashing import sha256_file

    run_dir = Path(run_dir)
    card = _read_card(run_dir)
    mix = card["mixnet"]
    if mix.get("alpha") is None:
        raise ModelError(f"{run_dir} is an adaptive mixture (mixing network); certified radii need a fixed alpha "
                         "(export one with robcli compose --mix A --core G --robust H --export RUN)")
    if mix.get("mix_space", "prob") != "prob":
        raise ModelError(f"{run_dir} mixes logits (--mix-space {mix.get('mix_space')}); the certificates hold for "
                         "probability mixing only")
    entry = (mix.get("members") or {}).get("robust")
    if not isinstance(entry, dict):
        raise ModelError(f"{run_dir / CARD} lacks the robust member")
    path = _resolve_member(entry, run_dir, "robust")
    if verify:
        want = entry.get("files") or {}
        lm = load_model(path)
        for f in lm.files:
            if Path(f).name in want and want[Path(f).name] != sha256_file(f):
                raise ModelError(f"{run_dir}: the robust model file {f} changed since the mixture was saved "
                                 "(sha256 mismatch); re-export the mixture")
    return {"alpha": check_alpha(float(mix["alpha"])), "scale_h": float(mix.get("scale_h", 1.0)),
            "mix_space": mix.get("mix_space", "prob"), "robust": str(path)}


def load_mixnet(run_dir: str | Path, *, dataset_info=None, device=None, verify: bool = True,
                alpha_range: tuple[float, float] | None = None):
    """Load a mixture run directory as a ``robcli.models.LoadedModel`` whose model is a ``MixedClassifier``.

    ``model(x)`` gives logits; ``model.forward_with_alpha(x)`` / ``model.alpha(x)`` give alpha(x) per example.

    Args:
        alpha_range: override the stored (alpha_min, alpha_max) (evaluation only).
        verify: check each member weight file's sha256 against the card.

    Raises:
        ModelError: not a mixture, missing or modified member files, weights that do not fit.
    """
    from safetensors.torch import load_file

    from robcli.mixing.mixed import check_alpha_range
    from robcli.models import LoadedModel, check_compatible, load_model
    from robcli.utils.hashing import sha256_file

    run_dir = Path(run_dir)
    card = _read_card(run_dir)
    mix = card["mixnet"]
    if alpha_range is not None:
        alpha_range = check_alpha_range(*alpha_range)
    members, files = {}, []
    for who in ("core", "robust"):
        entry = (mix.get("members") or {}).get(who)
        if not isinstance(entry, dict):
            raise ModelError(f"{run_dir / CARD} lacks the {who} member")
        path = _resolve_member(entry, run_dir, who)
        lm = load_model(path, device=device)
        if verify:
            want = entry.get("files") or {}
            for f in lm.files:
                got = sha256_file(f)
                if Path(f).name in want and want[Path(f).name] != got:
                    raise ModelError(f"{run_dir}: the {who} model file {f} changed since the mixture was saved "
                                     "(sha256 mismatch); re-export the mixture")
        members[who] = lm
        files += lm.files
    lg, lh = members["core"], members["robust"]
    check_members(lg.num_classes, lh.num_classes, lg.input_shape, lh.input_shape)
    try:
        if mix.get("alpha") is not None:
            model = MixedClassifier(lg.model, lh.model, float(mix["alpha"]), mix_space=mix.get("mix_space", "prob"),
                                    scale_g=mix.get("scale_g", 1.0), scale_h=mix.get("scale_h", 1.0),
                                    num_classes=lg.num_classes)
        else:
            cfg = mix.get("alpha_net") or {}
            net = AlphaNet(tuple(cfg["shallow_channels"]), tuple(cfg["middle_channels"]), width=cfg["width"],
                           blocks=cfg.get("blocks", 1), sigmoid_scale=cfg["sigmoid_scale"],
                           shift=cfg.get("shift", 0.0), stride2=cfg.get("stride2", False))
            rng = alpha_range if alpha_range is not None else (tuple(mix["alpha_range"]) if mix.get("alpha_range") else None)
            model = MixedClassifier(lg.model, lh.model, net, mix_space=mix.get("mix_space", "prob"),
                                    scale_g=mix.get("scale_g", 1.0), scale_h=mix.get("scale_h", 1.0),
                                    alpha_range=rng, layers_g=tuple(mix["layers_g"]), layers_h=tuple(mix["layers_h"]),
                                    num_classes=lg.num_classes)
    except (KeyError, TypeError) as e:
        raise ModelError(f"{run_dir / CARD} has a malformed mixnet section ({e})") from None
    w = run_dir / WEIGHTS
    if not w.exists():
        raise ModelError(f"run directory {run_dir} has no {WEIGHTS}")
    sd = load_file(str(w))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("g.", "h."))]
    if missing or unexpected:
        raise ModelError(f"{w} does not fit the mixture in {CARD}: missing {missing[:2]}, unexpected {unexpected[:2]}")
    model.input_shape = tuple(int(s) for s in card["input_shape"])
    model.eval()
    if device is not None:
        model.to(device)
    lm = LoadedModel(model, card, [str(w)] + files, "mixnet")
    check_compatible(lm, dataset_info)
    return lm




def load_mixnet_run(run_dir: str | Path, card: dict):
    """The loader :func:`robcli.models.load.load_model` uses for mixture run directories (card ``arch: mixnet``)."""
    return load_mixnet(run_dir)


__all__ = ["build_mixture", "save_mixture", "load_mixnet", "load_mixnet_run", "load_members", "is_mixnet_dir", "fixed_mixture_spec"]
