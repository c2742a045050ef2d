"""Models robcli did not write: foreign state dicts (nesting, prefixes, normalization buffers), TorchScript and
``torch.export`` programs, and sniffing what a file holds. Nothing here unpickles: torch files are read with
``torch.load(weights_only=True)``, and a file holding pickled Python objects is refused with one line.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from robcli.errors import ModelError, UsageError
from robcli.models.card import CARD_META_KEY, LoadedModel, make_card, validate_card
from robcli.models.normalize import Normalized
from robcli.models.registry import list_models


def parse_shape(shape: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3,32,32"``, ``"3x32x32"``, ``"2"`` or a sequence -> a tuple of positive ints (``None`` passes)."""
    if shape is None:
        return None
    if isinstance(shape, str):
        parts = [p for p in re.split(r"[,x× ]+", shape.strip().strip("()[]")) if p]
    else:
        parts = list(shape)
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise UsageError(f"--input-shape {shape!r} must look like C,H,W (e.g. 3,32,32) or D (e.g. 2)") from None
    if not out or any(s <= 0 for s in out):
        raise UsageError(f"--input-shape {shape!r} must list positive sizes, e.g. 3,32,32")
    return out


def check_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 2:
        raise UsageError(f"--num-classes {num_classes!r} must be an integer >= 2")
    return int(num_classes)



# ---- state dict handling -------------------------------------------------------------------------------

_NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "ema", "model_ema")
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.", "base_model.", "network.")
# normalization buffers kept beside the net in third-party checkpoints: (mean key, std key)
_NORM_PAIRS = (("mu", "sigma"), ("mean", "std"), ("normalizer.new_mean", "normalizer.new_std"),
               ("normalize.mean", "normalize.std"), ("norm.mean", "norm.std"))
# parameters a third-party checkpoint carries that its forward pass never uses (TRADES/RobustBench WRN)
_UNUSED_PREFIXES = ("sub_block1.", "attacker.")


def _unnest(obj: Any, source: str) -> dict:
    for _ in range(4):
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in _NEST_KEYS:
                if k in obj and isinstance(obj[k], dict):
                    obj = obj[k]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise ModelError(f"{source} does not hold a state dict (found {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(list(map(str, obj))[:6])
        raise ModelError(f"{source} holds no weight tensors (top-level keys: {keys or 'none'})")
    return sd


def _common_prefix_strip(sd: dict, target_keys: set[str]) -> dict:
    changed = True
    while changed and not set(sd) <= target_keys:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
                break
    return sd


def _split_foreign(sd: dict, net_keys: set[str]) -> tuple[dict, tuple | None]:
    """Strip wrapper prefixes, drop unused parameters, and pull out normalization buffers."""
    norm = None
    for _ in range(4):
        sd = _common_prefix_strip(sd, net_keys)
        for mk, sk in _NORM_PAIRS:
            if mk in sd and sk in sd and mk not in net_keys:
                norm = (sd.pop(mk).flatten().tolist(), sd.pop(sk).flatten().tolist())
                break
        sd = {k: v for k, v in sd.items() if not (k.startswith(_UNUSED_PREFIXES) and k not in net_keys)}
        if set(sd) <= net_keys:
            break
    return sd, norm


def _fit_report(sd: dict, ref: dict, source: str, arch: str) -> None:
    """Raise a one-line ModelError when ``sd`` does not fit ``ref`` (keys or shapes)."""
    keys = set(ref)
    # BatchNorm counters are absent from older checkpoints; they do not affect inference
    missing = sorted(k for k in keys - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - keys)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(
            f"{source} does not fit architecture {arch!r}: {', '.join(detail)} keys; "
            f"is it another architecture? (registered: {', '.join(list_models(tiny=False))})"
        )
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(ref[k].shape)]
    if bad:
        # the classifier's weight/bias come last in every registered architecture (wrapper buffers aside)
        last = [k for k in ref if k not in ("mean", "std")][-1]
        head = {k for k in ref if k.rsplit(".", 1)[0] == last.rsplit(".", 1)[0]}
        if set(bad) <= head:
            k = sorted(bad)[0]
            got, want = int(sd[k].shape[0]), int(ref[k].shape[0])
            raise ModelError(
                f"{source} has {got} output classes but the model is built for {want}; "
                f"use a data set with {got} classes or pass --num-classes {got}"
            )
        k = bad[0]
        raise ModelError(
            f"{source} does not fit architecture {arch!r}: {k} has shape {tuple(sd[k].shape)}, "
            f"expected {tuple(ref[k].shape)} (another width/depth or input channels?)"
        )


def load_state_into(model: Normalized, sd: dict, source: str, arch: str) -> Normalized:
    """Load a state dict into the wrapper (keys ``net.*``, ``mean``, ``std``) or into the bare net.

    Foreign checkpoints may carry their own normalization buffers; these replace the wrapper's
    normalization (the returned model may therefore be a new ``Normalized``).
    """
    full = model.state_dict()
    if set(sd) <= set(full) and set(k for k in full if not k.endswith("num_batches_tracked")) <= set(sd):
        _fit_report(sd, full, source, arch)
        model.load_state_dict(sd, strict=False)
        return model
    net_ref = model.net.state_dict()
    sd, norm = _split_foreign(dict(sd), set(net_ref))
    _fit_report(sd, net_ref, source, arch)
    model.net.load_state_dict(sd, strict=False)
    if norm is not None:
        model = Normalized(model.net, *norm)
    return model


