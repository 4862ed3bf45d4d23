"""Errors a user can cause or fix; the CLI turns each into one line and an exit code.

Anything that is not a CnnTrainError is a bug and keeps its traceback.
"""

import re


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


class Interrupted(CnnTrainError):
    """A stop signal arrived; training stopped cleanly after a whole step, at `state`.
    The exit code is the shell's for that signal: 130 (Ctrl-C), 143 (SIGTERM), 129 (SIGHUP)."""

    def __init__(self, state, message="interrupted", signum=2):
        super().__init__(message)
        self.state = state
        self.signum = signum
        self.exit_code = 128 + signum


class MissingExtra(CnnTrainError):
    """An optional dependency is not installed: a usage problem fixed by one pip command."""

    exit_code = 2


def require_extra(module, what, extra):
    """Import and return `module` (e.g. "PIL.Image"), or raise MissingExtra: '{what} needs
    {package}: pip install 'cnntrain[{extra}]''. The one place that words this error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"PIL": "Pillow"}.get(module.split(".")[0], module.split(".")[0])
        raise MissingExtra(f"{what} needs {package}: pip install 'cnntrain[{extra}]'") from None


def one_line_reason(exc):
    """An exception's message as the reason in a one-line error: whitespace (newlines too)
    collapsed, the object reprs some libraries put in it ('<_io.BytesIO object at 0x...>',
    '<_io.BufferedReader name=5>'), which mean nothing to a user, left out, and at most 120
    characters; the exception's type when nothing is left."""
    text = re.sub(r"\s*<[^<>]* (?:object at 0x[0-9a-fA-F]+|name=[^<>]*)>", "", str(exc))
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
