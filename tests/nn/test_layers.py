"""Every layer against an independent loop oracle and against finite differences (float64)."""

import numpy as np
import pytest

from cnntrain.nn import functional as fn
from cnntrain.nn.activations import ReLU, Sigmoid, Tanh
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.dense import Dense
from cnntrain.nn.flatten import Flatten
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.pooling import MaxPool2D, MeanPool2D
from tests.support import oracle
from tests.support.gradcheck import numeric_gradient, relative_error

TOL = 1e-6


@pytest.fixture(params=["fast", "reference"])
def kernels(request):
    """Each test that takes it runs on both paths: the fast kernels and the textbook ones."""
    return request.param

# N, C, H, W, F, kernel, stride, pad: odd sizes, non-square inputs and kernels, strides 1-3,
# pads 0-2
CONV_CASES = [
    (2, 3, 7, 5, 4, (3, 3), 1, 0),
    (2, 2, 8, 9, 3, (3, 2), 2, 1),
    (1, 3, 6, 7, 2, (5, 5), 1, 2),
    (2, 1, 9, 8, 3, (4, 3), 3, 2),
    (3, 4, 5, 5, 5, (1, 1), 1, 0),
    (2, 2, 10, 7, 3, (3, 3), 2, 2),
]
# N, C, H, W, kernel, stride: non-overlapping, overlapping (stride < kernel), leftover rows
POOL_CASES = [
    (2, 3, 8, 6, 2, 2),
    (2, 2, 7, 9, 3, 2),
    (1, 3, 9, 7, 3, 3),
    (2, 2, 6, 6, 2, 1),
    (2, 1, 10, 11, 4, 3),
]


def tie_free(rng, shape):
    """Distinct values at least 0.01 apart, shuffled: max pooling has one clear winner per
    window, and a finite-difference step cannot change which one it is."""
    values = (np.arange(int(np.prod(shape)), dtype=np.float64) - np.prod(shape) / 2) * 0.01
    return rng.permutation(values).reshape(shape)


def check_layer_gradients(layer, x, rng):
    """Backward of `layer` at x against centred differences of sum(forward(x) * G)."""
    x = x.copy()
    y = layer.forward(x)
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G)

    def objective():
        return float(np.sum(layer.forward(x, train=False) * G))

    assert relative_error(dx, numeric_gradient(objective, x)) < TOL
    for key, value in layer.params.items():
        assert relative_error(layer.grads[key], numeric_gradient(objective, value)) < TOL, key


def conv_layer(C, F, kernel, stride, pad, rng, kernels="fast"):
    layer = Conv2D(C, F, kernel, stride=stride, padding=pad, rng=rng, dtype=np.float64,
                   kernels=kernels)
    layer.params["b"][...] = rng.standard_normal(F)
    return layer


@pytest.mark.parametrize("N,C,H,W,F,kernel,stride,pad", CONV_CASES)
def test_conv_matches_loop_oracle_forward_and_backward(N, C, H, W, F, kernel, stride, pad, kernels):
    rng = np.random.default_rng(1)
    layer = conv_layer(C, F, kernel, stride, pad, rng, kernels)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    Wt, b = layer.params["W"], layer.params["b"]
    np.testing.assert_allclose(y, oracle.conv_forward(x, Wt, b, stride, pad), rtol=1e-12,
                               atol=1e-12)

    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, oracle.conv_input_grad(dout, Wt, x.shape, stride, pad),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], oracle.conv_weight_grad(x, dout, Wt.shape, stride,
                                                                         pad),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], dout.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("N,C,H,W,F,kernel,stride,pad", CONV_CASES)
def test_conv_finite_differences(N, C, H, W, F, kernel, stride, pad, kernels):
    rng = np.random.default_rng(2)
    check_layer_gradients(conv_layer(C, F, kernel, stride, pad, rng, kernels),
                          rng.standard_normal((N, C, H, W)), rng)