def sniff(path: Path) -> str:
    """``empty``, ``zip`` (torch / TorchScript / export archives), ``safetensors`` or ``other``."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "other"


def read_safetensors(path: Path) -> tuple[dict, dict | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    card = None
    if CARD_META_KEY in meta:
        try:
            card = validate_card(json.loads(meta[CARD_META_KEY]), f"{path} (embedded card)")
        except json.JSONDecodeError:
            card = None
    if not sd:
        raise ModelError(f"{path} holds no tensors")
    return sd, card


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _starts_as_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle PROTO opcode


def read_state_file(path: Path) -> dict:
    """Read weights from a safetensors file or a weights-only torch checkpoint (nothing is unpickled)."""
    kind = sniff(path)
    if kind == "empty":
        raise ModelError(f"{path} is empty (0 bytes)")
    if kind == "safetensors" or path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    try:
        with warnings.catch_warnings():  # pickle-protocol notices precede our own one-line refusal
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals
        text = str(e)
        m = _GLOBAL_RE.search(text) if "Unsupported global" in text else None
        if m is not None:
            raise ModelError(
                f"{path} holds pickled Python objects ({m.group(1)}), which robcli refuses to unpickle (it could "
                "run code); save model.state_dict() with torch.save, or script/export the model"
            ) from None
        if kind == "other" and _starts_as_pickle(path):
            raise ModelError(
                f"{path} holds pickled Python objects (a plain pickle, not a weights-only torch checkpoint), "
                "which robcli refuses to unpickle (it could run code); save model.state_dict() with torch.save"
            ) from None
        first = text.strip().splitlines()[0][:120] if text.strip() else ""
        if not isinstance(e, RuntimeError) or "Weights only" in first or not first:
            first = f"unrecognized content ({type(e).__name__})"
        raise ModelError(f"{path} is not a readable torch checkpoint (corrupt or truncated?): {first}") from None
    return _unnest(obj, str(path))


def zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_torchscript(names: list[str]) -> bool:
    return any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names)


def is_export(path: Path, names: list[str]) -> bool:
    if path.suffix == ".pt2":
        return True
    return any("serialized_exported_program" in n or n.endswith("models/model.json") for n in names)


class ExportedModel(nn.Module):
    """Runs a ``torch.export`` program as a module.

    An exported program may have a static batch size B: inputs are then cut into chunks of B (the last one
    padded with copies of its last row, whose outputs are discarded). Gradients flow to the input.
    switching ``train``/``eval`` mode does not change the program: it runs in the mode it was exported in.
    """

    def __init__(self, ep, static_batch: int | None):
        super().__init__()
        self.mod = ep.module()
        self.static_batch = static_batch

    def train(self, mode: bool = True):  # the unlifted module refuses .eval(); keep it as exported
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.static_batch
        if b is None or x.shape[0] == b:
            return self.mod(x)
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start:start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            outs.append(self.mod(chunk)[:n])
        return torch.cat(outs)


def export_specs(ep) -> tuple[int | None, tuple[int, ...] | None, int | None]:
    """(static batch size or None, input shape without batch, number of classes) from an exported program."""
    user_inputs = set(ep.graph_signature.user_inputs)
    shapes_in = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    out_node = next((n for n in ep.graph.nodes if n.op == "output"), None)
    outs = [a.meta.get("val") for a in (out_node.args[0] if out_node is not None else ()) if hasattr(a, "meta")]
    if len(shapes_in) != 1:
        raise ModelError(f"exported program takes {len(shapes_in)} inputs; robcli needs exactly one (a batch of images)")

    def _static(d):
        return int(d) if isinstance(d, int) else None

    v = shapes_in[0]
    batch, shape = None, None
    if v is not None and hasattr(v, "shape") and len(v.shape) >= 2:
        batch = _static(v.shape[0])
        dims = [_static(d) for d in v.shape[1:]]
        shape = tuple(dims) if all(d is not None for d in dims) else None
    classes = None
    if len(outs) == 1 and outs[0] is not None and len(outs[0].shape) == 2:
        classes = _static(outs[0].shape[1])
    return batch, shape, classes


def opaque_model(model: nn.Module, path: Path, kind: str, num_classes, input_shape, dataset_info,
            spec_shape=None, spec_classes=None) -> LoadedModel:
    """Settle classes and input shape of a TorchScript/exported model and check them with a dry forward."""
    try:
        attr_shape = parse_shape(getattr(model, "input_shape", None))
    except UsageError:
        attr_shape = None
    shape = input_shape or spec_shape or attr_shape
    if shape is None and dataset_info is not None:
        shape = tuple(dataset_info.input_shape)
    if shape is None:
        raise ModelError(f"{path}: cannot tell the input shape of this {kind} model; pass --input-shape C,H,W or --dataset")
    nc_attr = getattr(model, "num_classes", None)
    declared = num_classes or spec_classes or (int(nc_attr) if isinstance(nc_attr, int) else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.full((2, *shape), 0.5))  # batch 2: dynamic batch dims often exclude 0 and 1
    except Exception as e:
        msg = str(e).strip().splitlines()
        hint = msg[-1][:140] if msg else type(e).__name__
        raise ModelError(
            f"{path}: a forward pass on inputs of shape {tuple(shape)} failed ({hint}); pass the right --input-shape"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{path}: model output is {got}; robcli needs a (batch, classes) tensor of logits")
    if declared is not None and declared != out.shape[1]:
        raise ModelError(f"{path}: model outputs {int(out.shape[1])} classes, not the {declared} declared")
    nc = int(out.shape[1])
    card = make_card(f"{kind}:{path.name}", nc, shape, dataset=getattr(dataset_info, "name", None))
    return LoadedModel(model, card, [str(path)], kind)

