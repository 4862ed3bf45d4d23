"""Faults a run folder must survive (issue 10): another run in the folder, two processes,
closed or full stdout, the user's own config, a killed write, a full disk, non-finite
models, hand-edited checkpoints, resume overrides, and the messages that go with them."""

import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cnntrain import fileio
from cnntrain.runs.checkpoint import Checkpoint, save_checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support import proctools
from tests.support.clitools import assert_one_line_error, invoke, small_config, small_run_env


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    return small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir)


def strict_json_lines(path):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines()]


def epochs_of(run):
    return [m["epoch"] for m in strict_json_lines(run / "metrics.jsonl")]


def snapshot_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".lock"}


def temporaries(folder):
    return [p.name for p in Path(folder).rglob("*.tmp")]


def fit(env, *args):
    return invoke("fit", "--config", env["config"], "-q", *args)


# ------------------------------------------------------------------ 1. resuming into another run

def test_resuming_into_a_folder_holding_another_run_is_refused(env):
    a, b = env["tmp"] / "A", env["tmp"] / "B"
    assert fit(env, "--out", a, "--set", "train.epochs=1").exit_code == 0
    assert fit(env, "--out", b, "--set", "train.seed=7").exit_code == 0
    before = snapshot_files(b)
    result = invoke("fit", "--resume", a / "checkpoints" / "last.npz", "--out", b, "-q",
                    "--set", "train.epochs=2")
    assert_one_line_error(result, 2,
                          f"{b} holds another run (from {env['config']}, after epoch 2 of 2)",
                          "--overwrite", f"({a}, the default without --out)")
    assert snapshot_files(b) == before

    # Its own folder, or a fresh one, is fine; and --overwrite replaces B with A's run.
    assert invoke("fit", "--resume", a / "checkpoints" / "last.npz", "--out", b, "-q",
                  "--set", "train.epochs=2", "--overwrite").exit_code == 0
    assert epochs_of(b) == [1, 2]
    assert load_checkpoint(b / "checkpoints" / "last.npz").meta["run_id"] == \
        load_checkpoint(a / "checkpoints" / "last.npz").meta["run_id"]
    assert "seed = 7" not in (b / "config.ini").read_text()


def test_a_copied_checkpoint_still_belongs_to_its_run(env):
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    copy = env["tmp"] / "copy.npz"
    copy.write_bytes((env["run"] / "checkpoints" / "last.npz").read_bytes())
    result = invoke("fit", "--resume", copy, "--out", env["run"], "-q", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(env["run"]) == [1, 2]


# ------------------------------------------------------------------ 2. two processes, one folder

def test_a_second_process_is_refused_at_once_and_the_lock_dies_with_its_holder(env):
    run = env["run"]
    holder = proctools.start(env["table"], env["data_dir"], "fit", "--config", env["config"], "-q",
                             "--set", "train.epochs=200", "--set", "train.batch_size=8",
                             cwd=env["tmp"])
    try:
        assert proctools.wait_for_text(run / "train.log", "epoch 1/200", holder)
        who = f"PID {holder.pid} on {socket.gethostname()}"
        started = time.perf_counter()
        result = fit(env)
        assert_one_line_error(result, 2, f"{run} is in use by another cnntrain fit ({who})")
        result = invoke("fit", "--resume", run / "checkpoints" / "last.npz", "-q")
        assert_one_line_error(result, 2, who)
        result = fit(env, "--overwrite")
        assert_one_line_error(result, 2, who)
        assert time.perf_counter() - started < 10  # refused, not queued behind the holder
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.communicate()
    result = invoke("fit", "--resume", run / "checkpoints" / "last.npz", "-q",
                    "--set", "train.epochs=2", "--set", "train.lr_schedule=constant")
    assert result.exit_code == 0, result.output
    epochs = epochs_of(run)
    assert epochs == list(range(1, len(epochs) + 1)) and epochs[-1] >= 2
    assert not temporaries(run)


def test_the_lock_is_per_folder_and_released_on_exit(tmp_path):
    from cnntrain.runs.runfolder import FolderBusy, RunFolder
    with RunFolder(tmp_path / "r") as first:
        first.lock()
        with pytest.raises(FolderBusy, match=f"PID {os.getpid()} on "):
            RunFolder(tmp_path / "r").lock()
        RunFolder(tmp_path / "other").lock()
    with RunFolder(tmp_path / "r") as again:
        again.lock()


# ------------------------------------------------------------------ 3. a closed or full stdout

def run_with_stdout(env, stdout, *args):
    proc = proctools.start(env["table"], env["data_dir"], *args, stdout=stdout, cwd=env["tmp"])
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def closed_pipe():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as after `| head -1`
    return write


@pytest.mark.parametrize("target", ["closed pipe", "/dev/full"])
def test_training_outlives_a_dead_stdout(env, target):
    stdout = closed_pipe() if target == "closed pipe" else open("/dev/full", "w")
    try:
        code, err = run_with_stdout(env, stdout, "fit", "--config", env["config"])
    finally:
        os.close(stdout) if isinstance(stdout, int) else stdout.close()
    assert code == 0, err
    assert "error" not in err and "Traceback" not in err
    assert load_checkpoint(env["run"] / "checkpoints" / "last.npz").meta["epoch"] == 2
    assert epochs_of(env["run"]) == [1, 2]
    assert (env["run"] / "summary.json").exists()


def test_eval_into_a_closed_pipe_is_silent(env):
    assert fit(env).exit_code == 0
    stdout = closed_pipe()
    try:
        code, err = run_with_stdout(env, stdout, "eval", env["run"] / "checkpoints" / "best.npz")
    finally:
        os.close(stdout)
    assert (code, err) == (0, "")


def test_eval_piped_into_head_prints_its_first_line(env):
    assert fit(env).exit_code == 0
    command = (f"'{proctools.sys.executable}' -c \"$LAUNCHER\" '{json.dumps(env['table'])}' "
               f"'{{}}' eval {env['run']}/checkpoints/best.npz | head -1")
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=env["tmp"],
                          env={**proctools.child_env(env["data_dir"]),
                               "LAUNCHER": proctools.LAUNCHER})
    assert proc.stdout.startswith(f"{env['run']}/checkpoints/best.npz (after epoch ")
    assert len(proc.stdout.splitlines()) == 1 and proc.stderr == ""


