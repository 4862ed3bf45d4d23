"""`cnntrain gradcheck` and cnntrain.nn.gradcheck: every layer against finite differences, a
broken backward caught, kinks counted instead of blamed."""

import numpy as np
import pytest

from cnntrain.nn import gradcheck
from cnntrain.nn.activations import ReLU
from cnntrain.nn.pooling import MaxPool2D
from tests.support.clitools import (
    SMALL_LAYERS,
    assert_one_line_error,
    invoke,
)


@pytest.fixture
def config(small_config_file):
    return small_config_file


def table_rows(output):
    """layer name -> the words of its row."""
    return {line.split()[0]: line.split() for line in output.splitlines()[1:]
            if line and not line.startswith("all ")}


def test_every_layer_of_the_configured_network_passes(config):
    result = invoke("gradcheck", "--config", config, "--probes", 20)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert list(rows) == ["conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "flatten1",
                          "dense1", "relu3", "dense2"]
    assert len(rows) == len(SMALL_LAYERS)
    for _name, words in rows.items():
        assert "ok" in words, words
        assert float(words[words.index("ok") - 3]) < 1e-6
    assert "input" in " ".join(rows["conv1"]) and " W " in " ".join(rows["conv1"]) + " "
    assert "all 10 layers agree" in result.stdout


def test_a_wrong_backward_fails_its_row_and_exits_1(config, monkeypatch):
    """ReLU's derivative off by a little (the slope 1.01): only the ReLU rows fail."""
    backward = ReLU.backward
    monkeypatch.setattr(ReLU, "backward", lambda self, dout, input_grad=True:
                        1.01 * backward(self, dout, input_grad))
    result = invoke("gradcheck", "--config", config, "--probes", 20)
    assert result.exit_code == 1
    rows = table_rows(result.stdout)
    failing = sorted(name for name, words in rows.items() if "FAIL" in words)
    assert failing == ["relu1", "relu2", "relu3"]
    assert result.stderr.strip() == ("error: gradient check failed for relu1, relu2, relu3 "
                                     "(relative error above 1e-06)")


def test_a_tolerance_below_the_rounding_error_fails(config):
    result = invoke("gradcheck", "--config", config, "--probes", 10, "--tolerance", 1e-15)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout


def test_a_bad_config_is_a_one_line_error(config):
    result = invoke("gradcheck", "--config", config, "--set", "model.layers=conv 4 5 / dense 10x")
    assert_one_line_error(result, 2, "dense")


def test_the_checked_network_is_float64_and_the_weights_are_left_as_they_were():
    from cnntrain.nn.model import build_network

    rng = np.random.default_rng(0)
    network = build_network(["conv 3 3", "relu", "flatten", "dense 10"], input_shape=(1, 6, 6),
                            rng=rng, dtype=np.float64)
    before = {k: v.copy() for k, v in network.params.items()}
    results = gradcheck.check_network(network, rng.standard_normal((4, 1, 6, 6)), probes=15)
    assert [r.name for r in results] == ["conv1", "relu1", "flatten1", "dense1"]
    assert all(r.passed for r in results)
    assert set(results[0].errors) == {"input", "W", "b"} and set(results[1].errors) == {"input"}
    for key, value in network.params.items():
        np.testing.assert_array_equal(value, before[key])


def test_ties_in_max_pooling_are_counted_as_kinks_not_errors():
    """A window of equal values has no derivative; the check skips those probes and says how
    many, and the windows with a clear maximum still agree."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, :2, :2] = 5.0  # one tied window, three with a clear maximum
    result = gradcheck.check_layer("maxpool1", MaxPool2D(2), x, np.random.default_rng(0))
    assert result.kinks == 4
    assert result.passed and result.errors["input"] < 1e-9


def test_a_layer_that_is_mostly_kinks_fails_rather_than_passing_on_what_is_left():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = [[1.0, 2.0], [3.0, 4.0]]  # three tied windows: 12 of 16 probes are kinks
    result = gradcheck.check_layer("maxpool1", MaxPool2D(2), x, np.random.default_rng(0))
    assert result.kinks == 12 and result.errors["input"] == float("inf") and not result.passed


def test_gradcheck_on_real_mnist_images(real_mnist_dir):
    result = invoke("gradcheck", "--config", "configs/lenet5.ini", "--data-dir", real_mnist_dir,
                    "--probes", 20)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 12 and all("ok" in words for words in rows.values())


def test_dropout_is_checked_with_a_fixed_mask_and_batchnorm_keeps_its_running_statistics():
    from cnntrain.nn.model import build_network
    from cnntrain.runs.build import layer_seeds

    rng = np.random.default_rng(1)
    network = build_network(["conv 3 3", "batchnorm", "relu", "flatten", "dense 12", "batchnorm",
                             "dropout 0.5", "dense 10"], input_shape=(1, 6, 6), rng=rng,
                            dtype=np.float64, seeds=layer_seeds(0))
    dropout = network.layers[6][1]
    generator_state = dropout.rng.bit_generator.state
    buffers = {k: v.copy() for k, v in network.buffers.items()}
    results = gradcheck.check_network(network, rng.standard_normal((5, 1, 6, 6)), probes=20)
    assert all(r.passed for r in results), gradcheck.format_table(results)
    assert set(results[1].errors) == {"input", "gamma", "beta"}
    assert dropout.rng.bit_generator.state == generator_state
    for key, value in buffers.items():
        np.testing.assert_array_equal(network.buffers[key], value)
    # A fresh mask at every probe would make the differences noise: the check would fail.
    frozen = gradcheck._FrozenState
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(frozen, "forward", lambda self, x: self.layer.forward(x, train=True))
    try:
        broken = gradcheck.check_layer("dropout1", dropout, rng.standard_normal((5, 12)), rng)
    finally:
        monkeypatch.undo()
    assert not broken.passed


def test_the_textbook_kernels_are_checked_when_the_config_picks_them(config, monkeypatch):
    """With [train] kernels = reference the check runs cnntrain.nn.functional: a slip there
    fails it, while the fast kernels would have passed."""
    from cnntrain.nn import functional

    assert invoke("gradcheck", "--config", config, "--probes", 10, "--set",
                  "train.kernels=reference").exit_code == 0
    correct = functional.conv_bias_grad
    monkeypatch.setattr(functional, "conv_bias_grad", lambda dout: 1.01 * correct(dout))
    result = invoke("gradcheck", "--config", config, "--probes", 10, "--set",
                    "train.kernels=reference")
    assert result.exit_code == 1
    assert sorted(n for n,
                  words in table_rows(result.stdout).items() if "FAIL" in words) == ["conv1",
                                                                                     "conv2"]
    assert invoke("gradcheck", "--config", config, "--probes", 10).exit_code == 0
