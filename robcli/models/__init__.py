"""Model registry, the input-normalization wrapper, and checkpoint IO."""

from robcli.models.io import (
    ExportedModel,
    LoadedModel,
    Normalized,
    build,
    check_compatible,
    load_model,
    make_card,
    parse_shape,
    read_card,
    save_run,
)
from robcli.models.registry import create_model, is_model, list_models, register_model

__all__ = [
    "ExportedModel", "LoadedModel", "Normalized", "build", "check_compatible", "create_model", "is_model",
    "list_models", "load_model", "make_card", "parse_shape", "read_card", "register_model", "save_run",
]
