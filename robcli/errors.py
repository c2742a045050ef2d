"""Typed errors. Library code raises these; the CLI turns them into one-line messages and exit code 2."""


class RobcliError(Exception):
    """Base class for every error that is the user's to fix (bad input, missing file, ...)."""

    exit_code = 2


class UsageError(RobcliError):
    """A flag value is out of range, unknown, or inconsistent with another flag."""


class DataError(RobcliError):
    """A data set is unknown, missing from --data-dir, empty after selection, or malformed."""


class ModelError(RobcliError):
    """A model name is unknown or a checkpoint cannot be loaded into the requested architecture."""


class TableError(RobcliError):
    """A Parquet table is missing, corrupt, of the wrong kind, or inconsistent with another table."""


class TrainingCollapse(RobcliError):
    """Training ended with natural accuracy near chance."""


class NonFiniteOutput(ModelError):
    """A model returned NaN or infinite logits: predictions, margins and votes made from them mean nothing.

    ``who`` names the model (the CLI puts the ``--model`` it was given there); ``detail`` says where;
    ``member`` is ``"g"`` or ``"h"`` when the model is one member of a mixture (core g, robust h).
    """

    def __init__(self, detail: str, who: str | None = None, member: str | None = None):
        self.detail = str(detail)
        self.member = member
        self.who = str(who) if who is not None else {"g": "the core model g", "h": "the robust model h"}.get(
            member or "", "the model")
        super().__init__(f"{self.who} {self.detail}")

    def named(self, name: str) -> "NonFiniteOutput":
        """The same error, naming the model ``name``."""
        return NonFiniteOutput(self.detail, f"model {name}", self.member)
