"""Folders that are not this run's (issue #27, cases 1-3): cnntrain writes a run only into a
new or empty folder, or into a folder it marked as a run's own; everything else is refused in
one line, --overwrite deletes only cnntrain's own files, and a loose checkpoint names no run
folder. Folders written before the marker existed stay usable."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from cnntrain.runs import runfolder
from cnntrain.runs.checkpoint import save_checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.scripts.test_sweep import (  # noqa: F401
    FIXED,
    QUICK,
    SWEEP,
    sweep_env,
    synthetic,
    synthetic_dir,
    synthetic_table,
)
from tests.support import proctools
from tests.support.clitools import assert_one_line_error, invoke, small_run_env

MARKER = ".cnntrain-run"


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    return small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir)


def fit(env, *args):
    return invoke("fit", "--config", env["config"], "-q", *args)


def contents(folder):
    """Every file under `folder` (the lock aside, which only says who held it) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".lock"}


def state(folder):
    result = invoke("runinfo", folder, "state")
    assert result.exit_code == 0, result.output
    return result.output.strip()


def epochs_of(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_id_of(checkpoint):
    return load_checkpoint(checkpoint).meta["run_id"]


@pytest.fixture
def base(env):
    """A finished run of one epoch, to copy from."""
    assert fit(env, "--set", "train.epochs=1", "--out", env["tmp"] / "base").exit_code == 0
    return env["tmp"] / "base"


# ------------------------------------------------------------------ 1. last.npz gone

def test_a_finished_run_whose_last_checkpoint_is_gone_is_not_overwritten(env, base):
    k = env["tmp"] / "k"
    shutil.copytree(base, k)
    (k / "checkpoints" / "last.npz").unlink()  # to save space
    before = contents(k)
    assert state(k) == "finished"

    result = fit(env, "--out", k)
    assert_one_line_error(result, 2, f"{k} already holds a finished run whose "
                          "checkpoints/last.npz is gone", "summary.json", "checkpoints/best.npz",
                          "--out DIR", "--overwrite")
    assert contents(k) == before

    other = env["tmp"] / "other"
    assert fit(env, "--set", "train.seed=7", "--out", other).exit_code == 0
    result = invoke("fit", "--resume", other / "checkpoints" / "last.npz", "--out", k, "-q",
                    "--set", "train.epochs=3")
    assert_one_line_error(result, 2, f"{k} holds another run", "summary.json",
                          f"({other}, the default without --out)", "--overwrite")
    assert contents(k) == before

    # Its own run, copied back at the same position, may continue it there: nothing is lost.
    result = invoke("fit", "--resume", base / "checkpoints" / "last.npz", "--out", k, "-q",
                    "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(k) == [1, 2]
    assert run_id_of(k / "checkpoints" / "last.npz") == run_id_of(base / "checkpoints" / "last.npz")


def test_an_unfinished_run_whose_last_checkpoint_is_gone_keeps_its_results(env):
    run = env["run"]
    assert fit(env, "--set", "train.epochs=3", "--set", "train.lr_schedule=constant").exit_code == 0
    last = run / "checkpoints" / "last.npz"
    # An older position of this run (its own run id), then the run left unfinished with its
    # last.npz gone: best.npz and three logged epochs remain.
    ckpt = load_checkpoint(last)
    older = env["tmp"] / "epoch1.npz"
    save_checkpoint(older, dataclasses.replace(ckpt, epoch_order=None, meta=dict(
        ckpt.meta, epoch=1, step=16, history=ckpt.meta["history"][:1])))
    (run / "summary.json").unlink()
    last.unlink()
    before = contents(run)
    assert state(run) == "leftovers"

    assert_one_line_error(fit(env), 2, "already holds a run whose checkpoints/last.npz is gone",
                          "checkpoints/best.npz", "metrics.jsonl (3 epochs)")
    result = invoke("fit", "--resume", older, "--out", run, "-q")
    assert_one_line_error(result, 2, "holds this run further on (epoch 3 in its metrics.jsonl",
                          "--out DIR", "--overwrite")
    assert contents(run) == before


# ------------------------------------------------------------------ 2. the user's own folder

def user_folder(path, base):
    """What a user keeps: a config of their own, metrics, a summary and a checkpoint."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.ini").write_text("# my settings\n" + (base / "config.ini").read_text())
    (path / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.99}\n')
    (path / "summary.json").write_text('{"mine": true}\n')
    shutil.copy(base / "checkpoints" / "best.npz", path / "checkpoints" / "best.npz")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_users_own_folder_is_never_written_into(env, base, overwrite):
    mine = env["tmp"] / "userdir"
    user_folder(mine, base)
    before = contents(mine)
    result = fit(env, "--out", mine, *overwrite)
    assert_one_line_error(result, 2, f"{mine} holds files cnntrain did not write (checkpoints/, "
                          "config.ini, metrics.jsonl, summary.json) and no .cnntrain-run marker",
                          "--out DIR", "move those files out")
    if overwrite:
        assert "--overwrite replaces only a run cnntrain wrote" in result.stderr
    result = invoke("fit", "--resume", base / "checkpoints" / "last.npz", "--out", mine, "-q",
                    "--set", "train.epochs=2", *overwrite)
    assert_one_line_error(result, 2, "holds files cnntrain did not write")
    assert contents(mine) == before
    assert sorted(p.name for p in mine.iterdir()) == sorted(["checkpoints", "config.ini",
                                                             "metrics.jsonl", "summary.json"])
    assert state(mine) == "foreign"


def test_one_file_of_the_users_makes_a_folder_theirs_and_housekeeping_does_not(env):
    folder = env["run"]
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    assert_one_line_error(fit(env), 2, "(notes.txt)")
    assert not (folder / ".lock").exists()  # refused before the lock file is made in it

    (folder / "notes.txt").unlink()
    (folder / "overrides.txt").write_text("train.lr=0.05\n")  # a sweep's, before its fit
    (folder / "sweep-output.log").write_text("== start\n")
    assert state(folder) == "empty"
    assert fit(env).exit_code == 0
    assert (folder / MARKER).is_file() and (folder / "summary.json").is_file()
    assert (folder / "sweep-output.log").read_text() == "== start\n"


def test_overwrite_deletes_only_what_cnntrain_wrote(env):
    run = env["run"]
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    old_id = run_id_of(run / "checkpoints" / "last.npz")
    (run / "notes.txt").write_text("what I tried\n")
    (run / "checkpoints" / "mine.npz").write_bytes(b"kept")
    (run / "sweep-status.json").write_text('{"exit_code": 0}\n')

    assert_one_line_error(fit(env), 2, "already holds a run", "--overwrite")
    result = fit(env, "--overwrite", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert (run / "notes.txt").read_text() == "what I tried\n"
    assert (run / "checkpoints" / "mine.npz").read_bytes() == b"kept"
    assert (run / "sweep-status.json").exists()
    new_id = run_id_of(run / "checkpoints" / "last.npz")
    assert new_id != old_id and run_id_of(run / "checkpoints" / "best.npz") == new_id
    assert json.loads((run / MARKER).read_text()) == {"run_id": new_id}
    assert epochs_of(run) == [1, 2]


# ------------------------------------------------------------------ 3. a loose checkpoint

def test_a_loose_checkpoint_never_makes_the_current_folder_a_run_folder(env, base):
    proj = env["tmp"] / "proj"
    proj.mkdir()
    shutil.copy(base / "checkpoints" / "last.npz", proj / "model.npz")
    (proj / "config.ini").write_text("[mine]\n")
    (proj / "summary.json").write_text('{"mine": true}\n')
    before = contents(proj)
    os.chdir(proj)

    result = invoke("fit", "--resume", "model.npz", "-q", "--set", "train.epochs=2")
    assert_one_line_error(result, 2, "model.npz is not in a run folder's checkpoints/ folder",
                          "--out DIR")
    assert contents(proj) == before and not (proj / ".lock").exists()

    result = invoke("fit", "--resume", "model.npz", "--out", "runs/resumed", "-q",
                    "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert contents(proj / "runs" / "resumed")["checkpoints/last.npz"]
    assert epochs_of(proj / "runs" / "resumed") == [1, 2]
    assert {k: v for k, v in contents(proj).items() if not k.startswith("runs/")} == before


# ------------------------------------------------------------------ the marker

def test_the_marker_is_written_before_any_other_file_of_the_run(env, monkeypatch):
    order = []
    for name in ("atomic_write_text", "save_checkpoint", "append_line"):
        real = getattr(runfolder, name)
        monkeypatch.setattr(runfolder, name, lambda path, *a, real=real: (
            order.append(Path(path).name), real(path, *a))[1])
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    assert order[0] == MARKER and order.count(MARKER) == 1, order
    run_id = run_id_of(env["run"] / "checkpoints" / "last.npz")
    assert json.loads((env["run"] / MARKER).read_text()) == {"run_id": run_id}


def test_a_start_killed_before_its_first_checkpoint_is_taken_up_again(env):
    code, _, _ = proctools.run(env["table"], env["data_dir"], "fit", "--config", env["config"],
                               "-q", faults={"signal_in_save": [signal.SIGKILL]}, cwd=env["tmp"])
    assert code == -signal.SIGKILL
    run = env["run"]
    assert (run / MARKER).is_file() and not (run / "checkpoints" / "last.npz").exists()
    assert state(run) == "leftovers"
    result = fit(env)  # the same command, no --overwrite
    assert result.exit_code == 0, result.output
    assert epochs_of(run) == [1, 2]


def test_another_runs_checkpoint_may_resume_where_a_start_died_early(env, base):
    run = env["run"]
    run.mkdir(parents=True)
    (run / MARKER).write_text('{"run_id": "died-early"}\n')
    (run / "train.log").write_text("fit small.ini: ...\n")
    result = invoke("fit", "--resume", base / "checkpoints" / "last.npz", "--out", run, "-q",
                    "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert json.loads((run / MARKER).read_text())["run_id"] == \
        run_id_of(base / "checkpoints" / "last.npz")


def test_a_resume_killed_before_its_first_checkpoint_is_continued_by_the_same_command(env, base):
    # What `fit --resume BASE --out D` leaves when killed right after it began: its marker,
    # the checkpoint's history and the best.npz it repaired from it, but no last.npz yet.
    d = env["tmp"] / "d"
    (d / "checkpoints").mkdir(parents=True)
    last = base / "checkpoints" / "last.npz"
    (d / MARKER).write_text(json.dumps({"run_id": run_id_of(last)}) + "\n")
    shutil.copy(base / "metrics.jsonl", d / "metrics.jsonl")
    shutil.copy(base / "checkpoints" / "best.npz", d / "checkpoints" / "best.npz")
    assert_one_line_error(fit(env, "--out", d), 2, "already holds a run whose", "--overwrite")
    result = invoke("fit", "--resume", last, "--out", d, "-q", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(d) == [1, 2]


# ------------------------------------------------------------------ folders from before markers

def test_a_run_folder_written_before_markers_is_resumed_and_marked(env):
    run = env["run"]
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    (run / MARKER).unlink(missing_ok=True)  # as an earlier version left it
    run_id = run_id_of(run / "checkpoints" / "last.npz")
    assert state(run) == "finished"
    (run / "summary.json").unlink()  # stopped before its end
    assert state(run) == "resumable"

    assert_one_line_error(fit(env), 2, "already holds a run", "--resume")
    result = invoke("fit", "--resume", run / "checkpoints" / "last.npz", "-q",
                    "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(run) == [1, 2]
    assert json.loads((run / MARKER).read_text()) == {"run_id": run_id}
    assert run_id_of(run / "checkpoints" / "last.npz") == run_id


def test_an_unmarked_folder_whose_last_checkpoint_names_no_run_is_not_cnntrains(env, base):
    legacy = env["tmp"] / "legacy"
    shutil.copytree(base, legacy)
    (legacy / MARKER).unlink(missing_ok=True)
    (legacy / "checkpoints" / "last.npz").unlink()
    (legacy / "summary.json").unlink()
    before = contents(legacy)
    assert_one_line_error(fit(env, "--out", legacy, "--overwrite"), 2,
                          "holds files cnntrain did not write (checkpoints/, config.ini, "
                          "metrics.jsonl, train.log)")
    assert contents(legacy) == before
    assert state(legacy) == "foreign"


# ------------------------------------------------------------------ sweeps

def test_a_sweep_never_trains_into_a_folder_holding_files_it_did_not_write(synthetic_dir,  # noqa: F811
                                                                             tmp_path):
    run_dir = tmp_path / "s" / "lr-0.05"
    run_dir.mkdir(parents=True)
    (run_dir / "overrides.txt").write_text("".join(f"{o}\n" for o in ["train.lr=0.05",
                                                                       *FIXED[1::2]]))
    (run_dir / "notes.txt").write_text("mine\n")
    result = subprocess.run([str(SWEEP), str(QUICK), "train.lr=0.05", *FIXED, "-o",
                             str(tmp_path / "s")], env=sweep_env(synthetic_dir), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^FAILED  #0 lr-0\.05 \(exit 2\): error: \S+ holds files cnntrain did "
                     r"not write \(notes\.txt\)", result.stdout, re.M), result.stdout
    assert (run_dir / "notes.txt").read_text() == "mine\n"
    assert not (run_dir / MARKER).exists() and not (run_dir / "config.ini").exists()
