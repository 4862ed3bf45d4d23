"""The network container and the layer-list builder."""

import numpy as np
import pytest

from cnntrain.nn.conv import Conv2D
from cnntrain.nn.dense import Dense
from cnntrain.nn.flatten import Flatten
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import LayerLineError, Network, build_network, check_layers
from tests.support.gradcheck import numeric_gradient, relative_error

LENET5 = """
conv 6 5 pad=2
relu
maxpool 2
conv 16 5
relu
maxpool 2
flatten
dense 120
relu
dense 84
relu
dense 10
"""


def lenet(dtype=np.float64, seed=0, kernels="fast"):
    return build_network(LENET5, rng=np.random.default_rng(seed), dtype=dtype, kernels=kernels)


def test_lenet5_layers_names_and_parameter_counts():
    net = lenet()
    assert [name for name, _ in net.layers] == [
        "conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "flatten1",
        "dense1", "relu3", "dense2", "relu4", "dense3"]
    assert list(net.params) == ["conv1.W", "conv1.b", "conv2.W", "conv2.b", "dense1.W", "dense1.b",
                                "dense2.W", "dense2.b", "dense3.W", "dense3.b"]
    assert net.params["conv2.W"].shape == (16, 6, 5, 5) and net.params["dense1.W"].shape == (400,
                                                                                             120)
    rows = {r.name: r for r in net.summary()}
    assert rows["conv1"].output_shape == (6, 28, 28) and rows["maxpool2"].output_shape == (16, 5, 5)
    # (kernel weights + bias) per layer, counted by hand
    assert net.n_params == ((6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120)
                            + (120 * 84 + 84) + (84 * 10 + 10))
    assert rows["conv1"].multiply_adds == 6 * 28 * 28 * 25
    assert rows["conv2"].multiply_adds == 16 * 10 * 10 * 6 * 25
    assert rows["dense1"].multiply_adds == 400 * 120 and rows["relu1"].multiply_adds == 0


def test_layer_list_separators_are_equivalent():
    one_line = ("conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
                "dense 120 / relu / dense 84 / relu / dense 10")
    a = build_network(one_line, rng=np.random.default_rng(3))
    b = build_network(LENET5, rng=np.random.default_rng(3))
    assert a.lines == b.lines
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = lenet(seed=5), lenet(seed=5), lenet(seed=6)
    np.testing.assert_array_equal(a.params["conv2.W"], b.params["conv2.W"])
    assert not np.array_equal(a.params["conv2.W"], c.params["conv2.W"])


def test_init_auto_is_he_for_relu_and_glorot_for_tanh():
    relu_net = build_network("flatten / dense 2000 / relu / dense 10", rng=np.random.default_rng(0))
    w = relu_net.params["dense1.W"]
    assert w.std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    tanh_net = build_network("flatten / dense 2000 / tanh / dense 10", rng=np.random.default_rng(0))
    w = tanh_net.params["dense1.W"]
    limit = np.sqrt(6 / (784 + 2000))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)


def test_forward_is_the_composition_of_the_layers_and_backward_skips_the_input_grad():
    net = lenet()
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28))
    expected = x
    for _, layer in net.layers:
        expected = layer.forward(expected, train=False)
    np.testing.assert_array_equal(net.forward(x), expected)
    assert net.backward(np.ones((3, 10))) is None
    net.forward(x)
    assert net.backward(np.ones((3, 10)), input_grad=True).shape == x.shape


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_whole_lenet5_plus_loss_finite_differences(kernels):
    rng = np.random.default_rng(11)
    net = lenet(seed=11, kernels=kernels)
    for name, p in net.params.items():
        if name.endswith(".b"):
            p[...] = 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 1, 28, 28))
    labels = np.array([3, 7])
    loss = SoftmaxCrossEntropy()
    loss.forward(net.forward(x), labels)
    dx = net.backward(loss.backward(), input_grad=True)

    def objective():
        return SoftmaxCrossEntropy().forward(net.forward(x, train=False), labels, train=False)

    probe = np.random.default_rng(12)
    for name, p in net.params.items():
        picks = probe.choice(p.size, size=min(p.size, 25), replace=False)
        err = relative_error(net.grads[name], numeric_gradient(objective, p, indices=picks))
        assert err < 1e-6, (name, err)
    picks = probe.choice(x.size, size=60, replace=False)
    assert relative_error(dx, numeric_gradient(objective, x, indices=picks)) < 1e-6


def test_float32_network_tracks_the_float64_one():
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28))
    net64, net32 = lenet(np.float64, seed=4), lenet(np.float32, seed=4)
    z64, z32 = net64.forward(x), net32.forward(x.astype(np.float32))
    assert z32.dtype == np.float32
    np.testing.assert_allclose(z32, z64, rtol=1e-4, atol=1e-5)


def test_load_params_checks_names_and_shapes():
    net, other = lenet(seed=1), lenet(seed=2)
    net.load_params({k: v.copy() for k, v in other.params.items()})
    np.testing.assert_array_equal(net.params["dense3.W"], other.params["dense3.W"])
    bad = dict(other.params)
    bad["conv1.W"] = np.zeros((6, 1, 3, 3))
    with pytest.raises(ValueError, match="conv1.W has shape"):
        net.load_params(bad)
    with pytest.raises(ValueError, match="missing"):
        net.load_params({"conv1.W": other.params["conv1.W"]})


@pytest.mark.parametrize("layers,line_no,message", [
    ("conv 6 5 / relu / maxpol 2 / flatten / dense 10", 3,
     "unknown layer 'maxpol' (did you mean 'maxpool'?)"),
    ("conv 6 / flatten / dense 10", 1, "expected 2 number(s), got 1; usage: conv FILTERS KERNEL"),
    ("conv 6 five / flatten / dense 10", 1, "kernel must be a whole number, got 'five'"),
    ("conv 6 5 pad=-1 / flatten / dense 10", 1, "pad must be >= 0, got -1"),
    ("conv 6 5 padding=2 / flatten / dense 10", 1,
     "unknown option 'padding' for conv (allowed: stride, pad)"),
    ("maxpool 0 / flatten / dense 10", 1, "kernel must be >= 1, got 0"),
    ("conv 6 5 / relu / dense 10", 3,
     "dense needs a flat input but gets (6, 24, 24); add a 'flatten' line"),
    ("flatten / conv 6 5 / dense 10", 2, "conv needs a (C, H, W) input but gets (784,)"),
    ("conv 6 5 / maxpool 2 / conv 16 13 / flatten / dense 10", 3,
     "does not fit the input (6, 12, 12)"),
    ("conv 6 5 / flatten / dense 120", 3, "must output 10 class scores, but outputs (120,)"),
    ("", 0, "the layer list is empty"),
])
def test_layer_list_mistakes_name_the_line_and_the_shapes(layers, line_no, message):
    with pytest.raises(LayerLineError) as caught:
        check_layers(layers)
    assert caught.value.line_no == line_no
    assert message in caught.value.reason
    assert "\n" not in str(caught.value)


def test_network_of_hand_made_layers():
    rng = np.random.default_rng(0)
    net = Network([("conv", Conv2D(1, 2, 3, rng=rng, dtype=np.float64)), ("flat", Flatten()),
                   ("out", Dense(2 * 4 * 4, 3, rng=rng, dtype=np.float64))],
                  input_shape=(1, 6, 6))
    assert set(net.params) == {"conv.W", "conv.b", "out.W", "out.b"}
    assert net.params["conv.W"] is net.layers[0][1].params["W"]
    assert net.summary()[-1].output_shape == (3,)
