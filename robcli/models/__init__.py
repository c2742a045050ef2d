"""Model registry, the input-normalization wrapper, and checkpoint IO."""

from robcli.models.io import LoadedModel, Normalized, build, load_model, save_run
from robcli.models.registry import create_model, is_model, list_models, register_model

__all__ = [
    "LoadedModel", "Normalized", "build", "create_model", "is_model", "list_models", "load_model",
    "register_model", "save_run",
]