# ------------------------------------------------------------------ 4. the user's config

HAND_WRITTEN = "# my experiment: a smaller rate\n"


def test_the_config_the_user_gave_is_never_overwritten(env):
    run = env["run"]
    run.mkdir(parents=True)
    mine = run / "config.ini"
    mine.write_text(HAND_WRITTEN + Path(env["config"]).read_text())
    result = invoke("fit", "--config", mine, "--out", run, "-q")
    assert_one_line_error(result, 2, f"{mine} is the config you gave", "cp ")
    assert mine.read_text().startswith(HAND_WRITTEN)
    assert not (run / "checkpoints" / "last.npz").exists()


def test_the_run_folders_own_config_can_be_given_back(env):
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    own = env["run"] / "config.ini"
    text = own.read_text()
    result = invoke("fit", "--config", own, "--resume", env["run"] / "checkpoints" / "last.npz",
                    "-q")
    assert result.exit_code == 0, result.output
    assert own.read_text() == text


# ------------------------------------------------------------------ 6. killed writes, write order

def test_a_kill_during_the_checkpoint_write_logs_no_epoch_and_blocks_nothing(env):
    run = env["run"]
    code, _, _ = proctools.run(env["table"], env["data_dir"], "fit", "--config", env["config"],
                               "-q", faults={"signal_in_save": [signal.SIGKILL]}, cwd=env["tmp"])
    assert code == -signal.SIGKILL
    assert not (run / "checkpoints" / "last.npz").exists()
    # no epoch without its checkpoint
    assert not (run / "metrics.jsonl").exists() or epochs_of(run) == []
    assert temporaries(run)  # the killed write's temporary file, for the next start to clean
    result = fit(env)  # the natural command: no --overwrite needed
    assert result.exit_code == 0, result.output
    assert epochs_of(run) == [1, 2] and not temporaries(run)


def test_leftovers_of_a_crashed_older_run_do_not_block_a_new_start(env):
    # What a start killed before its first checkpoint leaves: its marker (written first), a
    # torn line and a killed write's temporary file, and no results (a best.npz or a whole
    # epoch line without last.npz would be a run's results: tests/runs/test_folder_ownership.py).
    run = env["run"]
    (run / "checkpoints").mkdir(parents=True)
    (run / ".cnntrain-run").write_text('{"run_id": "crashed"}\n')
    (run / "metrics.jsonl").write_text('{"epoch":')
    (run / "checkpoints" / ".last.npz.x1y2.tmp").write_bytes(b"PK half")
    result = fit(env)
    assert result.exit_code == 0, result.output
    assert epochs_of(run) == [1, 2] and not temporaries(run)
    assert load_checkpoint(run / "checkpoints" / "best.npz").meta["epoch"] in (1, 2)


