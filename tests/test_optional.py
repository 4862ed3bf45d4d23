"""tests/support/optional.py, the one place that decides "skip, or fail when
CNNTRAIN_REQUIRE_<NAME>=1": it skips without the variable, fails with it, and no other test
file decides for itself."""

import json
import re
from pathlib import Path

import pytest

from tests.support import optional

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", sorted(optional.REQUIREMENTS))
def test_a_missing_requirement_skips_without_the_variable(name, monkeypatch):
    monkeypatch.delenv(f"CNNTRAIN_REQUIRE_{name}", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no such thing here$") as info:
        optional.unavailable(name, "no such thing here")
    assert info.value.allow_module_level  # also at import time, as importorskip did


@pytest.mark.parametrize("name", sorted(optional.REQUIREMENTS))
def test_a_missing_requirement_fails_when_the_variable_is_1(name, monkeypatch):
    monkeypatch.setenv(f"CNNTRAIN_REQUIRE_{name}", "1")
    with pytest.raises(pytest.fail.Exception) as info:
        optional.unavailable(name, "no such thing here")
    assert str(info.value).startswith(f"no such thing here; CNNTRAIN_REQUIRE_{name}=1 requires ")


def test_only_the_value_1_requires(monkeypatch):
    for value in ("0", "", "yes"):
        monkeypatch.setenv("CNNTRAIN_REQUIRE_TORCH", value)
        assert not optional.required("TORCH")
    monkeypatch.setenv("CNNTRAIN_REQUIRE_TORCH", "1")
    assert optional.required("TORCH")


def test_an_unknown_name_is_a_mistake_in_the_test_not_a_skip():
    with pytest.raises(ValueError, match="unknown requirement 'TORCHH'"):
        optional.unavailable("TORCHH", "typo")


def test_import_or_unavailable_returns_the_module_or_names_the_install_command(monkeypatch):
    assert optional.import_or_unavailable("json", "TORCH", "built in") is json
    monkeypatch.delenv("CNNTRAIN_REQUIRE_TORCH", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape("(pip install nope==1)")):
        optional.import_or_unavailable("cnntrain_no_such_module", "TORCH", "pip install nope==1")
    monkeypatch.setenv("CNNTRAIN_REQUIRE_TORCH", "1")
    with pytest.raises(pytest.fail.Exception, match="cnntrain_no_such_module is not installed"):
        optional.import_or_unavailable("cnntrain_no_such_module", "TORCH", "pip install nope==1")


def test_no_other_test_file_decides_skip_or_fail_for_itself():
    """importorskip and reading CNNTRAIN_REQUIRE_* belong to tests/support/optional.py alone."""
    helper = TESTS / "support" / "optional.py"
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in (helper, Path(__file__).resolve()):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "importorskip" in code or re.search(r"environ[^\n]*CNNTRAIN_REQUIRE_", code):
                offenders.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not offenders, "use tests.support.optional instead:\n" + "\n".join(offenders)


def test_every_requirement_is_documented_and_set_by_ci():
    docs = (TESTS.parent / "docs" / "testing.md").read_text()
    ci = (TESTS.parent / ".ci" / "run").read_text()
    for name in optional.REQUIREMENTS:
        assert f"CNNTRAIN_REQUIRE_{name}=1" in docs, name
        assert f"export CNNTRAIN_REQUIRE_{name}=1" in ci, name
