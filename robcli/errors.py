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
