"""Architecture registry in the timm style: ``register_model``, ``list_models``, ``is_model``, ``create_model``."""

from __future__ import annotations

from typing import Callable

from robcli.errors import ModelError
from robcli.utils.registry import Entry, Registry

MODELS: Registry[Callable] = Registry("model", modules=("robcli.models.archs",), error=ModelError)
"""Every registered architecture (builders ``(num_classes, input_shape, **kw) -> nn.Module``; meta ``tiny``)."""


def register_model(name: str, description: str = "", tiny: bool = False):
    """Decorator registering an architecture builder under ``name`` (``tiny``: a test-size member)."""
    return MODELS.register(name, description, tiny=bool(tiny))


def list_models(pattern: str = "*", *, tiny: bool | None = None) -> list[str]:
    return MODELS.names(pattern, **({} if tiny is None else {"tiny": bool(tiny)}))


def is_model(name: str) -> bool:
    return MODELS.resolve(name) is not None


def model_entry(name: str) -> Entry[Callable]:
    """The registered entry (builder, description, meta) of ``name``; ModelError naming the choices if unknown."""
    return MODELS.get(name)


def create_model(name: str, num_classes: int, input_shape, **kwargs):
    """Build a registered architecture (no normalization; see :func:`robcli.models.build`)."""
    return MODELS.get(name).obj(num_classes, tuple(input_shape), **kwargs)