@pytest.mark.parametrize("N,C,H,W,kernel,stride", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pooling_matches_loop_oracle(N, C, H, W, kernel, stride, mode, kernels):
    rng = np.random.default_rng(3)
    layer = (MaxPool2D if mode == "max" else MeanPool2D)(kernel, stride, kernels=kernels)
    x = tie_free(rng, (N, C, H, W))
    y = layer.forward(x)
    np.testing.assert_allclose(y, oracle.pool_forward(x, kernel, stride, mode), rtol=1e-12,
                               atol=1e-15)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), oracle.pool_backward(x, dout, kernel, stride,
                                                                          mode),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("N,C,H,W,kernel,stride", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pooling_finite_differences(N, C, H, W, kernel, stride, mode, kernels):
    rng = np.random.default_rng(4)
    layer = (MaxPool2D if mode == "max" else MeanPool2D)(kernel, stride, kernels=kernels)
    check_layer_gradients(layer, tie_free(rng, (N, C, H, W)), rng)


def test_max_pool_routes_ties_to_the_first_maximum_in_row_major_order(kernels):
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])  # three equal maxima: the top-right one is first
    layer = MaxPool2D(2, kernels=kernels)
    layer.forward(x)
    dx = layer.backward(np.array([[[[7.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 7.0], [0.0, 0.0]])


@pytest.mark.parametrize("cls", [ReLU, Tanh, Sigmoid, Flatten])
def test_parameter_free_layers_finite_differences(cls, kernels):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU's kink out of the finite-difference step
    check_layer_gradients(cls(kernels=kernels), x, rng)


def test_dense_finite_differences(kernels):
    rng = np.random.default_rng(6)
    layer = Dense(7, 5, rng=rng, dtype=np.float64, kernels=kernels)
    layer.params["b"][...] = rng.standard_normal(5)
    check_layer_gradients(layer, rng.standard_normal((4, 7)), rng)


def test_dense_matches_its_definition():
    rng = np.random.default_rng(7)
    layer = Dense(3, 2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    W, b = layer.params["W"], layer.params["b"]
    expected = np.array([[sum(x[n, i] * W[i, o] for i in range(3)) + b[o]
                          for o in range(2)] for n in range(4)])
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12)


def test_activation_values():
    x = np.array([-800.0, -2.0, 0.0, 3.0, 800.0])
    np.testing.assert_array_equal(ReLU().forward(x), [0, 0, 0, 3, 800])
    with np.errstate(over="raise"):
        sig = Sigmoid().forward(x)
    np.testing.assert_allclose(sig, [0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-3.0)), 1.0],
                               atol=1e-15)
    np.testing.assert_allclose(Tanh().forward(x), np.tanh(x))


# --- softmax + cross-entropy -------------------------------------------------------------

def test_softmax_cross_entropy_value_and_delta():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    loss = SoftmaxCrossEntropy()
    value = loss.forward(z, y)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(probs[np.arange(5), y])), rel=1e-12)
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(loss.backward(), (probs - onehot) / 5, rtol=1e-12)

    def objective():
        return SoftmaxCrossEntropy().forward(z, y, train=False)

    loss.forward(z, y)
    assert relative_error(loss.backward(), numeric_gradient(objective, z)) < TOL


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_label_smoothing_value_and_delta(smoothing):
    """The target (1 - s) * onehot + s / K, written out: the loss is -sum_k t_k log p_k per
    image, its delta (p - t) / N, and both agree with central differences in float64."""
    rng = np.random.default_rng(9)
    z = rng.standard_normal((6, 5)) * 3
    y = np.array([0, 4, 1, 1, 2, 3])
    loss = SoftmaxCrossEntropy(smoothing)
    value = loss.forward(z, y)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    target = (1 - smoothing) * np.eye(5)[y] + smoothing / 5
    assert value == pytest.approx(-np.mean((target * np.log(probs)).sum(axis=1)), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), (probs - target) / 6, rtol=1e-12, atol=1e-15)

    def objective():
        return SoftmaxCrossEntropy(smoothing).forward(z, y, train=False)

    loss.forward(z, y)
    assert relative_error(loss.backward(), numeric_gradient(objective, z)) < TOL


