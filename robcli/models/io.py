"""Model IO: the normalization wrapper, run directories, and loading whatever ``--model`` names.

``--model`` may be:
  * a robcli run directory (``card.json`` + ``model.safetensors``; ``last.safetensors`` also kept);
  * a checkpoint file of a registered architecture (``--arch NAME``, or a ``card.json`` beside it):
    safetensors, or a torch state dict read with ``torch.load(weights_only=True)`` (never unpickled);
    ``state_dict``/``model``/``net`` nesting and ``module.``/``model.`` prefixes are handled, as are
    RobustBench-style files;
  * a TorchScript file (scripted or traced) or a ``torch.export`` program (``.pt2``) of any architecture;
  * a registered architecture name (fresh weights, seeded).
All models map pixels in [0, 1] to logits: normalization lives inside the model.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robcli.errors import ModelError
from robcli.models.registry import create_model, is_model, list_models

CARD = "card.json"
WEIGHTS = "model.safetensors"
LAST = "last.safetensors"


class Normalized(nn.Module):
    """``net((x - mean) / std)``: keeps attacks and noise in [0, 1] pixel space."""

    def __init__(self, net: nn.Module, mean=None, std=None):
        super().__init__()
        self.net = net
        self.has_norm = mean is not None and std is not None
        if self.has_norm:
            m = torch.as_tensor(mean, dtype=torch.float32)
            s = torch.as_tensor(std, dtype=torch.float32)
            if (s <= 0).any():
                raise ModelError("normalization std must be positive")
            self.register_buffer("mean", m.view(1, -1, 1, 1))
            self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x):
        if self.has_norm:
            mean, std = self.mean, self.std
            if x.dim() == 2:  # vector data
                mean, std = mean.view(1, -1), std.view(1, -1)
            x = (x - mean) / std
        return self.net(x)


@dataclass
class LoadedModel:
    """A model ready for inference on [0,1] inputs plus what is known about it."""

    model: nn.Module
    card: dict
    files: list[str] = field(default_factory=list)  # files whose sha256 goes into table metadata
    kind: str = "registered"  # run | checkpoint | torchscript | export | registered

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.card["input_shape"])


def build(arch: str, num_classes: int, input_shape, *, mean=None, std=None, arch_kwargs: dict | None = None) -> Normalized:
    """Build a registered architecture wrapped in input normalization."""
    net = create_model(arch, num_classes, input_shape, **(arch_kwargs or {}))
    return Normalized(net, mean, std)


def make_card(arch, num_classes, input_shape, *, dataset=None, mean=None, std=None, class_names=None,
              arch_kwargs=None, training=None) -> dict:
    return {
        "robcli_card": 1,
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
        "num_classes": int(num_classes),
        "input_shape": list(input_shape),
        "dataset": dataset,
        "normalization": {"mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None},
        "class_names": list(class_names) if class_names is not None else None,
        "training": training or {},
    }


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a state dict as safetensors, atomically."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write_bytes(Path(path), save(sd))


def save_run(run_dir: str | Path, model: nn.Module, card: dict, *, name: str = WEIGHTS) -> Path:
    """Write (or update) a run directory: weights as safetensors plus ``card.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / name)
    _atomic_write_bytes(run_dir / CARD, json.dumps(card, indent=2, sort_keys=True, default=str).encode())
    return run_dir


def read_card(run_dir: str | Path) -> dict:
    p = Path(run_dir) / CARD
    try:
        card = json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelError(f"{run_dir} is not a robcli run directory (no {CARD})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{p} is corrupt (not JSON)") from None
    for k in ("arch", "num_classes", "input_shape"):
        if k not in card:
            raise ModelError(f"{p} lacks {k!r}")
    return card


# ---- state dict handling -------------------------------------------------------------------------------

_NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network")
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.", "base_model.")


