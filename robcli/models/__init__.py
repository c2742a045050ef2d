"""Models: the architecture registry, the normalization wrapper, the run-directory format, foreign checkpoints,
and ``load_model``, the one door that turns ``--model`` into a model.

``registry`` (names -> architectures), ``archs`` (the built-in ones), ``normalize`` (:class:`Normalized`,
:func:`build`), ``card`` (run directories: ``card.json`` + safetensors, :class:`LoadedModel`), ``foreign``
(state dicts of other codebases, TorchScript, ``torch.export``), ``load`` (:func:`load_model`).
"""

from robcli.models.card import (
    CARD,
    LAST,
    WEIGHTS,
    LoadedModel,
    check_compatible,
    make_card,
    read_card,
    save_run,
    save_weights,
)
from robcli.models.foreign import ExportedModel, parse_shape
from robcli.models.load import load_model
from robcli.models.normalize import Normalized, build
from robcli.models.registry import create_model, is_model, list_models, register_model

__all__ = [
    "CARD", "LAST", "WEIGHTS", "ExportedModel", "LoadedModel", "Normalized", "build", "check_compatible",
    "create_model", "is_model", "list_models", "load_model", "make_card", "parse_shape", "read_card",
    "register_model", "save_run", "save_weights",
]
