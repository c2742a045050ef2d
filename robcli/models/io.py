"""Model IO: the normalization wrapper, run directories, and loading whatever ``--model`` names.

``--model`` may be:
  * a robcli run directory (``card.json`` + ``model.safetensors``; ``last.safetensors`` also kept);
  * a checkpoint file of a registered architecture (``--arch NAME``, a ``card.json`` beside it, or a card
    stored in the safetensors metadata): safetensors, or a torch state dict read with
    ``torch.load(weights_only=True)`` (a file holding pickled Python objects, e.g. a whole ``nn.Module``,
    is refused, never unpickled); ``state_dict``/``model``/``net`` nesting, ``module.``/``model.``
    prefixes and RobustBench/``robustness``-library normalization buffers are handled;
  * a TorchScript file (scripted or traced) or a ``torch.export`` program (``.pt2``) of any architecture;
    classes and input shape come from ``--num-classes``/``--input-shape``, else from the model
    (``num_classes``/``input_shape`` attributes of a scripted module, the exported program's input and
    output specs), else the data set's input shape and a dry forward pass;
  * a registered architecture name (fresh weights, seeded).
All models map pixels in [0, 1] to logits: normalization lives inside the model.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from robcli.errors import ModelError, UsageError
from robcli.models.registry import create_model, is_model, list_models
from robcli.utils.fsio import atomic_write_bytes

CARD = "card.json"
WEIGHTS = "model.safetensors"
LAST = "last.safetensors"
CARD_META_KEY = "robcli.card"  # a card stored inside a safetensors file's metadata
NORMALIZATION_MODES = ("auto", "dataset", "none")


class Normalized(nn.Module):
    """``net((x - mean) / std)``: keeps attacks and noise in [0, 1] pixel space.

    ``mean``/``std`` hold one value per channel (images) or per feature (vectors), or a single value.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        if (mean is None) != (std is None):
            raise ModelError("normalization needs both mean and std (or neither)")
        self.has_norm = mean is not None
        if self.has_norm:
            m = torch.as_tensor(mean, dtype=torch.float32).flatten()
            s = torch.as_tensor(std, dtype=torch.float32).flatten()
            if m.numel() != s.numel() or m.numel() == 0:
                raise ModelError(f"normalization mean has {m.numel()} values but std has {s.numel()}")
            if not (torch.isfinite(m).all() and torch.isfinite(s).all()) or (s <= 0).any():
                raise ModelError("normalization std must be positive and mean/std finite")
            self.register_buffer("mean", m.view(1, -1, 1, 1))
            self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_norm:
            mean, std = self.mean, self.std
            if x.dim() != 4:  # vector data: one value per feature
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
        return tuple(int(s) for s in self.card["input_shape"])


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


def _check_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 2:
        raise UsageError(f"--num-classes {num_classes!r} must be an integer >= 2")
    return int(num_classes)


def build(arch: str, num_classes: int, input_shape, *, mean=None, std=None, arch_kwargs: dict | None = None) -> Normalized:
    """Build a registered architecture wrapped in input normalization.

    Raises:
        ModelError: unknown architecture, bad keyword arguments, or normalization of the wrong length.
    """
    shape = tuple(int(s) for s in input_shape)
    if mean is not None:
        n = len(list(mean))
        channels = shape[0] if len(shape) == 3 else int(torch.tensor(shape).prod())
        if n not in (1, channels):
            raise ModelError(f"normalization has {n} values but inputs of shape {shape} have {channels} channels")
    try:
        net = create_model(arch, int(num_classes), shape, **(arch_kwargs or {}))
    except TypeError as e:
        raise ModelError(f"architecture {arch!r} rejects its arguments: {e}") from None
    return Normalized(net, mean, std)


def make_card(arch, num_classes, input_shape, *, dataset=None, mean=None, std=None, class_names=None,
              arch_kwargs=None, training=None) -> dict:
    """The JSON card of a run directory: everything needed to rebuild the model around its weights."""
    return {
        "robcli_card": 1,
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "dataset": dataset,
        "normalization": {"mean": [float(v) for v in mean] if mean is not None else None,
                          "std": [float(v) for v in std] if std is not None else None},
        "class_names": list(class_names) if class_names is not None else None,
        "training": training or {},
    }


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def save_weights(model: nn.Module, path: str | Path, card: dict | None = None) -> None:
    """Save a state dict as safetensors, atomically; ``card`` (if given) goes into the file's metadata."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {CARD_META_KEY: json.dumps(card, sort_keys=True, default=str)} if card is not None else None
    _atomic_write_bytes(Path(path), save(sd, metadata=meta))


def save_run(run_dir: str | Path, model: nn.Module, card: dict, *, name: str = WEIGHTS) -> Path:
    """Write (or update) a run directory: weights as safetensors (card in its metadata) plus ``card.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / name, card)
    _atomic_write_bytes(run_dir / CARD, json.dumps(card, indent=2, sort_keys=True, default=str).encode())
    return run_dir