def _unnest(obj: Any) -> dict:
    for _ in range(3):
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in _NEST_KEYS:
                if k in obj and isinstance(obj[k], dict):
                    obj = obj[k]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise ModelError("checkpoint does not hold a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelError("checkpoint holds no tensors")
    return sd


def _strip_prefixes(sd: dict, target_keys: set[str]) -> dict:
    changed = True
    while changed and not set(sd) <= target_keys:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
                break
    return sd


def _load_state_into(model: Normalized, sd: dict, source: str, arch: str) -> None:
    """Load a state dict into the wrapper (keys ``net.*``, ``mean``, ``std``) or into the bare net."""
    full_keys = set(model.state_dict())
    net_keys = set(model.net.state_dict())
    if set(sd) == full_keys:
        target, keys = model, full_keys
    else:
        sd = _strip_prefixes(sd, net_keys)
        # RobustBench-style normalization buffers kept outside the net
        sd = {k: v for k, v in sd.items() if k not in ("mu", "sigma", "mean", "std")} if set(sd) - net_keys <= {"mu", "sigma", "mean", "std"} else sd
        target, keys = model.net, net_keys
    missing = sorted(keys - set(sd))
    unexpected = sorted(set(sd) - keys)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(f"{source} does not fit architecture {arch!r}: {', '.join(detail)} keys")
    ref = target.state_dict()
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(ref[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(
            f"{source} does not fit architecture {arch!r}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(ref[k].shape)}"
        )
    target.load_state_dict(sd, strict=True)


def _read_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ModelError(f"{path} cannot be read as a weights-only torch checkpoint: {msg}") from None
    return _unnest(obj)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names)


def _is_export(path: Path) -> bool:
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any("serialized_exported_program" in n or n.endswith("models/model.json") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class _ExportWrapper(nn.Module):
    def __init__(self, ep):
        super().__init__()
        self.ep = ep
        self.mod = ep.module()

    def forward(self, x):
        return self.mod(x)


def _opaque_card(model, path, kind, num_classes, input_shape) -> dict:
    nc = num_classes or getattr(model, "num_classes", None)
    shp = input_shape or getattr(model, "input_shape", None)
    if shp is None:
        raise ModelError(f"{path}: cannot tell the input shape of this {kind} model; pass --input-shape C,H,W")
    if nc is None:
        with torch.no_grad():
            out = model(torch.zeros(1, *shp))
        if out.dim() != 2:
            raise ModelError(f"{path}: model output has shape {tuple(out.shape)}; expected (batch, classes) logits")
        nc = int(out.shape[1])
    return make_card(f"{kind}:{Path(path).name}", nc, shp)


def load_model(
    spec: str | Path,
    *,
    num_classes: int | None = None,
    input_shape=None,
    arch: str | None = None,
    dataset_info=None,
    normalization: str = "auto",
    seed: int = 0,
) -> LoadedModel:
    """Resolve ``--model`` into a model on CPU in eval mode.

    Args:
        spec: run directory, checkpoint file, TorchScript/export file, or registered architecture name.
        num_classes, input_shape: for bare architectures/opaque models (taken from ``dataset_info`` if absent).
        arch: the architecture of a bare checkpoint file.
        dataset_info: :class:`robcli.data.DataInfo`; its class count and input shape are checked against the model.
        normalization: ``auto`` (run dirs: their card; fresh architectures: the data set's mean/std;
            foreign checkpoints: none), ``dataset`` or ``none``.
        seed: initialisation seed for fresh architectures.

    Raises:
        ModelError: unknown name, unreadable file, or a checkpoint that does not fit the architecture.
    """
    if dataset_info is not None:
        num_classes = num_classes or dataset_info.num_classes
        input_shape = input_shape or dataset_info.input_shape
    spec_s = str(spec)
    path = Path(spec_s).expanduser()

    def _norm(default_none: bool):
        if normalization == "none" or (normalization == "auto" and default_none) or dataset_info is None:
            return None, None
        return dataset_info.mean, dataset_info.std

    if path.is_dir():
        card = read_card(path)
        w = path / WEIGHTS
        if not w.exists():
            raise ModelError(f"run directory {path} has no {WEIGHTS}")
        lm = _from_card(card, w)
        lm.kind = "run"
    elif path.is_file():
        if True:  # dispatch on content, not on the file name
            if _is_export(path):
                try:
                    ep = torch.export.load(str(path))
                except Exception as e:
                    raise ModelError(f"{path} cannot be loaded as a torch.export program: {str(e)[:160]}") from None
                model = _ExportWrapper(ep)
                lm = LoadedModel(model, _opaque_card(model, path, "export", num_classes, input_shape), [str(path)], "export")
            elif _is_torchscript(path):
                try:
                    model = torch.jit.load(str(path), map_location="cpu")
                except Exception as e:
                    raise ModelError(f"{path} cannot be loaded as TorchScript: {str(e)[:160]}") from None
                lm = LoadedModel(model, _opaque_card(model, path, "torchscript", num_classes, input_shape), [str(path)], "torchscript")
            else:
                card_path = path.parent / CARD
                if arch is None and card_path.exists():
                    lm = _from_card(read_card(path.parent), path)
                    lm.kind = "run"
                else:
                    if arch is None:
                        raise ModelError(f"{path} is a bare checkpoint: name its architecture with --arch (one of {', '.join(list_models(tiny=False))})")
                    if num_classes is None or input_shape is None:
                        raise ModelError(f"{path}: give --dataset (or --num-classes/--input-shape) to build {arch!r}")
                    mean, std = _norm(default_none=True)
                    model = build(arch, num_classes, input_shape, mean=mean, std=std)
                    _load_state_into(model, _read_state_file(path), str(path), arch)
                    card = make_card(arch, num_classes, input_shape, dataset=getattr(dataset_info, "name", None),
                                     mean=mean, std=std)
                    lm = LoadedModel(model, card, [str(path)], "checkpoint")
    elif is_model(spec_s):
        if num_classes is None or input_shape is None:
            raise ModelError(f"architecture {spec_s!r} needs --dataset to know classes and input shape")
        mean, std = _norm(default_none=False)
        torch.manual_seed(seed)
        model = build(spec_s, num_classes, input_shape, mean=mean, std=std)
        card = make_card(spec_s, num_classes, input_shape, dataset=getattr(dataset_info, "name", None), mean=mean, std=std)
        lm = LoadedModel(model, card, [], "registered")
    else:
        if any(c in spec_s for c in "/\\.") or spec_s.startswith("~"):
            raise ModelError(f"model file or run directory {spec_s} does not exist")
        raise ModelError(f"unknown model {spec_s!r}; registered: {', '.join(list_models())}")
    lm.model.eval()
    check_compatible(lm, dataset_info)
    return lm


def _from_card(card: dict, weights: Path) -> LoadedModel:
    norm = card.get("normalization") or {}
    try:
        model = build(card["arch"], card["num_classes"], card["input_shape"], mean=norm.get("mean"),
                      std=norm.get("std"), arch_kwargs=card.get("arch_kwargs"))
    except ModelError as e:
        raise ModelError(f"{weights}: {e}") from None
    _load_state_into(model, _read_state_file(weights), str(weights), card["arch"])
    return LoadedModel(model, card, [str(weights)], "run")


def check_compatible(lm: LoadedModel, dataset_info) -> None:
    """Refuse a model whose classes or input shape disagree with the data set."""
    if dataset_info is None:
        return
    if tuple(lm.input_shape) != tuple(dataset_info.input_shape):
        raise ModelError(
            f"model expects inputs of shape {tuple(lm.input_shape)} but {dataset_info.name} has {tuple(dataset_info.input_shape)}"
        )
    if lm.num_classes != dataset_info.num_classes:
        raise ModelError(
            f"model outputs {lm.num_classes} classes but {dataset_info.name} has {dataset_info.num_classes}"
        )
