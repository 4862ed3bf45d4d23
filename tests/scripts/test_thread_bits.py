"""scripts/thread_bits.py: its bit-for-bit comparison of two checkpoints, and the whole script
on a short real-MNIST run. Whether a BLAS gives the same bits for 1 and 2 threads is a fact
about the machine, which the script measures; these tests check the measuring."""

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cnntrain.runs.checkpoint import Checkpoint
from tests.support.checkpoints import make_network, save_network
from tests.support.clitools import small_config

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "thread_bits.py"


@pytest.fixture(scope="module")
def thread_bits():
    spec = importlib.util.spec_from_file_location("thread_bits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpoint():
    network, _ = make_network(["batchnorm", "flatten", "dense 10"])
    return Checkpoint(params={k: v.copy() for k, v in network.params.items()},
                      buffers={k: v.copy() for k, v in network.buffers.items()},
                      optimizer={"velocity/dense1.W": np.zeros((784, 10), np.float32)})


def test_identical_checkpoints_have_no_differing_arrays(thread_bits):
    assert thread_bits.differing_arrays(_checkpoint(), _checkpoint()) == []


def test_one_flipped_bit_in_any_kind_of_array_is_named(thread_bits):
    for kind in ("params", "buffers", "optimizer"):
        a, b = _checkpoint(), _checkpoint()
        name, value = next(iter(getattr(b, kind).items()))
        value.view(np.uint32).flat[-1] ^= 1  # the lowest bit of one float32
        prefix = {"params": "param", "buffers": "buffer", "optimizer": "optim"}[kind]
        assert thread_bits.differing_arrays(a, b) == [f"{prefix}/{name}"], kind


def test_zero_signs_missing_arrays_and_dtypes_count_as_differences(thread_bits):
    a, b = _checkpoint(), _checkpoint()
    b.optimizer["velocity/dense1.W"][0, 0] = -0.0  # equal as numbers, not as bits
    del b.buffers["batchnorm1.running_mean"]
    b.params["dense1.b"] = b.params["dense1.b"].astype(np.float64)
    assert thread_bits.differing_arrays(a, b) == [
        "buffer/batchnorm1.running_mean", "optim/velocity/dense1.W", "param/dense1.b"]


def _saved_pair(tmp_path, layers):
    """Checkpoints of one network with the initial weights of seeds 0 and 1."""
    saved = []
    for seed in (0, 1):
        network, cfg = make_network(layers, seed=seed)
        saved.append(tmp_path / f"seed{seed}.npz")
        save_network(saved[-1], network, cfg)
    return saved


def test_different_weights_give_exit_1_and_name_the_arrays(thread_bits, tmp_path, monkeypatch,
                                                            capsys):
    saved = _saved_pair(tmp_path, ["conv 2 3", "relu", "flatten", "dense 10"])
    monkeypatch.setattr(thread_bits, "train", lambda threads, args, out: saved[threads - 1])
    assert thread_bits.main(["--config", "unused.ini", "--threads", "1", "2"]) == 1
    # Different seeds draw different weights; the biases start at zero in both.
    assert capsys.readouterr().out == ("1 against 2 thread(s): 2 of 4 arrays differ: "
                                       "param/conv1.W, param/dense1.W\n")


def test_a_long_list_of_differing_arrays_is_cut_to_the_first_eight(thread_bits, tmp_path,
                                                                   monkeypatch, capsys):
    saved = _saved_pair(tmp_path, ["conv 2 3 pad=1"] * 9 + ["flatten", "dense 10"])
    monkeypatch.setattr(thread_bits, "train", lambda threads, args, out: saved[threads - 1])
    assert thread_bits.main(["--config", "unused.ini"]) == 1
    first_eight = ", ".join(f"param/conv{i}.W" for i in range(1, 9))
    assert capsys.readouterr().out == (f"1 against 2 thread(s): 10 of 20 arrays differ: "
                                       f"{first_eight} and 2 more\n")


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_the_script_trains_each_run_and_finds_a_repeat_bit_identical(real_mnist_dir, tmp_path):
    config = tmp_path / "small.ini"
    config.write_text(small_config(["conv 4 5", "maxpool 2", "batchnorm", "relu", "flatten",
                                    "dropout 0.3", "dense 10"]))
    done = _script("--config", config, "--set", "data.train_size=200", "--set",
                   "data.test_size=100", "--set", "train.epochs=1", "--threads", "1", "1",
                   "--data-dir", real_mnist_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 against 1 thread(s): bit-identical"


def test_a_failing_run_exits_2_with_its_own_error(real_mnist_dir, tmp_path):
    config = tmp_path / "small.ini"
    config.write_text(small_config())
    done = _script("--config", config, "--set", "train.epochs=zero", "--data-dir", real_mnist_dir)
    assert done.returncode == 2
    assert "the run with 1 thread(s) failed (exit 2): error: " in done.stderr
    assert "train.epochs" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("signum, whole_group, code, name", [
    (signal.SIGINT, True, 130, "Ctrl-C (SIGINT)"),  # a terminal's Ctrl-C reaches the group
    (signal.SIGTERM, False, 143, "SIGTERM"),       # `kill PID`: the script passes it on
])
def test_a_stop_signal_during_a_run_stops_with_its_code_and_no_continue_line(
        real_mnist_dir, tmp_path, signum, whole_group, code, name):
    config = tmp_path / "small.ini"
    config.write_text(small_config(run={"dir": tmp_path / "unused"}))
    before = set(os.listdir(tempfile.gettempdir()))
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(config), "--set", "train.epochs=500",
         "--data-dir", str(real_mnist_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(3)  # the first run is training by now: 500 epochs take minutes
    if whole_group:
        os.killpg(script.pid, signum)
    else:
        script.send_signal(signum)
    out, err = script.communicate(timeout=120)
    assert script.returncode == code, err
    # The run's own "continue with" line would name a folder the script has removed.
    assert err.strip() == f"stopped by {name} during the run with 1 thread(s); nothing was compared"
    assert out == ""
    left = {entry for entry in set(os.listdir(tempfile.gettempdir())) - before
            if entry.startswith("cnntrain-thread-bits-")}
    assert not left


def test_fewer_than_two_thread_counts_is_a_usage_error():
    done = _script("--config", "x.ini", "--threads", "2")
    assert done.returncode == 2 and "--threads needs two or more counts" in done.stderr