def _validate_card(card: Any, where: str) -> dict:
    if not isinstance(card, dict):
        raise ModelError(f"{where} is not a robcli model card (not a JSON object)")
    for k in ("arch", "num_classes", "input_shape"):
        if k not in card:
            raise ModelError(f"{where} lacks {k!r}")
    try:
        int(card["num_classes"])
        [int(s) for s in card["input_shape"]]
    except (TypeError, ValueError):
        raise ModelError(f"{where} has a malformed num_classes or input_shape") from None
    return card


def read_card(run_dir: str | Path) -> dict:
    """Read and check ``card.json`` of a run directory.

    Raises:
        ModelError: no card, not JSON, or required fields missing.
    """
    p = Path(run_dir) / CARD
    try:
        card = json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelError(f"{run_dir} is not a robcli run directory (no {CARD})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{p} is corrupt (not JSON)") from None
    return _validate_card(card, str(p))


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


def _load_state_into(model: Normalized, sd: dict, source: str, arch: str) -> Normalized:
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


def _sniff(path: Path) -> str:
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


def _read_safetensors(path: Path) -> tuple[dict, dict | None]:
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
            card = _validate_card(json.loads(meta[CARD_META_KEY]), f"{path} (embedded card)")
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


def _read_state_file(path: Path) -> dict:
    """Read weights from a safetensors file or a weights-only torch checkpoint (nothing is unpickled)."""
    kind = _sniff(path)
    if kind == "empty":
        raise ModelError(f"{path} is empty (0 bytes)")
    if kind == "safetensors" or path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
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


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_torchscript(names: list[str]) -> bool:
    return any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names)


def _is_export(path: Path, names: list[str]) -> bool:
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


def _export_specs(ep) -> tuple[int | None, tuple[int, ...] | None, int | None]:
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


def _opaque(model: nn.Module, path: Path, kind: str, num_classes, input_shape, dataset_info,
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


def load_model(
    spec: str | Path,
    *,
    num_classes: int | None = None,
    input_shape: str | Sequence[int] | None = None,
    arch: str | None = None,
    dataset_info=None,
    normalization: str = "auto",
    seed: int = 0,
    device: Any = None,
) -> LoadedModel:
    """Resolve ``--model`` into a model in eval mode (on CPU, or on ``device`` when given).

    Args:
        spec: run directory, checkpoint file, TorchScript/export file, or registered architecture name.
        num_classes: ``--num-classes``; for bare architectures/opaque models (else from ``dataset_info``).
        input_shape: ``--input-shape`` (``"3,32,32"`` or a sequence); as ``num_classes``.
        arch: ``--arch``, the architecture of a bare checkpoint file.
        dataset_info: :class:`robcli.data.DataInfo`; its class count and input shape are checked against the model.
        normalization: ``auto`` (run dirs: their card; fresh architectures: the data set's mean/std;
            foreign checkpoints: their own buffers if any, else none), ``dataset`` or ``none``.
        seed: initialisation seed for fresh architectures (the global RNG state is left untouched).
        device: where to put the model (``None``: CPU).

    Raises:
        ModelError: unknown name, unreadable or refused file, a checkpoint that does not fit the
            architecture, or a model whose classes/input shape disagree with the data set.
        UsageError: malformed ``num_classes``/``input_shape``/``normalization``.
    """
    if normalization not in NORMALIZATION_MODES:
        raise UsageError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATION_MODES)}")
    flag_classes = _check_classes(num_classes)
    flag_shape = parse_shape(input_shape)
    ds_classes = dataset_info.num_classes if dataset_info is not None else None
    ds_shape = tuple(dataset_info.input_shape) if dataset_info is not None else None
    k = flag_classes or ds_classes
    shape = flag_shape or ds_shape
    if arch is not None and not is_model(arch):
        raise ModelError(f"unknown --arch {arch!r}; registered: {', '.join(list_models())}")
    spec_s = str(spec).strip()
    if not spec_s:
        raise ModelError(f"--model is empty; give a run directory, a checkpoint file or one of: {', '.join(list_models())}")
    path = Path(spec_s).expanduser()

    def _norm(default_none: bool):
        if normalization == "none" or (normalization == "auto" and default_none) or dataset_info is None:
            return None, None
        return dataset_info.mean, dataset_info.std

    if is_model(spec_s) and path.exists() and not any(c in spec_s for c in "/\\"):
        raise ModelError(f"{spec_s!r} is both a registered architecture and a path here; write ./{spec_s} for the path")

    if is_model(spec_s) and not path.exists():
        if k is None or shape is None:
            raise ModelError(f"architecture {spec_s!r} needs --dataset (or --num-classes and --input-shape)")
        mean, std = _norm(default_none=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(spec_s, k, shape, mean=mean, std=std)
        card = make_card(spec_s, k, shape, dataset=getattr(dataset_info, "name", None), mean=mean, std=std)
        lm = LoadedModel(model, card, [], "registered")
    elif path.is_dir() and _is_composite_dir(path):
        # ---- composite run dirs (robcli compose --export): members are loaded by robcli.compose.export ----
        from robcli.compose.export import load_composite

        lm = load_composite(path, read_card(path))
    elif path.is_dir() and _is_mixnet_dir(path):
        # ---- mixture run dirs (robcli mix build/train, robcli.mixing): members are loaded by robcli.mixing.io ----
        from robcli.mixing.io import load_mixnet

        lm = load_mixnet(path)
    elif path.is_dir():
        card = read_card(path)
        w = path / WEIGHTS
        if not w.exists():
            raise ModelError(f"run directory {path} has no {WEIGHTS}")
        lm = _from_card(card, w, "run")
    elif path.is_file():
        lm = _load_file(path, arch=arch, k=k, shape=shape, flag_classes=flag_classes, flag_shape=flag_shape,
                        dataset_info=dataset_info, norm=_norm)
    else:
        if any(c in spec_s for c in "/\\") or spec_s.startswith(("~", ".")) or Path(spec_s).suffix:
            raise ModelError(f"model file or run directory {spec_s} does not exist")
        raise ModelError(f"unknown model {spec_s!r}; registered: {', '.join(list_models())} (or give a path)")
    lm.model.eval()
    check_compatible(lm, dataset_info)
    if device is not None:
        lm.model.to(device)
    return lm


def _load_file(path: Path, *, arch, k, shape, flag_classes, flag_shape, dataset_info, norm) -> LoadedModel:
    kind = _sniff(path)
    if kind == "empty":
        raise ModelError(f"{path} is empty (0 bytes)")
    names = _zip_names(path) if kind == "zip" else []
    if _is_export(path, names):
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:140]
            raise ModelError(f"{path} cannot be loaded as a torch.export program: {first}") from None
        batch, ex_shape, ex_classes = _export_specs(ep)
        model = ExportedModel(ep, batch)
        return _opaque(model, path, "export", flag_classes, flag_shape, dataset_info, ex_shape, ex_classes)
    if _is_torchscript(names):
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:140]
            raise ModelError(f"{path} cannot be loaded as TorchScript: {first}") from None
        return _opaque(model, path, "torchscript", flag_classes, flag_shape, dataset_info)

    # a weights file: its card comes from beside it, from its own metadata, or from --arch
    embedded = _read_safetensors(path)[1] if kind == "safetensors" else None
    card = None
    if (path.parent / CARD).exists():
        card = read_card(path.parent)
    elif embedded is not None:
        card = embedded
    if card is not None and (arch is None or arch == card["arch"]):
        return _from_card(card, path, "checkpoint")
    sd = _read_state_file(path)  # first: a pickled module is refused before anything else is asked
    if arch is None:
        raise ModelError(
            f"{path} is a bare checkpoint: name its architecture with --arch (one of {', '.join(list_models(tiny=False))})"
        )
    if k is None or shape is None:
        raise ModelError(f"{path}: give --dataset (or --num-classes and --input-shape) to build {arch!r}")
    mean, std = norm(True)
    model = _load_state_into(build(arch, k, shape, mean=mean, std=std), sd, str(path), arch)
    m = model.mean.flatten().tolist() if model.has_norm else None
    s = model.std.flatten().tolist() if model.has_norm else None
    card = make_card(arch, k, shape, dataset=getattr(dataset_info, "name", None), mean=m, std=s,
                     class_names=getattr(dataset_info, "class_names", None))
    return LoadedModel(model, card, [str(path)], "checkpoint")


