"""``load_model``: resolve whatever ``--model`` names into a :class:`~robcli.models.card.LoadedModel`.

``--model`` may be:
  * a robcli run directory (``card.json`` + ``model.safetensors``); run directories of other kinds (a composite
    from ``compose --export``, a mixture from ``compose --mix`` / ``finetune --loss mixnet``) are loaded by the
    loader registered for their card's ``arch`` in :data:`RUN_KINDS` (imported only when needed, so this
    package imports nothing from the packages above it);
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

import importlib
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from robcli.errors import ModelError, UsageError
from robcli.models.card import CARD, WEIGHTS, LoadedModel, card_arch, check_compatible, make_card, read_card
from robcli.models.foreign import (
    ExportedModel,
    check_classes,
    export_specs,
    is_export,
    is_torchscript,
    load_state_into,
    opaque_model,
    parse_shape,
    read_safetensors,
    read_state_file,
    sniff,
    zip_names,
)
from robcli.models.normalize import build
from robcli.models.registry import is_model, list_models

NORMALIZATION_MODES = ("auto", "dataset", "none")
# run-directory kinds written by packages above models/: card ``arch`` -> "module:function" of its loader,
# ``function(run_dir, card) -> LoadedModel``; imported on first use only
RUN_KINDS: dict[str, str] = {
    "composite": "robcli.compose.export:load_composite",
    "mixnet": "robcli.mixing.io:load_mixnet_run",
}


def _run_kind_loader(arch: str):
    module, fn = RUN_KINDS[arch].split(":")
    return getattr(importlib.import_module(module), fn)


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
    flag_classes = check_classes(num_classes)
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
    elif path.is_dir() and card_arch(path) in RUN_KINDS:
        lm = _run_kind_loader(card_arch(path))(path, read_card(path))
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
    kind = sniff(path)
    if kind == "empty":
        raise ModelError(f"{path} is empty (0 bytes)")
    names = zip_names(path) if kind == "zip" else []
    if is_export(path, names):
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:140]
            raise ModelError(f"{path} cannot be loaded as a torch.export program: {first}") from None
        batch, ex_shape, ex_classes = export_specs(ep)
        model = ExportedModel(ep, batch)
        return opaque_model(model, path, "export", flag_classes, flag_shape, dataset_info, ex_shape, ex_classes)
    if is_torchscript(names):
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0][:140]
            raise ModelError(f"{path} cannot be loaded as TorchScript: {first}") from None
        return opaque_model(model, path, "torchscript", flag_classes, flag_shape, dataset_info)

    # a weights file: its card comes from beside it, from its own metadata, or from --arch
    embedded = read_safetensors(path)[1] if kind == "safetensors" else None
    card = None
    if (path.parent / CARD).exists():
        card = read_card(path.parent)
    elif embedded is not None:
        card = embedded
    if card is not None and (arch is None or arch == card["arch"]):
        return _from_card(card, path, "checkpoint")
    sd = read_state_file(path)  # first: a pickled module is refused before anything else is asked
    if arch is None:
        raise ModelError(
            f"{path} is a bare checkpoint: name its architecture with --arch (one of {', '.join(list_models(tiny=False))})"
        )
    if k is None or shape is None:
        raise ModelError(f"{path}: give --dataset (or --num-classes and --input-shape) to build {arch!r}")
    mean, std = norm(True)
    model = load_state_into(build(arch, k, shape, mean=mean, std=std), sd, str(path), arch)
    m = model.mean.flatten().tolist() if model.has_norm else None
    s = model.std.flatten().tolist() if model.has_norm else None
    card = make_card(arch, k, shape, dataset=getattr(dataset_info, "name", None), mean=m, std=s,
                     class_names=getattr(dataset_info, "class_names", None))
    return LoadedModel(model, card, [str(path)], "checkpoint")



def _from_card(card: dict, weights: Path, kind: str) -> LoadedModel:
    norm = card.get("normalization") or {}
    try:
        model = build(card["arch"], card["num_classes"], card["input_shape"], mean=norm.get("mean"),
                      std=norm.get("std"), arch_kwargs=card.get("arch_kwargs"))
    except ModelError as e:
        raise ModelError(f"{weights}: {e}") from None
    model = load_state_into(model, read_state_file(weights), str(weights), card["arch"])
    return LoadedModel(model, card, [str(weights)], kind)

