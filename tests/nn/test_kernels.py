"""The textbook path (cnntrain.nn.functional) and the fast path (cnntrain.nn.fast) agree.

Bit for bit where both do the same arithmetic in the same order (activations, max pooling,
the dense layer, flatten); to float64 rounding where the fast path sums in another order
(convolutions through other matrix products, mean pooling). Both paths are also checked on
their own against loop oracles, finite differences and PyTorch (test_layers, test_model,
test_torch_parity run on each).
"""

import inspect

import numpy as np
import pytest

from cnntrain.nn import fast, functional
from cnntrain.nn import layers as L
from cnntrain.nn.activations import ReLU, Sigmoid, Tanh
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.dense import Dense
from cnntrain.nn.flatten import Flatten
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import build_network
from cnntrain.nn.norm import BatchNorm, Dropout
from cnntrain.nn.optim import SGD
from cnntrain.nn.pooling import MaxPool2D, MeanPool2D

LENET5 = ("conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
          "dense 120 / relu / dense 84 / relu / dense 10")
CLASSIC = ("conv 6 5 pad=2 / tanh / meanpool 2 / conv 16 5 / sigmoid / meanpool 2 / flatten / "
           "dense 120 / tanh / dense 10")
BATCHNORM = ("conv 6 5 pad=2 / batchnorm / relu / maxpool 2 / conv 16 5 / batchnorm / relu / "
             "maxpool 2 / flatten / dense 84 / batchnorm / relu / dense 10")


def public_functions(module):
    return {name: f for name, f in inspect.getmembers(module, inspect.isfunction)
            if f.__module__ == module.__name__ and not name.startswith("_")}


def test_every_fast_function_is_a_textbook_function_with_the_same_signature():
    fast_functions = public_functions(fast)
    textbook = public_functions(functional)
    assert {"conv_forward", "conv_input_grad", "conv_kernel_grad", "conv_bias_grad",
            "maxpool2d_backward", "dense_backward"} <= set(fast_functions)
    for name, function in fast_functions.items():
        assert name in textbook, f"fast.{name} has no textbook version"
        assert inspect.signature(function) == inspect.signature(textbook[name]), name


def test_what_fast_does_not_speed_up_is_the_textbook_function():
    for name in ("relu", "relu_backward", "sigmoid", "tanh", "dense", "conv_output_size"):
        assert getattr(fast, name) is getattr(functional, name)
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        fast.nonesuch  # noqa: B018


def twin_layers(make):
    """The same layer on both paths, with the same parameters."""
    rng = np.random.default_rng(0)
    pair = [make(kernels) for kernels in ("fast", "reference")]
    for key, value in pair[0].params.items():
        value[...] = rng.standard_normal(value.shape)
        pair[1].params[key][...] = value
    return pair


# (make(kernels) -> layer, input shape, exact): exact when both paths do the same arithmetic
LAYER_CASES = {
    "conv": (lambda k: Conv2D(3, 4, 3, padding=1, dtype=np.float64, kernels=k), (5, 3, 9, 8),
             False),
    "conv-strided": (lambda k: Conv2D(2, 3, (5, 3), stride=2, padding=2, dtype=np.float64,
                                      kernels=k), (3, 2, 11, 10), False),
    "maxpool": (lambda k: MaxPool2D(2, kernels=k), (4, 3, 8, 9), True),
    "maxpool-overlapping": (lambda k: MaxPool2D(3, 2, kernels=k), (4, 3, 9, 8), True),
    "meanpool": (lambda k: MeanPool2D(2, kernels=k), (4, 3, 8, 8), False),
    "meanpool-overlapping": (lambda k: MeanPool2D(3, 1, kernels=k), (2, 3, 7, 6), False),
    "dense": (lambda k: Dense(12, 5, dtype=np.float64, kernels=k), (6, 12), True),
    "relu": (lambda k: ReLU(kernels=k), (4, 3, 5, 5), True),
    "tanh": (lambda k: Tanh(kernels=k), (4, 3, 5, 5), True),
    "sigmoid": (lambda k: Sigmoid(kernels=k), (4, 3, 5, 5), True),
    "flatten": (lambda k: Flatten(kernels=k), (4, 3, 5, 5), True),
    "batchnorm": (lambda k: BatchNorm(3, dtype=np.float64, kernels=k), (4, 3, 5, 6), False),
    "batchnorm-dense": (lambda k: BatchNorm(7, spatial=False, dtype=np.float64, kernels=k),
                        (6, 7), False),
    "dropout": (lambda k: seeded(Dropout(0.3, kernels=k)), (4, 3, 5, 5), True),
}


def seeded(layer):
    """A layer that draws random numbers, with the same generator on both paths."""
    layer.rng = np.random.default_rng(5)
    return layer