def _is_composite_dir(path: Path) -> bool:
    """A run dir written by ``robcli compose --export`` (card ``arch: composite``, no weights of its own)."""
    try:
        return json.loads((path / CARD).read_text()).get("arch") == "composite"
    except (OSError, ValueError, AttributeError):
        return False


def _is_mixnet_dir(path: Path) -> bool:
    """A run dir written by ``robcli mix build/train`` (card ``arch: mixnet``; weights of the mixing state only)."""
    try:
        return json.loads((path / CARD).read_text()).get("arch") == "mixnet"
    except (OSError, ValueError, AttributeError):
        return False


def _from_card(card: dict, weights: Path, kind: str) -> LoadedModel:
    norm = card.get("normalization") or {}
    try:
        model = build(card["arch"], card["num_classes"], card["input_shape"], mean=norm.get("mean"),
                      std=norm.get("std"), arch_kwargs=card.get("arch_kwargs"))
    except ModelError as e:
        raise ModelError(f"{weights}: {e}") from None
    model = _load_state_into(model, _read_state_file(weights), str(weights), card["arch"])
    return LoadedModel(model, card, [str(weights)], kind)


def check_compatible(lm: LoadedModel, dataset_info) -> None:
    """Refuse a model whose classes or input shape disagree with the data set.

    Raises:
        ModelError: with the flag that fixes it.
    """
    if dataset_info is None:
        return
    if tuple(lm.input_shape) != tuple(dataset_info.input_shape):
        hint = " (set --image-size to match)" if dataset_info.name == "imagefolder" else ""
        raise ModelError(
            f"model expects inputs of shape {tuple(lm.input_shape)} but {dataset_info.name} has "
            f"{tuple(dataset_info.input_shape)}{hint}"
        )
    if lm.num_classes != dataset_info.num_classes:
        raise ModelError(
            f"model outputs {lm.num_classes} classes but {dataset_info.name} has {dataset_info.num_classes}"
        )
