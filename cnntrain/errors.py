"""Errors a user can cause or fix; the CLI turns each into one line and an exit code.

Anything that is not a CnnTrainError is a bug and keeps its traceback.
"""


class CnnTrainError(Exception):
    """Base class: a message meant for the user, ending in what to do about it."""

    exit_code = 1


class ConfigError(CnnTrainError):
    """A config file, a --set override or a layer list is wrong (a usage error)."""

    exit_code = 2


class DataError(CnnTrainError):
    """MNIST could not be downloaded, verified or parsed."""


class CheckpointError(CnnTrainError):
    """A checkpoint is missing, truncated, foreign or from a newer format."""


class DivergedError(CnnTrainError):
    """Training produced a non-finite loss."""
