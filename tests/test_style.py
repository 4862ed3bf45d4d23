"""The one rule for type hints (docs/testing.md, "Code style"): none in cnntrain/. Types and
shapes are said in docstrings, as CS231n's code says them; the only annotations are where
Python needs them, the fields of a dataclass or a typing.NamedTuple."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cnntrain"

def _is_record_class(node):
    """A class whose annotated class-level names are its fields: a dataclass or a NamedTuple."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target) in ("dataclass", "dataclasses.dataclass"):
            return True
    return any(ast.unparse(base) in ("NamedTuple", "typing.NamedTuple") for base in node.bases)


def annotations(source, filename="<source>"):
    """(line, what) of every annotation in `source` that the rule does not allow."""
    tree = ast.parse(source, filename=filename)
    fields = {id(statement) for node in ast.walk(tree)
              if isinstance(node, ast.ClassDef) and _is_record_class(node)
              for statement in node.body if isinstance(statement, ast.AnnAssign)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            every = a.posonlyargs + a.args + a.kwonlyargs + [v for v in (a.vararg, a.kwarg) if v]
            found += [(arg.lineno, f"argument {arg.arg}: {ast.unparse(arg.annotation)}")
                      for arg in every if arg.annotation is not None]
            if getattr(node, "returns", None) is not None:
                found.append((node.lineno, f"{node.name} -> {ast.unparse(node.returns)}"))
        elif isinstance(node, ast.AnnAssign) and id(node) not in fields:
            found.append((node.lineno, f"{ast.unparse(node.target)}: "
                                       f"{ast.unparse(node.annotation)}"))
    return sorted(found, key=lambda hit: hit[0])


def package_annotations():
    """{module path relative to the repository: its disallowed annotations}."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = annotations(path.read_text(), str(path))
        if hits:
            found[path.relative_to(REPO).as_posix()] = hits
    return found


def test_the_package_has_no_type_hints_outside_dataclass_fields():
    found = package_annotations()
    offending = [f"{name}:{line}: {what}" for name, hits in found.items() for line, what in hits]
    assert not offending, ("cnntrain/ has no type hints: say types and shapes in the docstring "
                           "(docs/testing.md, Code style):\n" + "\n".join(offending))


def test_the_rule_catches_what_it_forbids_and_allows_dataclass_fields():
    source = '''
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

LIMIT: int = 3

def f(x: int, *args: str, y=1, **kw: bool) -> float:
    z: int = 2
    return lambda: z

@dataclass(frozen=True)
class A:
    n: int
    def g(self) -> None:
        pass

@dataclasses.dataclass
class B:
    m: int = 0

class C(NamedTuple):
    k: int

class D:
    t: int = 0
'''
    assert [what for _, what in annotations(source)] == [
        "LIMIT: int", "argument x: int", "argument args: str", "argument kw: bool",
        "f -> float", "z: int", "g -> None", "t: int"]


def test_the_rule_is_stated_in_the_docs():
    assert "## Code style" in (REPO / "docs" / "testing.md").read_text()
