"""The run-directory format: ``card.json`` (what rebuilds a model around its weights), safetensors weights with
the card in their metadata, and :class:`LoadedModel`, what every loader returns.

A run directory holds ``card.json`` and ``model.safetensors`` (the best epoch; ``last.safetensors`` too after
``finetune``). Other run kinds (a composite, a mixture) keep the same ``card.json`` with their own ``arch``
and are loaded by their own packages (see :mod:`robcli.models.load`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robcli.errors import ModelError
from robcli.utils.fsio import atomic_write_bytes

if TYPE_CHECKING:
    import torch.nn as nn

CARD = "card.json"
WEIGHTS = "model.safetensors"
LAST = "last.safetensors"
CARD_META_KEY = "robcli.card"  # a card stored inside a safetensors file's metadata


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



def save_weights(model: nn.Module, path: str | Path, card: dict | None = None) -> None:
    """Save a state dict as safetensors, atomically; ``card`` (if given) goes into the file's metadata."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {CARD_META_KEY: json.dumps(card, sort_keys=True, default=str)} if card is not None else None
    atomic_write_bytes(Path(path), save(sd, metadata=meta))


def save_run(run_dir: str | Path, model: nn.Module, card: dict, *, name: str = WEIGHTS) -> Path:
    """Write (or update) a run directory: weights as safetensors (card in its metadata) plus ``card.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / name, card)
    atomic_write_bytes(run_dir / CARD, json.dumps(card, indent=2, sort_keys=True, default=str).encode())
    return run_dir


def validate_card(card: Any, where: str) -> dict:
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
    return validate_card(card, str(p))



def card_arch(run_dir: str | Path) -> str | None:
    """The ``arch`` a run directory's card names (``None`` when there is no readable card)."""
    try:
        card = json.loads((Path(run_dir) / CARD).read_text())
    except (OSError, ValueError):
        return None
    return card.get("arch") if isinstance(card, dict) else None


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


def image_size_for(image_size: int | None, *models: str | None) -> int | None:
    """``--image-size`` if given, else the side length recorded in the first model run dir's card.

    Lets commands after ``finetune`` read an ``imagefolder`` data set at the size the model was trained on
    without repeating ``--image-size``.
    """
    if image_size is not None:
        return image_size
    for m in models:
        card = Path(str(m)) / "card.json" if m else None
        if card is None or not card.is_file():
            continue
        try:
            shape = json.loads(card.read_text()).get("input_shape")
        except (OSError, ValueError):
            continue
        if isinstance(shape, list) and len(shape) == 3:
            return int(shape[-1])
    return None
