"""The folders show the architecture, and the rules that make them mean it hold (issue #28):
the network maths (cnntrain/nn) stands alone, nothing outside tests/ imports from tests/, and
no module of the package is over 500 lines."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cnntrain"
MAX_LINES = 500

# What cnntrain/nn may import of the package: itself and the two leaf modules every layer
# of the code shares. Everything else (data, runs, apps, cli, config, console, fileio) builds
# on the maths, never the other way round.
NN_MAY_IMPORT = ("cnntrain.nn", "cnntrain.errors", "cnntrain.constants")

def imported_modules(path, repo=REPO):
    """Every module a file imports, at any depth (function-level imports too), as dotted
    names; `from X import a, b` gives X.a and X.b, since a and b may be submodules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(repo).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield from (f"{base}.{alias.name}" for alias in node.names)


def within(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def python_files(root):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_imported_modules_sees_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "cnntrain" / "nn" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\ndef f():\n    from cnntrain.runs import fit\n"
                      "    from ..data.mnist import load_mnist\n")
    assert set(imported_modules(module, tmp_path)) == {"os", "cnntrain.runs.fit",
                                             "cnntrain.data.mnist.load_mnist"}


def test_the_maths_imports_nothing_from_the_rest_of_the_package():
    offending = [f"{path.relative_to(REPO)} imports {name}"
                 for path in python_files(PACKAGE / "nn")
                 for name in imported_modules(path)
                 if within(name, ["cnntrain"]) and not within(name, NN_MAY_IMPORT)
                 and name != "cnntrain.__version__"]
    assert not offending, "cnntrain/nn must stand alone:\n" + "\n".join(offending)


def test_nothing_outside_tests_imports_from_tests():
    files = [p for p in python_files(REPO)
             if p.relative_to(REPO).parts[0] not in ("tests", ".git")]
    assert any(p.parts[-2:] == ("benchmarks", "memory_estimate.py") for p in files)
    offending = [f"{path.relative_to(REPO)} imports {name}"
                 for path in files for name in imported_modules(path)
                 if within(name, ["tests"])]
    assert not offending, "\n".join(offending)


def line_counts():
    return {path.relative_to(REPO).as_posix(): len(path.read_text().splitlines())
            for path in python_files(PACKAGE)}


def test_no_module_is_over_500_lines():
    grown = sorted(f"{name} ({n} lines)" for name, n in line_counts().items() if n > MAX_LINES)
    assert not grown, f"over {MAX_LINES} lines, split along their seams: {', '.join(grown)}"