def test_the_epoch_results_are_written_checkpoint_first(env, monkeypatch):
    from cnntrain.runs import runfolder
    order = []
    real_save, real_append = runfolder.save_checkpoint, runfolder.append_line
    monkeypatch.setattr(runfolder, "save_checkpoint",
                        lambda path, c: (order.append(Path(path).name), real_save(path, c)))
    monkeypatch.setattr(runfolder, "append_line",
                        lambda path, line: (order.append(Path(path).name), real_append(path, line)))
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    first_epoch = order[order.index("last.npz"):]
    assert first_epoch[:4] == ["last.npz", "best.npz", "metrics.jsonl", "train.log"]


# ------------------------------------------------------------------ 7 and 15. a full disk

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (this needs root, as CI runs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    "test_a_failed_append_is_cut_back_injected covers the same code")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder, leave=0):
    """Fill the file system of `folder` up to `leave` bytes; returns the filler."""
    filler = Path(folder) / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_full_disk_never_leaves_half_a_line(tiny_disk):
    log = tiny_disk / "metrics.jsonl"
    log.write_text("x" * (4096 - 11) + "\n")  # one page, 10 bytes free in it
    fill(tiny_disk)
    with pytest.raises(OSError) as failed:
        fileio.append_line(log, json.dumps({"epoch": 2, "padding": "y" * 300}))
    assert failed.value.errno == errno.ENOSPC
    assert log.read_text() == "x" * (4096 - 11) + "\n"


def test_a_failed_append_is_cut_back_injected(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "write", half_then_full)
    with pytest.raises(OSError):
        fileio.append_line(log, '{"epoch": 2}')
    monkeypatch.undo()
    assert log.read_text() == '{"epoch": 1}\n'


