"""Architecture registry in the timm style: ``register_model``, ``list_models``, ``is_model``, ``create_model``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from robcli.errors import ModelError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    description: str
    tiny: bool = False


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", tiny: bool = False):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(name, fn, description, tiny)
        return fn

    return deco


def _ensure_registered() -> None:
    from robcli.models import archs  # noqa: F401  (registers the built-in architectures)


def list_models(pattern: str = "*", *, tiny: bool | None = None) -> list[str]:
    _ensure_registered()
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (tiny is None or e.tiny == tiny)
    )


def is_model(name: str) -> bool:
    _ensure_registered()
    return name in _MODELS


def create_model(name: str, num_classes: int, input_shape, **kwargs):
    """Build a registered architecture (no normalization; see :func:`robcli.models.build`)."""
    _ensure_registered()
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name].builder(num_classes, tuple(input_shape), **kwargs)
