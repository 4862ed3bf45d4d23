"""The one rule for tests that need something optional (a package such as torch, the real
MNIST, a Slurm cluster, a browser): when it is missing the test is skipped with the reason,
unless CNNTRAIN_REQUIRE_<NAME>=1, which makes the same reason a failure. .ci/run sets every
CNNTRAIN_REQUIRE_<NAME>, so CI can never pass by skipping.

NAME is one of REQUIREMENTS' keys; each is documented in docs/testing.md.
"""

import importlib
import os

import pytest

# NAME -> what it stands for, as the messages say it.
REQUIREMENTS = {
    "TORCH": "the PyTorch parity tests",
    "REAL_MNIST": "the real-MNIST tests",
    "SLURM": "the real-cluster Slurm tests",
    "BROWSER": "the browser test",
}


def required(name):
    """True when CNNTRAIN_REQUIRE_<name>=1: a missing `name` must fail the tests, not skip them."""
    if name not in REQUIREMENTS:
        raise ValueError(f"unknown requirement {name!r}: one of {', '.join(REQUIREMENTS)}")
    return os.environ.get(f"CNNTRAIN_REQUIRE_{name}") == "1"


def unavailable(name, reason):
    """`name` is missing because of `reason`: skip the test (or the whole module, when called
    while it is imported), or fail it when CNNTRAIN_REQUIRE_<name>=1. Never returns."""
    if required(name):
        pytest.fail(f"{reason}; CNNTRAIN_REQUIRE_{name}=1 requires {REQUIREMENTS[name]}",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_or_unavailable(module, name, install):
    """Import and return `module`, or unavailable(name, ...) naming `install`, the command that
    installs it. The replacement for pytest.importorskip."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(name, f"{module} is not installed ({install}): {exc}")
