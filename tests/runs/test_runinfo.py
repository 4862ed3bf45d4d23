"""`cnntrain runinfo`, the one place scripts ask about a run folder, and the layout rules it
answers from (cnntrain.runs.runfolder_layout)."""

import json
import re
import subprocess
import sys

import pytest

from cnntrain.runs import runfolder_layout as layout
from cnntrain.runs.runfolder import RunFolder
from cnntrain.runs.runfolder_layout import folder_state, is_run_folder
from cnntrain.runs.runinfo import FIELDS, run_info
from tests.support.clitools import assert_one_line_error, invoke


def _leftovers(path):
    path.mkdir(parents=True)
    (path / ".cnntrain-run").write_text('{"run_id": "r1"}\n')
    (path / "train.log").write_text("started\n")


def _foreign(path):
    path.mkdir(parents=True)
    (path / "train.log").write_text("mine\n")


def _housekeeping(path):
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / ".last.npz.x1y2.tmp").write_bytes(b"PK half")
    for name in (".lock", "overrides.txt", "sweep-status.json", "sweep-output.log",
                 ".sweep-stderr", ".overrides.txt.tmp", "..cnntrain-run.a1b2c3d4.tmp"):
        (path / name).write_text("")


def _resumable(path):
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "last.npz").write_bytes(b"")


def _finished(path):
    _resumable(path)
    (path / "summary.json").write_text("{}\n")


@pytest.mark.parametrize("make, state", [
    (lambda p: None, "empty"),
    (lambda p: p.mkdir(), "empty"),
    (_housekeeping, "empty"),
    (_leftovers, "leftovers"),
    (lambda p: (_leftovers(p), (p / "checkpoints").mkdir()), "leftovers"),
    (_resumable, "resumable"),
    (_finished, "finished"),
    (_foreign, "foreign"),
    (lambda p: (_housekeeping(p), (p / "checkpoints" / "mine.npz").write_bytes(b"")), "foreign"),
    (lambda p: (_housekeeping(p), (p / ".notes.tmp").write_bytes(b"")), "foreign"),
])
def test_state_follows_the_folder_rules(tmp_path, make, state):
    run = tmp_path / "run"
    make(run)
    assert folder_state(run) == state
    result = invoke("runinfo", run, "state")
    assert result.exit_code == 0 and result.output == state + "\n"


def test_paths_are_where_the_run_folder_writes_them(tmp_path):
    run = tmp_path / "run"
    folder = RunFolder(run)
    written = {"config": folder.config, "metrics": folder.metrics, "log": folder.log_path,
               "summary": folder.summary, "last": folder.last, "best": folder.best}
    answers = run_info(run, list(written))
    assert answers == [str(path) for path in written.values()]
    assert run_info(run, ["overrides", "sweep_status", "sweep_output"]) == [
        str(run / "overrides.txt"), str(run / "sweep-status.json"), str(run / "sweep-output.log")]


def test_several_fields_come_one_a_line_in_the_order_asked(tmp_path):
    run = tmp_path / "run"
    _resumable(run)
    (run / "sweep-status.json").write_text(json.dumps({"exit_code": 1, "error": "x"}))
    result = invoke("runinfo", run, "last", "exit_code", "state")
    assert result.exit_code == 0
    assert result.output.splitlines() == [str(run / "checkpoints" / "last.npz"), "1", "resumable"]


@pytest.mark.parametrize("status, answer", [
    (None, ""),
    ('{"exit_code": 130, "error": ""}', "130"),
    ('{"exit_code": 0}', "0"),
    ('{"exit_code": "2"}', ""),
    ('{"exit_code": true}', ""),
    ("[1]", ""),
    ('{"exit_code": 1', ""),
])
def test_exit_code_is_the_recorded_whole_number_or_an_empty_line(tmp_path, status, answer):
    run = tmp_path / "run"
    run.mkdir()
    if status is not None:
        (run / "sweep-status.json").write_text(status)
    assert run_info(run, ["exit_code"]) == [answer]


def test_an_unknown_field_is_a_one_line_error_listing_the_valid_ones(tmp_path):
    result = invoke("runinfo", tmp_path, "state", "lastt")
    assert_one_line_error(result, 2, "'lastt'", ", ".join(FIELDS))
    assert result.stdout == ""  # nothing half-answered


def test_a_file_or_a_line_break_in_the_name_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(invoke("runinfo", tmp_path / "file", "state"), 2, "is a file")
    assert_one_line_error(invoke("runinfo", tmp_path / "a\nb", "state"), 2, "line break")


def test_is_run_folder_knows_a_fits_files_and_a_sweeps_overrides(tmp_path):
    assert not is_run_folder(tmp_path)
    for name in layout.RUN_FILES + (layout.OVERRIDES,):
        run = tmp_path / f"run-{name}"
        run.mkdir()
        if name == layout.CHECKPOINTS:
            (run / name).mkdir()
        else:
            (run / name).write_text("")
        assert is_run_folder(run), name


def test_runinfo_imports_no_numpy_and_is_hidden_from_help():
    code = ("import sys; from cnntrain.cli import cli; from cnntrain.runs import runinfo; "
            "print('numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    assert "runinfo" not in invoke("--help").output


def test_the_sweep_scripts_keep_no_copy_of_the_run_folder_layout():
    """They ask `cnntrain runinfo`; a file name in their code (outside comments and the
    messages that point the user to a file) would be a second copy that can drift."""
    from pathlib import Path
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    names = [layout.CONFIG, layout.METRICS, layout.LOG, layout.SUMMARY, "last.npz", "best.npz",
             layout.OVERRIDES, layout.SWEEP_STATUS]
    for script in sorted(scripts.glob("sweep*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = re.sub(r"(^|\s)#.*$", "", line)  # a comment starts at a word
            if code.lstrip().startswith("printf 'results:"):
                continue
            for name in names:
                assert name not in code, f"{script.name}:{number}: {line.strip()}"
