"""The command line, end to end through click's CliRunner, on synthetic MNIST-shaped data."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnntrain import __version__
from cnntrain.runs.checkpoint import FORMAT_VERSION
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support.clitools import (
    SMALL_LAYERS,
    assert_one_line_error,
    invoke,
    small_config,
    small_run_env,
)

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) train_loss \d+\.\d{4} train_acc \d+\.\d\d% "
                        r"val_acc \d+\.\d\d% test_acc \d+\.\d\d% lr \S+ \d+\.\ds$", re.M)

@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    return small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir)


def test_fit_writes_a_complete_run_folder(env):
    result = invoke("fit", "--config", env["config"])
    assert result.exit_code == 0, result.output
    epoch_lines = EPOCH_LINE.findall(result.stdout)
    assert epoch_lines == [("1", "2"), ("2", "2")]
    run = env["run"]
    for name in ("config.ini", "metrics.jsonl", "train.log", "summary.json",
                 "checkpoints/last.npz", "checkpoints/best.npz"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {"epoch", "step", "lr", "train_loss", "train_acc", "val_loss",
                               "val_acc",
                               "test_loss", "test_acc", "seconds", "images_per_s"}
    assert metrics[1]["step"] == 2 * 16 and 0 <= metrics[1]["test_acc"] <= 1
    assert len(EPOCH_LINE.findall((run / "train.log").read_text())) == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"] == metrics[-1] and summary["epochs"] == 2
    assert summary["best"]["val_acc"] == max(m["val_acc"] for m in metrics)
    assert "[train]" in (run / "config.ini").read_text()
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["format_version"] == FORMAT_VERSION
    assert set(ckpt.optimizer) == {f"{name}.v" for name in ckpt.params}


def test_quiet_prints_only_the_epoch_lines(env):
    result = invoke("fit", "--config", env["config"], "--quiet")
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines() == [
        m.group(0) for m in EPOCH_LINE.finditer(result.stdout)]


def test_set_overrides_reach_the_run_and_its_config(env):
    result = invoke("fit", "--config", env["config"], "--set", "train.epochs=1",
                    "--set", "train.lr=0.02", "--out", env["tmp"] / "other")
    assert result.exit_code == 0, result.output
    resolved = (env["tmp"] / "other" / "config.ini").read_text()
    assert re.search(r"^epochs = 1$", resolved, re.M) and re.search(r"^lr = 0\.02$", resolved, re.M)
    assert not env["run"].exists()


@pytest.mark.parametrize("clean_epochs, distorted_epochs", [(0, 3), (1, 2), (5, 0)])
def test_clean_epochs_leave_the_last_epochs_undistorted(env, monkeypatch, clean_epochs,
                                                        distorted_epochs):
    from cnntrain.data.augment import Augmenter
    distorted = []
    real_call = Augmenter.__call__
    monkeypatch.setattr(Augmenter, "__call__",
                        lambda self, images, rng: distorted.append(1) or real_call(self, images,
                                                                                   rng))
    result = invoke("fit", "--config", env["config"], "--set", "train.epochs=3",
                    "--set", "augment.translate=2", "--set", f"augment.clean_epochs={clean_epochs}")
    assert result.exit_code == 0, result.output
    assert len(distorted) == distorted_epochs * 16  # 500 images: 16 steps of 32 per epoch
    assert re.search(rf"^clean_epochs = {clean_epochs}$",
                     (env["run"] / "config.ini").read_text(), re.M)


def test_label_smoothing_reaches_the_training_loss_and_not_the_scores(env, monkeypatch):
    from cnntrain.nn import functional
    smoothings = []
    real_delta = functional.softmax_cross_entropy_backward
    monkeypatch.setattr(functional, "softmax_cross_entropy_backward",
                        lambda probs, labels, smoothing=0.0:
                        smoothings.append(smoothing) or real_delta(probs, labels, smoothing))
    runs = {s: env["tmp"] / f"smoothing-{s}" for s in ("0", "0.2")}
    for s, run in runs.items():
        result = invoke("fit", "--config", env["config"], "-q", "--out", run,
                        "--set", f"train.label_smoothing={s}")
        assert result.exit_code == 0, result.output
    assert smoothings == [0.0] * 32 + [0.2] * 32  # 2 epochs of 16 steps each
    assert re.search(r"^label_smoothing = 0\.2$", (runs["0.2"] / "config.ini").read_text(), re.M)
    plain, smoothed = (load_checkpoint(run / "checkpoints" / "last.npz") for run in runs.values())
    assert any(not np.array_equal(plain.params[k], smoothed.params[k]) for k in plain.params)
    # The logged test loss is plain cross-entropy, as `cnntrain eval` scores it.
    report = json.loads(invoke("eval", runs["0.2"] / "checkpoints" / "last.npz", "--json").stdout)
    summary = json.loads((runs["0.2"] / "summary.json").read_text())
    assert report["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-6)
    # A resume may change it, as it may change the learning rate.
    resumed = invoke("fit", "--resume", runs["0.2"] / "checkpoints" / "last.npz", "-q",
                     "--set", "train.epochs=3", "--set", "train.label_smoothing=0.1")
    assert resumed.exit_code == 0, resumed.output
    assert smoothings[64:] == [0.1] * 16


def test_eval_json_matches_the_training_metrics(env):
    assert invoke("fit", "--config", env["config"], "-q").exit_code == 0
    best = env["run"] / "checkpoints" / "best.npz"
    result = invoke("eval", best, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    summary = json.loads((env["run"] / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["best"]["test_acc"], abs=1e-12)
    assert report["loss"] == pytest.approx(summary["best"]["test_loss"], rel=1e-6)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == report["n"] == 200
    assert report["per_class"] == pytest.approx((confusion.diagonal() / confusion.sum(1)).tolist())
    val = json.loads(invoke("eval", best, "--json", "--split", "val", "--batch-size", "7").stdout)
    assert val["n"] == 100 and val["accuracy"] == pytest.approx(summary["best"]["val_acc"],
                                                                abs=1e-12)


def test_eval_prints_tables(env):
    invoke("fit", "--config", env["config"], "-q")
    result = invoke("eval", env["run"] / "checkpoints" / "last.npz")
    assert result.exit_code == 0
    assert re.search(r"accuracy \d+\.\d\d%", result.stdout)
    assert "per-class accuracy: 0: " in result.stdout and "confusion matrix" in result.stdout
    rows = result.stdout.strip().splitlines()[-10:]
    assert sum(int(v) for row in rows for v in row.split()[1:]) == 200


def test_a_run_is_never_overwritten_by_accident(env):
    assert invoke("fit", "--config", env["config"], "-q").exit_code == 0
    before = (env["run"] / "checkpoints" / "last.npz").read_bytes()
    result = invoke("fit", "--config", env["config"], "-q")
    assert_one_line_error(result, 2, "already holds a run", "--resume", "--overwrite")
    assert (env["run"] / "checkpoints" / "last.npz").read_bytes() == before
    result = invoke("fit", "--config", env["config"], "-q", "--overwrite", "--set",
                    "train.epochs=1")
    assert result.exit_code == 0
    assert len((env["run"] / "metrics.jsonl").read_text().splitlines()) == 1


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(env):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=3",
                  "--set", "train.lr_schedule=constant").exit_code == 0
    last = env["run"] / "checkpoints" / "last.npz"
    # Continue the finished run for more epochs at an absurd rate: it diverges in epoch 4.
    result = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=5", "--set",
                    "train.lr=1e9")
    assert_one_line_error(result, 1, "diverged at epoch 4", "lower the learning rate",
                          f"last good checkpoint is {last}")
    assert load_checkpoint(last).meta["epoch"] == 3
    assert "diverged" in (env["run"] / "train.log").read_text()


def test_divergence_at_the_start(env):
    result = invoke("fit", "--config", env["config"], "-q", "--set", "train.lr=1e9")
    assert_one_line_error(result, 1, "diverged at epoch 1")
    assert not (env["run"] / "checkpoints" / "last.npz").exists()


@pytest.mark.parametrize("args,fragments", [
    (["--config", "missing.ini"], ["missing.ini", "no such config file"]),
    (["--set", "train.lr=fast"], ["--set train.lr=fast", "expected a number > 0"]),
    (["--set", "train.epoch=3"], ["unknown key 'epoch'", "did you mean 'epochs'"]),
    (["--set", "model.layers=conv 6 5 / relu / dense 10"], ["dense needs a flat input"]),
    ([], ["give --config FILE"]),
])
def test_config_errors_are_one_line_with_exit_code_2(env, args, fragments):
    if args and args[0] != "--config":
        args = ["--config", env["config"], *args]
    assert_one_line_error(invoke("fit", *args), 2, *fragments)
    assert not env["run"].exists()


def test_unknown_key_in_the_file(env):
    Path(env["config"]).write_text(small_config(train={"sed": 3}, run={"dir": env["run"]}))
    assert_one_line_error(invoke("fit", "--config", env["config"]), 2, "small.ini", "[train]",
                          "unknown key 'sed'", "did you mean 'seed'")


def test_resume_with_a_different_network_is_refused(env):
    invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1")
    other = env["tmp"] / "other.ini"
    other.write_text(small_config(layers=[line.replace("dense 32",
                                                       "dense 64") for line in SMALL_LAYERS],
                                  run={"dir": env["run"]}))
    result = invoke("fit", "--config", other, "--resume", env["run"] / "checkpoints" / "last.npz")
    assert_one_line_error(result, 2, "different network")


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.fixture
def bad_checkpoints(env):
    invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1")
    good = env["run"] / "checkpoints" / "last.npz"
    tmp = env["tmp"]
    truncated = tmp / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    ckpt = load_checkpoint(good)
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION + 1)
    newer = write_npz(tmp / "newer.npz", **{f"param/{k}": v for k, v in ckpt.params.items()},
                      **{"meta.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    objects = tmp / "objects.npz"
    np.savez(objects, **{"meta.json": np.array([{"evil": 1}], dtype=object)})
    return {
        "missing": (tmp / "nope.npz", "no such checkpoint file"),
        "truncated": (truncated, "truncated or not a .npz checkpoint"),
        "foreign": (write_npz(tmp / "foreign.npz", weights=np.ones(3)), "no meta.json entry"),
        "text": ((tmp / "notes.npz"), "truncated or not a .npz checkpoint"),
        "newer": (newer, f"format {FORMAT_VERSION + 1}, newer than this cnntrain reads"),
        "objects": (objects, "holds object arrays"),
        "folder": (tmp, "is a folder"),
    }


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "text", "newer", "objects",
                                  "folder"])
def test_bad_checkpoints_get_one_line_and_exit_1(bad_checkpoints, env, kind):
    (env["tmp"] / "notes.npz").write_text("not a checkpoint")
    path, fragment = bad_checkpoints[kind]
    assert_one_line_error(invoke("eval", path), 1, str(path), fragment)
    assert_one_line_error(invoke("fit", "--resume", path), 1, fragment)


def test_info_version_and_help():
    result = invoke("info", "--config", REPO / "configs" / "lenet5.ini")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    total = next(line for line in lines if line.startswith("total")).split()
    assert total == ["total", "61,706", "416,520"]
    assert lines[-2].startswith("runs as: conv1 > maxpool1 > relu1 >")  # the fast path's order
    assert invoke("--version").stdout.strip() == f"cnntrain, version {__version__}"
    for command in ("fit", "eval", "download", "info"):
        text = invoke(command, "--help").stdout
        assert "Example" in text and "cnntrain " + command in text


def test_help_is_fast_and_imports_no_numpy():
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnntrain", "--help"],
                         capture_output=True, text=True, check=True)
    assert time.perf_counter() - started < 3  # generous: the real budget is measured in bench
    assert "fit" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "numpy" not in imported and "requests" not in imported and "tqdm" not in imported


def run_cnntrain_process(env, *args, interrupt_after_line=None):
    """Run cnntrain in a child process (synthetic checksums); optionally press Ctrl-C once
    train.log shows `interrupt_after_line`."""
    cmd = [sys.executable, str(REPO / "tests" / "support" / "synthetic_cnntrain.py"), *map(str,
                                                                                           args)]
    child_env = {**__import__("os").environ, "CNNTRAIN_DATA_DIR": str(env["data_dir"]),
                 "CNNTRAIN_TEST_MNIST_TABLE": json.dumps(env["table"]),
                 "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env, cwd=env["tmp"])
    if interrupt_after_line is not None:
        log = Path(args[args.index("--out") + 1]) / "train.log"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and interrupt_after_line in log.read_text():
                time.sleep(0.02)  # the epoch's log line is its last write: aim into the next one
                proc.send_signal(__import__("signal").SIGINT)
                break
            time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_ctrl_c_saves_the_exact_position_and_resume_matches_an_uninterrupted_run(env):
    long_run = ["--config", env["config"], "-q", "--set", "train.epochs=4", "--set",
                "train.batch_size=8"]
    code, _, _ = run_cnntrain_process(env, "fit", *long_run, "--out", env["tmp"] / "straight")
    assert code == 0

    stopped = env["tmp"] / "stopped"
    code, out, err = run_cnntrain_process(env, "fit", *long_run, "--out", stopped,
                                          interrupt_after_line="epoch 1/4")
    assert code == 130, err
    last = stopped / "checkpoints" / "last.npz"
    assert f"continue with: cnntrain fit --resume {last}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    position = load_checkpoint(last).meta
    # 63 steps per epoch at batch 8; usually mid-epoch 2, at its start on a loaded machine
    assert position["epoch"] >= 1 and position["step"] >= 63

    code, out, err = run_cnntrain_process(env, "fit", "--resume", last, "-q")
    assert code == 0, err
    straight = load_checkpoint(env["tmp"] / "straight" / "checkpoints" / "last.npz")
    resumed = load_checkpoint(last)
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    metrics = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_download_command_fetches_and_verifies(env, mnist_server, tmp_path):
    target = tmp_path / "fresh"
    result = invoke("download", "--data-dir", target, "--mirror", mnist_server.mirror("m"), "-q")
    assert result.exit_code == 0, result.output
    assert f"MNIST verified in {target}" in result.stdout
    shown = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    assert shown == sorted(env["table"])


def test_download_failure_is_reported_with_exit_1(env, mnist_server, tmp_path):
    mnist_server.add_fault("/dead/*", "status", code=404)
    result = invoke("download", "--data-dir", tmp_path / "fresh", "--mirror",
                    mnist_server.mirror("dead"), "-q")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "error: " in result.stderr
    assert not list((tmp_path / "fresh").glob("*.part"))


def test_a_failed_download_leaves_nothing_that_blocks_the_next_attempt(env, mnist_server, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("CNNTRAIN_DATA_DIR", str(tmp_path / "empty-cache"))
    mnist_server.add_fault("/dead/*", "status", code=404)
    dead = mnist_server.mirror("dead")
    first = invoke("fit", "--config", env["config"], "-q", "--mirror", dead)
    assert first.exit_code == 1 and "error: " in first.stderr
    assert not env["run"].exists()
    again = invoke("fit", "--config", env["config"], "-q", "--mirror", mnist_server.mirror("alive"))
    assert again.exit_code == 0, again.output


def test_a_fit_that_died_before_its_first_epoch_does_not_block_a_new_one(env):
    env["run"].mkdir(parents=True)
    (env["run"] / ".cnntrain-run").write_text('{"run_id": "died-early"}\n')  # written first
    (env["run"] / "config.ini").write_text("[train]\n")
    (env["run"] / "train.log").write_text("fit small.ini: ...\n")
    result = invoke("fit", "--config", env["config"], "-q")
    assert result.exit_code == 0, result.output
    assert (env["run"] / "train.log").read_text().startswith("fit small.ini: ...\n")  # appended to


def test_resuming_a_finished_run_for_more_epochs_drops_its_summary_until_done(env):
    assert invoke("fit", "--config", env["config"], "-q", "--set", "train.epochs=1").exit_code == 0
    summary = env["run"] / "summary.json"
    assert json.loads(summary.read_text())["epochs"] == 1
    last = env["run"] / "checkpoints" / "last.npz"
    stopped = invoke("fit", "--resume", last, "-q", "--set", "train.epochs=3", "--set",
                     "train.lr=1e9")
    assert stopped.exit_code == 1 and not summary.exists()  # diverged: the run is not done
    assert invoke("fit", "--resume", last, "-q", "--set", "train.epochs=2").exit_code == 0
    assert json.loads(summary.read_text())["epochs"] == 2