def test_label_smoothing_stops_pulling_once_the_target_is_met():
    # Plain cross-entropy always pushes the true logit further up; with smoothing the delta
    # is zero exactly where softmax(z) equals the smoothed target.
    s, K = 0.1, 4
    target = np.full(K, s / K)
    target[2] += 1 - s
    z = np.log(target)[None, :]
    smoothed = SoftmaxCrossEntropy(s)
    smoothed.forward(z, np.array([2]))
    np.testing.assert_allclose(smoothed.backward(), 0, atol=1e-15)
    plain = SoftmaxCrossEntropy()
    plain.forward(z, np.array([2]))
    assert plain.backward()[0, 2] < -0.07


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5])
def test_label_smoothing_outside_0_1_is_refused(smoothing):
    with pytest.raises(ValueError, match="label smoothing must be in"):
        SoftmaxCrossEntropy(smoothing)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    loss = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss.forward(z, np.array([0, 2]))
        delta = loss.backward()
    assert value == pytest.approx(np.log(2) / 2)
    np.testing.assert_allclose(delta, [[0, 0, 0], [0, 0.25, -0.25]], atol=1e-15)
    assert np.isfinite(fn.softmax(np.array([[1e4, -1e4]], dtype=np.float32))).all()


# --- the seed tutorial's worked examples ------------------------------------------------

POOLED_DELTA = np.array([[1.0, 3.0], [2.0, 4.0]])


def test_worked_example_mean_pool_upsampling(kernels):
    layer = MeanPool2D(2, kernels=kernels)
    layer.forward(np.zeros((1, 1, 4, 4)))
    dx = layer.backward(POOLED_DELTA[None, None])
    expected = np.array([[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 4, 4], [2, 2, 4, 4]]) / 4
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_worked_example_max_pool_upsampling(kernels):
    # The maxima of the four windows sit bottom-right, top-right, top-left and bottom-left:
    # windows in row-major order are top-left (delta 1), top-right (3), bottom-left (2),
    # bottom-right (4).
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 9  # top-left window: maximum at its bottom-right
    x[0, 0, 0, 3] = 9  # top-right window: maximum at its top-right
    x[0, 0, 2, 0] = 9  # bottom-left window: maximum at its top-left
    x[0, 0, 3, 2] = 9  # bottom-right window: maximum at its bottom-left
    layer = MaxPool2D(2, kernels=kernels)
    layer.forward(x)
    dx = layer.backward(POOLED_DELTA[None, None])
    expected = np.array([[0, 0, 0, 3],
                         [0, 1, 0, 0],
                         [2, 0, 0, 0],
                         [0, 0, 4, 0]], dtype=float)
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_worked_example_conv_delta_is_the_full_convolution_summed_over_kernels(path):
    # A 3x3 input, two 2x2 kernels, hence two 2x2 output deltas.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    kernels = np.array([[[[1.0, 2.0], [3.0, 4.0]]], [[[-1.0, 0.5], [2.0, -3.0]]]])
    layer = Conv2D(1, 2, 2, dtype=np.float64, kernels=path)
    layer.params["W"][...] = kernels
    layer.forward(x)
    delta = np.array([[[[1.0, -2.0], [0.5, 3.0]], [[2.0, 1.0], [-1.0, 4.0]]]])
    dx = layer.backward(delta)

    # Hand-written 'full' convolution: out[r, s] = sum_{i, j} d[i, j] * k[r - i, s - j].
    expected = np.zeros((3, 3))
    for f in range(2):
        d, k = delta[0, f], kernels[f, 0]
        for r in range(3):
            for s in range(3):
                for i in range(2):
                    for j in range(2):
                        if 0 <= r - i < 2 and 0 <= s - j < 2:
                            expected[r, s] += d[i, j] * k[r - i, s - j]
    # The same as correlating the zero-padded delta with each kernel rotated 180 degrees.
    rotated = np.zeros((3, 3))
    for f in range(2):
        padded = np.pad(delta[0, f], 1)
        flipped = kernels[f, 0, ::-1, ::-1]
        for r in range(3):
            for s in range(3):
                rotated[r, s] += np.sum(padded[r:r + 2, s:s + 2] * flipped)
    np.testing.assert_array_equal(expected, rotated)
    for r in range(3):
        for s in range(3):
            assert dx[0, 0, r, s] == expected[r, s], (r, s)
    # Element (1, 1) written out: every kernel tap that reads x[1, 1], times its delta.
    assert dx[0, 0, 1,
              1] == (1 * 4 + -2 * 3 + 0.5 * 2 + 3 * 1) + (2 * -3 + 1 * 2 + -1 * 0.5 + 4 * -1)
    # The bias gradient is the sum of each delta.
    np.testing.assert_array_equal(layer.grads["b"], [1 - 2 + 0.5 + 3, 2 + 1 - 1 + 4])


