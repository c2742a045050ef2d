"""robcli: robustness without accuracy loss, and proofs of how robust a classifier is.

From Python: ``import robcli`` then ``robcli.api.finetune``, ``.attack``, ``.certify``, ``.partition``,
``.compose``, ``.report``, ``.read`` and ``.import_cohen_log`` (:mod:`robcli.api`, imported on first use so that
``import robcli`` stays light and shell completion never loads torch). They are not re-exported as
``robcli.certify`` etc.: those names are the pipeline's packages (``robcli/certify/``, ``robcli/compose/``,
``robcli/report/``), and a function of the same name would be shadowed by the package as soon as it is imported.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "api"]


def __getattr__(name: str):
    if name == "api":
        import importlib

        return importlib.import_module("robcli.api")
    raise AttributeError(f"module 'robcli' has no attribute {name!r}")
