"""SIGTERM and SIGHUP stop a run like Ctrl-C: exact position saved, the continue command
printed, the shell's exit code; a second signal while results are written changes nothing."""

import signal

import numpy as np
import pytest

from cnntrain.runs.checkpoint import save_checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support import proctools
from tests.support.clitools import logged_metrics, small_config


@pytest.fixture
def env(tmp_path, synthetic_mnist, synthetic_mnist_dir):
    config = tmp_path / "small.ini"
    config.write_text(small_config(train={"epochs": 3, "batch_size": 8}))
    return {"config": config, "tmp": tmp_path, "table": synthetic_mnist.table,
            "data_dir": synthetic_mnist_dir}


def cnntrain(env, *args, **kwargs):
    return proctools.run(env["table"], env["data_dir"], *args, cwd=env["tmp"], **kwargs)


def assert_same_weights(a, b):
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a.meta["epoch"] == b.meta["epoch"]
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)


def epochs_logged(run):
    return [m["epoch"] for m in logged_metrics(run)]


@pytest.fixture
def straight(env):
    run = env["tmp"] / "straight"
    code, _, err = cnntrain(env, "fit", "--config", env["config"], "-q", "--out", run)
    assert code == 0, err
    return run / "checkpoints" / "last.npz"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_saves_the_exact_position_and_resume_is_bit_identical(env, straight, signum):
    run = env["tmp"] / "stopped"
    code, out, err = cnntrain(env, "fit", "--config", env["config"], "-q", "--out", run,
                              send=signum, after=(run / "train.log", "epoch 1/3"))
    assert code == proctools.STOP_EXIT_CODES[signum], err
    last = run / "checkpoints" / "last.npz"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and not lines[0].startswith("error"), err
    assert f"continue with: cnntrain fit --resume {last}" in lines[0]
    assert signal.Signals(signum).name in lines[0] or signum == signal.SIGINT
    position = load_checkpoint(last).meta
    assert position["epoch"] >= 1 and position["step"] >= 63  # 63 steps per epoch at batch 8

    code, _, err = cnntrain(env, "fit", "--resume", last, "-q")
    assert code == 0, err
    assert_same_weights(straight, last)
    assert epochs_logged(run) == [1, 2, 3]


@pytest.mark.parametrize("step", [62, 63, 64, 189])  # an epoch is 63 steps; 189 ends the run
def test_a_stop_on_any_step_around_an_epochs_end_resumes_bit_identical(env, straight, step):
    """A stop that lands during an epoch's last step saves the position before that epoch's
    evaluation; the resume evaluates it and goes on, as a stop a step earlier or later does."""
    run = env["tmp"] / "stopped"
    code, _, err = cnntrain(env, "fit", "--config", env["config"], "-q", "--out", run,
                            faults={"signal_at_step": [step, signal.SIGTERM]})
    assert code == 143, err
    last = run / "checkpoints" / "last.npz"
    assert load_checkpoint(last).meta["step"] == step
    assert (run / "metrics.jsonl").exists() == (step > 63)
    code, _, err = cnntrain(env, "fit", "--resume", last, "-q")
    assert code == 0, err
    assert_same_weights(straight, last)
    assert logged_metrics(run) == logged_metrics(straight.parents[1])


def test_a_hand_edited_position_past_the_epochs_end_is_refused_in_one_line(env):
    run = env["tmp"] / "stopped"
    code, _, err = cnntrain(env, "fit", "--config", env["config"], "-q", "--out", run,
                            faults={"signal_at_step": [63, signal.SIGTERM]})
    assert code == 143, err
    last = run / "checkpoints" / "last.npz"
    ckpt = load_checkpoint(last)
    ckpt.meta.update(step=64, step_in_epoch=64)
    save_checkpoint(last, ckpt)
    code, _, err = cnntrain(env, "fit", "--resume", last, "-q")
    assert code == 1 and err == ("error: cannot resume from this checkpoint: it stands at step "
                                 "64 of an epoch of 63 steps\n"), err


@pytest.mark.parametrize("signals", [[signal.SIGTERM, signal.SIGTERM],
                                     [signal.SIGHUP, signal.SIGINT]])
def test_a_second_signal_during_the_save_corrupts_nothing(env, straight, signals):
    """Both signals land while the epoch-1 checkpoint is being written: the write completes,
    the run stops at that epoch boundary with the first signal's code, and resumes exactly."""
    run = env["tmp"] / "twice"
    code, out, err = cnntrain(env, "fit", "--config", env["config"], "-q", "--out", run,
                              faults={"signal_in_save": signals})
    assert code == proctools.STOP_EXIT_CODES[signals[0]], err
    last = run / "checkpoints" / "last.npz"
    assert load_checkpoint(last).meta["epoch"] == 1
    assert epochs_logged(run) == [1]
    assert not [p.name for p in run.rglob("*.tmp")]
    code, _, err = cnntrain(env, "fit", "--resume", last, "-q")
    assert code == 0, err
    assert_same_weights(straight, last)
    assert epochs_logged(run) == [1, 2, 3]