# --- the layer contract ------------------------------------------------------------------

ALL_LAYERS = [
    lambda dt: Conv2D(2, 3, 3, padding=1, rng=np.random.default_rng(0), dtype=dt),
    lambda dt: MaxPool2D(2),
    lambda dt: MeanPool2D(3, stride=2),
    lambda dt: ReLU(),
    lambda dt: Tanh(),
    lambda dt: Sigmoid(),
    lambda dt: Flatten(),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved_end_to_end(make, dtype):
    layer = make(dtype)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(g.dtype == dtype for g in layer.grads.values())


def test_dense_dtype_and_mixed_dtypes_are_refused():
    layer = Dense(4, 3, rng=np.random.default_rng(0), dtype=np.float32)
    y = layer.forward(np.ones((2, 4), np.float32))
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    with pytest.raises(TypeError, match="float32 parameters but got a float64 input"):
        layer.forward(np.ones((2, 4)))


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_backward_without_training_forward_is_a_clear_error(make):
    layer = make(np.float64)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones((2, 3, 6, 6)))
    y = layer.forward(np.ones((2, 2, 6, 6)), train=False)  # inference keeps nothing
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones_like(y))


def test_backward_overwrites_gradients_instead_of_accumulating():
    rng = np.random.default_rng(9)
    layer = Conv2D(2, 3, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    dout = rng.standard_normal((2, 3, 3, 3))
    layer.forward(x)
    layer.backward(dout)
    first = {k: v.copy() for k, v in layer.grads.items()}
    layer.forward(x)
    layer.backward(dout)
    for key in first:
        np.testing.assert_array_equal(layer.grads[key], first[key])


def test_parameters_assigned_in_place_are_used():
    layer = Dense(2, 1, dtype=np.float64)
    layer.params["W"][...] = [[2.0], [3.0]]
    layer.params["b"][...] = [1.0]
    np.testing.assert_array_equal(layer.forward(np.array([[1.0, 1.0]])), [[6.0]])


def test_shapes_and_parameter_layout_follow_the_public_api():
    conv = Conv2D(3, 8, (5, 3), rng=np.random.default_rng(0))
    dense = Dense(10, 4, rng=np.random.default_rng(0))
    assert conv.params["W"].shape == (8, 3, 5, 3) and conv.params["b"].shape == (8,)
    assert dense.params["W"].shape == (10, 4) and dense.params["b"].shape == (4,)
    assert conv.params["W"].dtype == np.float32
    assert set(conv.grads) == set(conv.params) and ReLU().params == {} == ReLU().grads
    assert MaxPool2D(3).stride == 3 and MeanPool2D(3, stride=1).stride == 1
    assert conv.output_shape((3, 12, 9)) == (8, 8, 7)
