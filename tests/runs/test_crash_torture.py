"""Crash torture: a short run killed again and again, at random moments and inside its
checkpoint writes, with SIGKILL, SIGTERM and SIGINT, and continued each time with the natural
command, ends exactly where an uninterrupted run ends."""

import json
import signal
import time

import numpy as np
import pytest

from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support import proctools
from tests.support.clitools import small_config

EPOCHS = 12  # of 63 steps (500 images, batch 8): long enough to take every signal

# (signal, where): "timed" lands at a random moment once training runs; "in save" lands
# while the process writes a checkpoint (sent by the child itself, see tests/support/proctools.py).
SIGNALS = ([(signal.SIGKILL, "timed")] * 4 + [(signal.SIGTERM, "timed")] * 3
           + [(signal.SIGINT, "timed")] * 3 + [(signal.SIGKILL, "in save")] * 2
           + [(signal.SIGTERM, "in save"), (signal.SIGINT, "in save")])
EXPECTED_EXIT = {signal.SIGKILL: {-signal.SIGKILL},
                 # before the handlers are installed, SIGTERM kills by default
                 signal.SIGTERM: {143, -signal.SIGTERM},
                 signal.SIGINT: {130}}


def strict_epochs(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []

    def refuse(constant):
        raise ValueError(constant)
    return [json.loads(line, parse_constant=refuse)["epoch"]
            for line in path.read_text().splitlines()]


@pytest.fixture
def setup(tmp_path, synthetic_mnist, synthetic_mnist_dir):
    config = tmp_path / "torture.ini"
    config.write_text(small_config(train={"epochs": EPOCHS, "batch_size": 8}))
    return tmp_path, config, synthetic_mnist.table, synthetic_mnist_dir


def test_random_kills_and_natural_restarts_end_bit_identical(setup):
    tmp, config, table, data_dir = setup

    def cnntrain(*args, **kwargs):
        return proctools.start(table, data_dir, *args, cwd=tmp, **kwargs)

    straight = tmp / "straight"
    proc = cnntrain("fit", "--config", config, "-q", "--out", straight)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]

    # Timed signals land within one epoch's time after training starts, so the run takes
    # all of them on any machine: each stop that saves moves it on by an epoch at most.
    epoch_seconds = float(np.median([json.loads(line)["seconds"] for line in
                                     (straight / "metrics.jsonl").read_text().splitlines()]))

    run = tmp / "tortured"
    last = run / "checkpoints" / "last.npz"
    original = ["fit", "--config", config, "-q", "--out", run]
    rng = np.random.default_rng(10)
    order = rng.permutation(len(SIGNALS))
    landed = []
    for signum, where in (SIGNALS[i] for i in order):
        natural = ["fit", "--resume", last, "-q"] if last.exists() else original
        log = run / "train.log"
        log_size = log.stat().st_size if log.exists() else 0
        faults = {"signal_in_save": [signum]} if where == "in save" else None
        proc = cnntrain(*natural, faults=faults)
        if where == "timed":
            # Once the run has logged its start (it holds the lock and trains within
            # milliseconds), wait a random part of an epoch.
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and \
                    (not log.exists() or log.stat().st_size <= log_size):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, epoch_seconds))
            if proc.poll() is None:
                proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
        assert "error:" not in err and "Traceback" not in err, (natural, err)  # never refused
        if proc.returncode == 0:
            break  # finished before the signal came: nothing left to torture
        assert proc.returncode in EXPECTED_EXIT[signum], (signum, where, proc.returncode, err)
        landed.append((signal.Signals(signum).name, where, proc.returncode))
        # At every stop: metrics hold epochs 1..k once each, and each has its checkpoint.
        epochs = strict_epochs(run)
        assert epochs == list(range(1, len(epochs) + 1)), epochs
        if epochs:
            assert load_checkpoint(last).meta["epoch"] >= epochs[-1]
    print("signals landed:", landed)
    assert len(landed) >= 12, landed
    assert {name for name, _, _ in landed} == {"SIGKILL", "SIGTERM", "SIGINT"}

    natural = ["fit", "--resume", last, "-q"] if last.exists() else original
    proc = cnntrain(*natural)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    expected, got = load_checkpoint(straight / "checkpoints" / "last.npz"), load_checkpoint(last)
    assert got.meta["epoch"] == EPOCHS
    for name, value in expected.params.items():
        np.testing.assert_array_equal(got.params[name], value, err_msg=name)
    for name, value in expected.optimizer.items():
        np.testing.assert_array_equal(got.optimizer[name], value, err_msg=name)
    assert strict_epochs(run) == list(range(1, EPOCHS + 1))
    assert not [p.name for p in run.rglob("*.tmp")]
    assert json.loads((run / "summary.json").read_text())["epochs"] == EPOCHS
