"""The documentation cannot rot: every link in README.md and docs/*.md resolves, and every
command shown in their code blocks still parses and runs.

Each page's commands run in document order in a fresh folder of their own (configs/, docs/ and
scripts/ linked in), as a user would type them from the repository root: `cnntrain` on PATH is
the real CLI reading synthetic MNIST (tests/support/synthetic_cnntrain.py), training is
shortened with `--set` overrides, and a checkpoint a page uses before training it comes from a
tiny run made here. Every `cnntrain` command line, run or not, is also parsed by click, so a flag or
subcommand that stops existing fails here even when the command is on the skip-list.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.configschema import valid_keys
from tests.support.clitools import use_synthetic_mnist

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SYNTHETIC_CNNTRAIN = REPO / "tests" / "support" / "synthetic_cnntrain.py"

# What every documented `fit` (but not `--resume`, which keeps its run's data) and sweep gets
# appended: a minute-long LeNet-5 run becomes a second on synthetic MNIST (600 training images).
# The whole (200-image) test set, as the shipped configs score: a part of it would differ
# between seeds, and a committee of a seed sweep would then be refused.
SHORT = ["train.epochs=1", "train.warmup_epochs=0", "augment.clean_epochs=0", "data.val_size=100",
         "data.train_size=200", "data.test_size=0"]

# Commands shown but not run; each is still parsed (cnntrain) or its flags checked (--help).
SKIP = {
    "pip install": "installs packages; CI runs the two install commands (.ci/run)",
    "python -m pytest -q": "is the suite itself; the test names it shows are checked below",
    "sudo ": "needs root and Slurm; .ci/run and tests/scripts/test_slurm_real.py do it",
    "eval ": "starts a Slurm cluster as root (as above)",
    "sbatch ": "needs a Slurm cluster; its inner cnntrain command is parsed",
    "squeue": "needs a Slurm cluster",
    "python benchmarks/": "benchmarks time for minutes against PyTorch; flags checked by --help",
    "python scripts/thread_bits.py": "trains a config twice; tests/scripts/test_thread_bits.py",
}
# Shown failing on purpose: the exit code the page promises.
EXPECTED_EXIT = {"dense 100000000000": 2}
# Placeholders a page uses for the reader's own paths.
PLACEHOLDERS = {"/path/to/mnist": "{mnist}", "~/data/mnist": "{tmp}/data-copy"}


# --------------------------------------------------------------------------- reading pages


def _without_code(text):
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page):
    headings = re.findall(r"^#+ (.*)$", _without_code(page.read_text()), re.MULTILINE)
    return {_slug(h) for h in headings}


def _links(page):
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _without_code(page.read_text()))


def code_lines(page):
    """The lines of every indented and fenced code block (not ```python), continuations
    joined."""
    lines, out, fence, previous_blank = page.read_text().splitlines(), [], None, True
    in_indented = False
    for line in lines:
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence is not None:
            if fence != "python":
                out.append(line)
            continue
        if line.startswith("    ") and (previous_blank or in_indented):
            in_indented = True
            out.append(line[4:])
        elif line.strip():
            in_indented = False
        previous_blank = not line.strip()
    joined = []
    for line in out:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    return joined


COMMAND_WORDS = ("cnntrain", "python", "pip", "sudo", "sbatch", "eval", "squeue;", "scripts/",
                 "benchmarks/")


def commands(page):
    """Documented commands: the code lines that start with a command word, without '$ '."""
    found = []
    for line in code_lines(page):
        line = line.removeprefix("$ ")
        if line.startswith(COMMAND_WORDS):
            found.append(line)
    return found


def split_command(line):
    """Words of one shell command, its trailing comment dropped."""
    return shlex.split(line, comments=True)


def cnntrain_parts(line):
    """The `cnntrain ...` commands inside a documented line: after `&&`, `;`, or `exec` in a
    --wrap string."""
    words, parts, current = split_command(line), [], []
    for word in words:
        if word in ("&&", ";") or word.endswith(";"):
            if word.endswith(";") and word != ";":
                current.append(word[:-1])
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    found = [p for p in parts if p and p[0] == "cnntrain"]
    for word in words:
        if word.startswith("exec cnntrain "):
            found.append(shlex.split(word)[1:])
    return found


def all_commands():
    return [(page, line) for page in PAGES for line in commands(page)]


def _id(item):
    page, line = item
    return f"{page.relative_to(REPO)}: {line[:60]}"


# --------------------------------------------------------------------------- links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_image_resolves(page):
    bad = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            bad.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            bad.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / link.partition("#")[0]).resolve() for link in _links(REPO / "README.md")}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


def test_the_readme_keeps_the_two_commands_ci_reads():
    text = (REPO / "README.md").read_text()
    assert "\n    pip install . && cnntrain fit --config configs/lenet5.ini\n" in text
    assert "\n    pip install '.[test]' torch==2.13.0 && python -m pytest -q\n" in text


def test_configs_page_lists_every_key():
    text = (REPO / "docs" / "configs.md").read_text()
    missing = [f"{s}.{k}" for s, keys in valid_keys().items() for k in keys
               if f"`{s}.{k}`" not in text]
    assert not missing


def _defined(root, name):
    pattern = re.compile(rf"^\s*def {re.escape(name)}\(", re.MULTILINE)
    return any(pattern.search(f.read_text()) for f in root.rglob("*.py"))


def test_the_maths_map_names_functions_and_tests_that_exist():
    """Each row of the README's map: its function in cnntrain/, its test in tests/."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The maths, equation by equation", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert len(rows) >= 10
    for row in rows:
        function_cell, test_cell = row.split(" | ")[-2:]
        for name in re.findall(r"`(?:\w+\.)?(\w+)`", function_cell):
            assert _defined(REPO / "cnntrain", name), (name, row)
        (test,) = re.findall(r"`(test_\w+)`", test_cell)
        assert _defined(REPO / "tests" / "nn", test), test


def test_pytest_commands_name_tests_that_exist():
    for page, line in all_commands():
        words = split_command(line)
        if words[:3] == ["python", "-m", "pytest"] and "-k" in words:
            folder, name = words[words.index("-k") - 1], words[words.index("-k") + 1]
            assert _defined(REPO / folder, name), (page.name, line)


# --------------------------------------------------------------------------- parsing


def _parse(args):
    """click's own parsing of `cnntrain ARGS` down to the subcommand, without running it."""
    with cli.make_context("cnntrain", list(args)) as ctx:
        name, command, rest = cli.resolve_command(ctx, ctx._protected_args + ctx.args)
        with command.make_context(name, rest, parent=ctx):
            pass


@pytest.mark.parametrize("item", all_commands(), ids=_id)
def test_every_cnntrain_command_line_parses(item):
    page, line = item
    for args in cnntrain_parts(line):
        try:
            _parse(args[1:])
        except click.exceptions.Exit:
            pass  # --help
        except click.UsageError as error:
            pytest.fail(f"{page.name}: {line}: {error.format_message()}")


def _script(path):
    return REPO / path


@pytest.mark.parametrize("item", [i for i in all_commands() if re.match(
    r"python (benchmarks|scripts)/", i[1])], ids=_id)
def test_every_python_script_shown_exists_and_knows_its_flags(item):
    page, line = item
    words = split_command(line)
    script = _script(words[1])
    assert script.is_file(), f"{page.name}: {line}: no {words[1]}"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, timeout=120, cwd=REPO, env=_pythonpath(os.environ),
                           check=False)
    assert shown.returncode == 0, shown.stderr
    for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert flag in shown.stdout, f"{page.name}: {line}: {flag} is not in --help"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_override_lists_are_valid_for_their_config(page):
    """results.md's '(x) --set ...' lines: each is a valid set of overrides of bn-aug.ini."""
    for line in code_lines(page):
        match = re.match(r"\((\w+)\) (--set .*)$", line)
        if match:
            result = CliRunner().invoke(cli, ["info", "--config", str(REPO / "configs/bn-aug.ini"),
                                              *shlex.split(match.group(2))])
            assert result.exit_code == 0, (line, result.output)


# --------------------------------------------------------------------------- running


def _pythonpath(env):
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}


@pytest.fixture
def workspace(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    """A folder laid out like the repository root, where `cnntrain` is the real CLI on
    synthetic MNIST."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "docs", "scripts", "benchmarks"):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    (work / "my-scans").mkdir()
    (work / "my-scans" / "digit.jpg").write_bytes((REPO / "docs" / "digit.jpg").read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "cnntrain"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SYNTHETIC_CNNTRAIN}" "$@"\n')
    shim.chmod(0o755)
    env = _pythonpath(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", OPENBLAS_NUM_THREADS="1",
               CNNTRAIN_TEST_MNIST_TABLE=json.dumps(synthetic_mnist.table),
               CNNTRAIN_DATA_DIR=str(synthetic_mnist_dir))
    env.pop("CNNTRAIN_MNIST_MIRRORS", None)
    return {"dir": work, "env": env, "mnist": synthetic_mnist_dir, "tmp": tmp_path}


def _shortened(words):
    """Overrides appended to a fit (not a resume) and to a sweep, so each trains a second."""
    if words[:2] in (["cnntrain", "fit"], ["cnntrain", "gradcheck"]) and "--resume" not in words:
        return words + [w for key in SHORT for w in ("--set", key)]
    if words[0].startswith("scripts/sweep"):
        # A sweep refuses a key given twice: a fixed --set of a shortened key takes its value.
        short = dict(item.split("=", 1) for item in SHORT)
        words = [f"{w.split('=')[0]}={short[w.split('=')[0]]}"
                 if i and words[i - 1] in ("--set", "-s") and w.split("=")[0] in short else w
                 for i, w in enumerate(words)]
        given = {w.split("=")[0] for w in words}
        extra = [w for key, value in short.items() if key not in given
                 for w in ("--set", f"{key}={value}")]
        if words[0] == "scripts/sweep_slurm.sh" and "--print" not in words:
            extra.append("--print")  # submitting needs a cluster: print the sbatch line
        return words + extra
    return words


def _ensure_checkpoints(words, ws):
    """A checkpoint or run folder a page uses before training it comes from a tiny run."""
    for i, word in enumerate(words):
        if i and words[i - 1] in ("--out", "-o"):
            continue
        match = re.match(r"((?:runs|results)/[\w.-]+(?:/seed-\d+)?)(/checkpoints/\w+\.npz)?$",
                         word)
        if match and not (ws["dir"] / match.group(1)).exists():
            args = ["cnntrain", "fit", "--config", "configs/quick.ini", "--out", match.group(1),
                    "--quiet"]
            done = subprocess.run(_shortened(args), cwd=ws["dir"], env=ws["env"],
                                  capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr


def _serve(words, ws, line):
    """`serve` runs until stopped: start it on a free port, ask it for its model, SIGTERM."""
    proc = subprocess.Popen(words + ["--port", "0"], cwd=ws["dir"], env=ws["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.time() + 60, ""
        while "http://" not in seen and time.time() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()
        assert "http://" in seen, f"{line}: {seen}"
        url = re.search(r"http://\S+?/", seen).group(0)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "api/model", timeout=30) as answer:  # serving, signals handled
            assert json.load(answer)["layers"], line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run(line, ws):
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value.format(**ws))
    words = split_command(line)
    if words[0] == "scripts/sweep_slurm.sh" and not _script(words[0]).exists():
        pytest.fail(f"no {words[0]}")
    _ensure_checkpoints(words, ws)
    if words[:2] == ["cnntrain", "serve"]:
        return _serve(words, ws, line)
    words = _shortened(words)
    done = subprocess.run(words, cwd=ws["dir"], env=ws["env"], capture_output=True, text=True,
                          check=False,
                          timeout=600)
    expected = next((code for part, code in EXPECTED_EXIT.items() if part in line), 0)
    assert done.returncode == expected, f"{line}\n{done.stdout}\n{done.stderr}"


def _skipped(line):
    return next((reason for start, reason in SKIP.items() if line.startswith(start)), None)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_shown_runs(page, workspace):
    for line in commands(page):
        if _skipped(line) is None:
            _run(line, workspace)