def test_every_registered_layer_is_compared_here():
    kinds = {type(case[0]("fast")).kind for case in LAYER_CASES.values()}
    assert kinds == set(L.REGISTRY)


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_both_paths_agree_for_every_layer(case):
    make, shape, exact = LAYER_CASES[case]
    ours, textbook = twin_layers(make)
    assert ours.kernels is fast and textbook.kernels is functional
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    y_fast, y_ref = ours.forward(x), textbook.forward(x)
    dout = rng.standard_normal(y_fast.shape)
    dx_fast, dx_ref = ours.backward(dout), textbook.backward(dout)
    pairs = [(y_fast, y_ref), (dx_fast, dx_ref)] + [(ours.grads[k], textbook.grads[k])
                                                     for k in ours.grads]
    for a, b in pairs:
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_max_pooling_picks_the_same_first_maximum_on_both_paths():
    x = np.random.default_rng(2).integers(-2, 3, size=(3, 2, 9, 9)).astype(np.float64)  # ties
    for kernel, stride in ((2, 2), (3, 2), (3, 1)):
        y_fast, arg_fast = fast.maxpool2d(x, kernel, stride)
        y_ref, arg_ref = functional.maxpool2d(x, kernel, stride)
        np.testing.assert_array_equal(y_fast, y_ref)
        np.testing.assert_array_equal(arg_fast, arg_ref)


def training_step(layers, kernels, weights, x, labels):
    net = build_network(layers, dtype=np.float64, kernels=kernels)
    net.load_params(weights)
    optimizer = SGD(net.params, 0.05, momentum=0.9, weight_decay=5e-4,
                    decayed=net.decayed(decay_biases=False))
    results = []
    for _ in range(2):  # the second step also exercises momentum and the kept scratch arrays
        loss = SoftmaxCrossEntropy()
        logits = net.forward(x)
        value = loss.forward(logits, labels)
        dx = net.backward(loss.backward(), input_grad=True)
        results.append((value, logits.copy(), dx.copy(), {k: g.copy() for k,
                                                          g in net.grads.items()}))
        optimizer.step(net.grads)
    return results, net.params


@pytest.mark.parametrize("layers", [LENET5, CLASSIC, BATCHNORM], ids=["lenet5", "classic",
                                                                      "batchnorm"])
def test_a_whole_training_step_agrees_on_both_paths(layers):
    rng = np.random.default_rng(3)
    weights = {k: v.astype(np.float64) for k, v in
               build_network(layers, rng=np.random.default_rng(4), dtype=np.float64).params.items()}
    for name in weights:
        if name.endswith(".b"):
            weights[name] = 0.1 * rng.standard_normal(weights[name].shape)
    x = rng.standard_normal((16, 1, 28, 28))
    labels = rng.integers(0, 10, 16)
    fast_steps, fast_params = training_step(layers, "fast", weights, x, labels)
    ref_steps, ref_params = training_step(layers, "reference", weights, x, labels)
    for (loss_f, z_f, dx_f, g_f), (loss_r, z_r, dx_r, g_r) in zip(fast_steps, ref_steps):
        assert loss_f == pytest.approx(loss_r, rel=1e-12)
        np.testing.assert_allclose(z_f, z_r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx_f, dx_r, rtol=1e-10, atol=1e-12 * np.abs(dx_r).max())
        for name in g_r:
            # A conv bias right before a batch norm has a gradient of exactly 0 in exact
            # arithmetic (the norm subtracts the mean), so both paths hold rounding noise
            # there: compare it on the scale of the network's gradients, not its own.
            scale = max(np.abs(g_r[name]).max(), 1e-3 if "batchnorm" in layers else 0)
            np.testing.assert_allclose(g_f[name], g_r[name], rtol=1e-10, atol=1e-12 * scale,
                                       err_msg=name)
    for name in ref_params:
        np.testing.assert_allclose(fast_params[name], ref_params[name], rtol=1e-10, atol=1e-14)


def test_the_reference_path_runs_no_reordered_relu():
    fast_net = build_network(LENET5, kernels="fast")
    ref_net = build_network(LENET5, kernels="reference")
    listed = [layer for _, layer in ref_net.layers]
    assert ref_net._order == listed
    assert fast_net._order != [layer for _, layer in fast_net.layers]
    assert all(layer.kernels is functional for layer in listed)


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="unknown kernels 'slow'"):
        build_network(LENET5, kernels="slow")


def test_training_on_the_textbook_path_learns_as_the_fast_one(tmp_path, monkeypatch,
                                                              synthetic_mnist,
                                                             synthetic_mnist_dir):
    """`[train] kernels = reference` trains a whole run through the CLI to the accuracy of the
    fast path (float32: the trajectories drift apart by rounding, so not to the same bits)."""
    import json

    from tests.support.clitools import invoke, small_config, use_synthetic_mnist

    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    config = tmp_path / "small.ini"
    config.write_text(small_config(train={"epochs": 2}))
    finals = {}
    for kernels in ("fast", "reference"):
        out = tmp_path / kernels
        result = invoke("fit", "--config", config, "-q", "--set", f"train.kernels={kernels}",
                        "--out", out)
        assert result.exit_code == 0, result.output
        assert f"kernels = {kernels}" in (out / "config.ini").read_text()
        finals[kernels] = json.loads((out / "summary.json").read_text())["final"]
    assert finals["fast"]["test_acc"] > 0.5  # ten classes: chance is 0.1
    assert abs(finals["reference"]["test_acc"] - finals["fast"]["test_acc"]) <= 0.03
    assert finals["reference"]["train_loss"] == pytest.approx(finals["fast"]["train_loss"],
                                                              rel=0.02)