def test_a_torn_last_line_is_repaired_on_resume(env):
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    with open(env["run"] / "metrics.jsonl", "a") as f:
        f.write('{"epoch":')
    with open(env["run"] / "train.log", "a") as f:
        f.write("epoch 2/2 train_lo")
    result = invoke("fit", "--resume", env["run"] / "checkpoints" / "last.npz", "-q",
                    "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(env["run"]) == [1, 2]
    assert "train_lo\n" not in (env["run"] / "train.log").read_text()


def test_a_full_disk_names_the_file_and_what_is_safe(env, tiny_disk):
    run = tiny_disk / "run"
    assert fit(env, "--out", run, "--set", "train.epochs=1").exit_code == 0
    last = run / "checkpoints" / "last.npz"
    filler = fill(tiny_disk, leave=8192)
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=2")
    assert_one_line_error(result, 1, f"cannot write {last}: No space left on device",
                          f"{last} (after epoch 1 of 1) is intact", "free some space",
                          f"continue with: cnntrain fit --resume {last}")
    assert load_checkpoint(last).meta["epoch"] == 1
    assert epochs_of(run) == [1] and not temporaries(run)
    filler.unlink()
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert epochs_of(run) == [1, 2]


def test_a_read_only_folder_is_named_with_the_fix(env, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        for out, named in ((mount, mount / ".lock"), (mount / "run", mount / "run")):
            result = fit(env, "--out", out)
            assert_one_line_error(result, 1, f"cannot write {named}: Read-only file system",
                                  "choose another with --out DIR")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------ 9. non-finite models

def test_a_model_that_turns_non_finite_is_never_saved_or_logged(env):
    # One step per epoch at an absurd rate: the loss of that step is finite, its update is not.
    result = fit(env, "--set", "train.lr=1e300", "--set", "data.train_size=32",
                 "--set", "train.epochs=1")
    assert_one_line_error(result, 1, "diverged in epoch 1", "no checkpoint was saved")
    assert not (env["run"] / "checkpoints" / "last.npz").exists()
    assert not (env["run"] / "checkpoints" / "best.npz").exists()
    assert not (env["run"] / "metrics.jsonl").exists()


def test_after_divergence_last_and_best_stay_finite_and_metrics_strict(env):
    assert fit(env, "--set", "train.epochs=2", "--set", "train.lr_schedule=constant").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=4",
                    "--set", "train.lr=1e300")
    assert_one_line_error(result, 1, f"the last good checkpoint is {last} (after epoch 2 of 2)")
    for name in ("last.npz", "best.npz"):
        ckpt = load_checkpoint(env["run"] / "checkpoints" / name)  # refuses non-finite weights
        assert all(np.isfinite(v).all() for v in ckpt.params.values())
    assert epochs_of(env["run"]) == [1, 2]


def test_metrics_lines_are_strict_json():
    from cnntrain.runs.metrics import metrics_json
    line = metrics_json({"epoch": 1, "step": 3, "lr": 0.1, "train_loss": float("nan"),
                         "train_acc": 0.5, "val_loss": float("inf"), "val_acc": None,
                         "test_loss": 1.0, "test_acc": 0.25, "seconds": 1.0, "images_per_s": 2.0})
    row = json.loads(line, parse_constant=lambda c: pytest.fail(c))
    assert row["train_loss"] is None and row["val_loss"] is None and row["test_acc"] == 0.25


def test_non_finite_models_are_never_written_nor_evaluated(env):
    from cnntrain.runs.checkpoint import NonFiniteModelError
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    good = load_checkpoint(env["run"] / "checkpoints" / "last.npz")
    params = dict(good.params)
    params["dense2.W"] = params["dense2.W"].copy()
    params["dense2.W"][0, 0] = np.nan
    bad = Checkpoint(params=params, optimizer=good.optimizer, meta=good.meta)
    with pytest.raises(NonFiniteModelError):
        save_checkpoint(env["tmp"] / "nan.npz", bad)
    assert not (env["tmp"] / "nan.npz").exists()
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays["meta.json"] = np.frombuffer(json.dumps(good.meta).encode(), np.uint8)
    with open(env["tmp"] / "nan.npz", "wb") as f:  # as a hand-made file would be
        np.savez(f, **arrays)
    result = invoke("eval", env["tmp"] / "nan.npz")
    assert_one_line_error(result, 1, "param/dense2.W holds NaN or infinite values")
    assert "accuracy" not in result.stdout


# ------------------------------------------------------------------ 11, 12, 14. checkpoints, resume

def write_checkpoint(path, ckpt, meta=None, order="keep"):
    arrays = {f"param/{k}": v for k, v in ckpt.params.items()}
    arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer.items()})
    order = ckpt.epoch_order if isinstance(order, str) else order
    if order is not None:
        arrays["epoch_order"] = order
    arrays["meta.json"] = np.frombuffer(json.dumps(meta or ckpt.meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.fixture
def mid_epoch(env):
    """A checkpoint 5 steps into epoch 2, as a stop signal there would leave."""
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    ckpt = load_checkpoint(env["run"] / "checkpoints" / "last.npz")
    meta = dict(ckpt.meta, step=ckpt.meta["step"] + 5, step_in_epoch=5, seen=160, correct=80,
                loss_sum=300.0)
    order = np.random.default_rng(0).permutation(500)
    last = write_checkpoint(env["run"] / "checkpoints" / "last.npz", ckpt, meta, order)
    return ckpt, meta, order, last


EDITS = {
    "config not text": (lambda m, o: (dict(m, config=3), o), "'config' is 3"),
    "epoch a string": (lambda m, o: (dict(m, epoch="1"), o), "'epoch' is \"1\""),
    "negative epoch": (lambda m, o: (dict(m, epoch=-1), o), "'epoch' is -1"),
    "fractional epoch": (lambda m, o: (dict(m, epoch=1.5), o), "'epoch' is 1.5"),
    "history without keys": (lambda m, o: (dict(m, history=[{"epoch": 1}]), o), "lacks"),
    "history too short": (lambda m, o: (dict(m, history=[]), o), "one entry per completed epoch"),
    "order out of range": (lambda m, o: (m, np.where(o == 0, 500, o)), "not a permutation"),
    "order negative": (lambda m, o: (m, np.where(o == 0, -1, o)), "not a permutation"),
    "order repeated": (lambda m, o: (m, np.where(o == 0, 1, o)), "not a permutation"),
    "order float": (lambda m, o: (m, o.astype(np.float64)), "member epoch_order holds float64"),
    "mid-epoch without order": (lambda m, o: (m, None), "has no epoch_order"),
    "negative step": (lambda m, o: (dict(m, step=-3), o), "'step' is -3"),
    "loss not a number": (lambda m, o: (dict(m, loss_sum="x"), o), "'loss_sum' is \"x\""),
    "layer generators not states": (lambda m, o: (dict(m, layer_rngs={"dropout1": 7}), o),
                                    "'layer_rngs' is {\"dropout1\": 7}"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_hand_edited_checkpoints_are_refused_in_one_line(env, mid_epoch, edit):
    ckpt, meta, order, _ = mid_epoch
    change, fragment = EDITS[edit]
    meta, order = change(meta, order)
    path = write_checkpoint(env["tmp"] / "edited.npz", ckpt, meta, order)
    for command in (["eval", path], ["fit", "--resume", path, "-q"]):
        assert_one_line_error(invoke(*command), 1, str(path), fragment, "edited or damaged")


def test_a_mid_epoch_checkpoint_refuses_overrides_that_move_its_position(env, mid_epoch):
    *_, last = mid_epoch
    for override in ("data.train_size=100", "train.batch_size=16", "train.seed=5",
                     "data.std=0.5"):
        result = invoke("fit", "--resume", last, "-q", "--set", override)
        assert_one_line_error(result, 2, override.split("=")[0], "a resume accepts changes to",
                              "train.epochs", "train.lr")
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=0")
    assert result.exit_code == 2
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=2",
                    "--set", "train.lr=0.01")
    assert result.exit_code == 0, result.output
    assert epochs_of(env["run"]) == [1, 2]


def test_eval_shows_where_a_mid_epoch_checkpoint_stands(env, mid_epoch):
    *_, last = mid_epoch
    result = invoke("eval", last)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{last} (epoch 2 of 1, mid-epoch at step 21)")
    assert "after epoch 0" not in result.stdout


def test_resume_with_a_config_file_applies_it_by_the_same_rules(env):
    assert fit(env, "--set", "train.epochs=1").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    longer = env["tmp"] / "longer.ini"
    longer.write_text(small_config(train={"epochs": 3}))
    result = invoke("fit", "--resume", last, "--config", longer, "-q")
    assert result.exit_code == 0, result.output
    assert epochs_of(env["run"]) == [1, 2, 3]  # its epochs were applied, not ignored

    other_data = env["tmp"] / "other-data.ini"
    other_data.write_text(small_config(train={"epochs": 4},
                                       data={"val_size": 100, "train_size": 300}))
    result = invoke("fit", "--resume", last, "--config", other_data, "-q")
    assert_one_line_error(result, 2, str(other_data), "data.train_size 0 -> 300",
                          "a resume accepts changes to")


# ------------------------------------------------------------------ 17. divergence advice

@pytest.mark.parametrize("overrides,blamed,not_blamed", [
    (["data.std=1e-6"], "data.std = 1e-06", "lower the learning rate"),
    (["train.weight_decay=1000"], "train.weight_decay = 1000", "lower the learning rate"),
    (["train.lr=1e300"], "lower the learning rate (e.g. --set train.lr=0.05)", "weight_decay"),
])
def test_divergence_advice_blames_the_real_cause(env, overrides, blamed, not_blamed):
    args = [a for o in overrides for a in ("--set", o)]
    result = fit(env, *args)
    assert_one_line_error(result, 1, "diverged", blamed)
    assert not_blamed not in result.stderr
    suggested = [word for word in result.stderr.split() if word.startswith("train.lr=")]
    for value in suggested:  # a suggestion the config accepts
        result = fit(env, "--set", value.rstrip(");"), "--set", "train.epochs=1",
                     "--out", env["tmp"] / "try")
        assert result.exit_code in (0, 1), result.output


def test_numpy_warnings_never_reach_the_user(env):
    code, out, err = proctools.run(env["table"], env["data_dir"], "fit", "--config", env["config"],
                                   "-q", "--set", "data.std=1e-45", cwd=env["tmp"])
    assert code == 1 and "Warning" not in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ 19. wording

def test_an_empty_out_is_an_error(env):
    assert_one_line_error(fit(env, "--out", ""), 2, "--out ''")
    assert not env["run"].exists()


def test_resuming_an_older_checkpoint_never_replaces_a_later_one_by_accident(env):
    assert fit(env, "--set", "train.epochs=3", "--set", "train.lr_schedule=constant").exit_code == 0
    last, best = env["run"] / "checkpoints" / "last.npz", env["run"] / "checkpoints" / "best.npz"
    older = env["tmp"] / "epoch1.npz"
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1",
                  "--out", env["tmp"] / "one").exit_code == 0
    older.write_bytes((env["tmp"] / "one" / "checkpoints" / "last.npz").read_bytes())
    # epoch1.npz is of another run (its own run id); an older position of *this* run:
    ckpt = load_checkpoint(last)
    meta = dict(ckpt.meta, epoch=1, step=16, history=ckpt.meta["history"][:1])
    write_checkpoint(older, ckpt, meta, None)
    before = last.read_bytes()
    result = invoke("fit", "--resume", older, "--out", env["run"], "-q")
    assert_one_line_error(result, 2, "further on (after epoch 3 of 3)", "--overwrite")
    assert last.read_bytes() == before
    result = invoke("fit", "--resume", older, "--out", env["run"], "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    assert epochs_of(env["run"]) == [1, 2, 3]
    assert load_checkpoint(best).meta["epoch"] <= 3
