"""The speed paths compute the same maths as the general ones.

Each shortcut taken for speed (the max-pooling argmax update, direct writes for
non-overlapping pooling windows, the batch-innermost layout, scratch arrays reused between
calls, matrix products cut into pieces, ReLU run after max pooling, evaluation in chunks) is
checked here against the general code or a loop oracle.
"""

import numpy as np
import pytest

from cnntrain.nn import fast as fn
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.pooling import MaxPool2D, MeanPool2D
from tests.support import oracle


def batch_innermost(a):
    """The same logical (N, C, H, W) array, stored as (C, H, W, N) like the layers' outputs."""
    out = fn._batch_innermost(a.shape, a.dtype)
    out[...] = a
    return out


def with_ties(rng, shape, dtype):
    """Small integers: many windows hold their maximum more than once."""
    return rng.integers(-3, 4, size=shape).astype(dtype)


LAYOUTS = [lambda a: a, batch_innermost, lambda a: np.asfortranarray(a)]


def first_maximum_offsets(x, kernel, stride):
    """argmax by definition: the row-major offset of each window's first maximum (loops)."""
    N, C, H, W = x.shape
    out_h, out_w = (H - kernel) // stride + 1, (W - kernel) // stride + 1
    offsets = np.zeros((N, C, out_h, out_w), dtype=int)
    for n, c, p, q in np.ndindex(offsets.shape):
        window = x[n, c, stride * p:stride * p + kernel, stride * q:stride * q + kernel]
        offsets[n, c, p, q] = int(np.argmax(window))  # np.argmax returns the first maximum
    return offsets


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 3), (3, 2), (2, 1), (17, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", [lambda a: a, lambda a: batch_innermost(a)])
def test_max_pooling_records_the_first_maximum_with_ties_and_any_layout(kernel, stride, dtype,
                                                                        layout):
    # The argmax update is max(argmax, larger * offset) rather than a masked assignment; with
    # many tied windows (small integers) it must still name the first maximum.
    rng = np.random.default_rng(0)
    for x in (with_ties(rng, (3, 2, 19, 18), dtype), rng.standard_normal((3, 2, 19,
                                                                          18)).astype(dtype)):
        x = layout(x)
        y, argmax = fn.maxpool2d(x, kernel, stride)
        assert y.dtype == dtype
        assert argmax.dtype == (np.uint8 if kernel * kernel <= 256 else np.uint16)
        np.testing.assert_array_equal(argmax, first_maximum_offsets(np.asarray(x), kernel, stride))
        np.testing.assert_array_equal(y, oracle.pool_forward(np.asarray(x), kernel, stride, "max"))


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 3), (2, 3), (3, 2)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pooling_backward_routes_like_the_oracle_with_ties_and_any_layout(kernel, stride, layout):
    rng = np.random.default_rng(1)
    x = layout(with_ties(rng, (2, 3, 9, 8), np.float64))
    layer = MaxPool2D(kernel, stride)
    y = layer.forward(x)
    dout = layout(rng.standard_normal(y.shape))
    dx = layer.backward(dout)
    # Overlapping windows add up their routed values, possibly in another order than the oracle.
    np.testing.assert_allclose(dx, oracle.pool_backward(np.asarray(x), np.asarray(dout), kernel,
                                                        stride, "max"),
                               rtol=1e-12, atol=1e-15)
    mean = MeanPool2D(kernel, stride)
    mean.forward(x)
    np.testing.assert_allclose(mean.backward(dout),
                               oracle.pool_backward(np.asarray(x), np.asarray(dout), kernel,
                                                    stride, "mean"),
                               rtol=1e-12, atol=1e-15)


def test_pooling_backward_leaves_no_stale_values_where_no_window_reaches():
    # Floor mode leaves the last row and column out of every window: their gradient is zero,
    # even though dx is allocated uninitialised when windows cover the input exactly.
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((2, 2, 7, 5))
        layer = MaxPool2D(2)
        y = layer.forward(x)
        dx = layer.backward(np.full(y.shape, np.nan))
        assert np.all(dx[:, :, 6, :] == 0) and np.all(dx[:, :, :, 4] == 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_convolution_is_the_same_for_any_input_layout(layout):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    x = rng.standard_normal((5, 3, 9, 8))
    y, _ = fn.conv_forward(layout(x), W, b, stride=2, pad=1)
    np.testing.assert_allclose(y, oracle.conv_forward(x, W, b, 2, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m,k,p", [(6, 25, 100_000), (16, 150, 1001), (3, 4, 7), (1, 1, 1)])
def test_matrix_products_in_pieces_equal_the_whole_products(m, k, p):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, p))
    out = np.empty((m, p))
    np.testing.assert_allclose(fn._matmul_pieces(a, b, out), a @ b, rtol=1e-12, atol=1e-10)
    c = rng.standard_normal((m, p))
    np.testing.assert_allclose(fn._matmul_nt_pieces(c, b), c @ b.T, rtol=1e-12, atol=1e-10)


def conv_step(layer, x, dout):
    y = layer.forward(x)
    dx = layer.backward(dout)
    return y.copy(), dx.copy(), {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("pad", [0, 2])
def test_reused_scratch_arrays_across_steps_with_different_batch_sizes(pad):
    """One layer, called step after step as in training (the last batch of an epoch is
    smaller) with inference passes in between, matches a fresh layer per step."""
    rng = np.random.default_rng(5)
    reused = Conv2D(2, 3, 5, padding=pad, rng=np.random.default_rng(6), dtype=np.float64)
    for n in (4, 4, 3, 4, 1, 4):
        x = rng.standard_normal((n, 2, 9, 9))
        out = reused.output_shape((2, 9, 9))
        dout = rng.standard_normal((n,) + out)
        fresh = Conv2D(2, 3, 5, padding=pad, dtype=np.float64)
        fresh.params["W"][...] = reused.params["W"]
        y_ref, dx_ref, grads_ref = conv_step(fresh, x, dout)

        y = reused.forward(x)
        dx = reused.backward(dout)
        reused.forward(rng.standard_normal((7, 2, 9, 9)), train=False)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        for key in grads_ref:
            np.testing.assert_array_equal(reused.grads[key], grads_ref[key])


def test_outputs_are_not_overwritten_by_later_calls():
    rng = np.random.default_rng(7)
    layer = Conv2D(1, 2, 3, padding=1, rng=rng, dtype=np.float64)
    x1, x2 = rng.standard_normal((2, 2, 1, 6, 6))
    y1 = layer.forward(x1)
    dx1 = layer.backward(np.ones_like(y1))
    kept_y, kept_dx = y1.copy(), dx1.copy()
    layer.forward(x2)
    layer.backward(np.full_like(y1, 2.0))
    np.testing.assert_array_equal(y1, kept_y)
    np.testing.assert_array_equal(dx1, kept_dx)


# --- the network's shortcuts -------------------------------------------------------------

from cnntrain.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from cnntrain.nn.model import build_network  # noqa: E402

LENET5 = ("conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
          "dense 120 / relu / dense 84 / relu / dense 10")


def listed_order_step(net, x, labels):
    """Forward and backward through net.layers in the order they are listed, no shortcut."""
    h = x
    for _, layer in net.layers:
        h = layer.forward(h)
    loss = SoftmaxCrossEntropy()
    loss.forward(h, labels)
    d = loss.backward()
    for _, layer in reversed(net.layers):
        d = layer.backward(d)
    return h, d, {k: v.copy() for k, v in net.grads.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_run_after_max_pooling_gives_identical_numbers(dtype):
    rng = np.random.default_rng(8)
    net = build_network(LENET5, rng=np.random.default_rng(9), dtype=dtype)
    for name, p in net.params.items():
        if name.endswith(".b"):
            p[...] = rng.standard_normal(p.shape)  # some windows entirely negative, some not
    x = rng.standard_normal((6, 1, 28, 28)).astype(dtype)
    labels = rng.integers(0, 10, 6)
    logits_ref, dx_ref, grads_ref = listed_order_step(net, x, labels)

    loss = SoftmaxCrossEntropy()
    logits = net.forward(x)
    loss.forward(logits, labels)
    dx = net.backward(loss.backward(), input_grad=True)
    np.testing.assert_array_equal(logits, logits_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    for name in grads_ref:
        np.testing.assert_array_equal(net.grads[name], grads_ref[name])


def test_evaluation_in_chunks_equals_image_by_image():
    rng = np.random.default_rng(10)
    net = build_network(LENET5, rng=np.random.default_rng(11), dtype=np.float64)
    x = rng.standard_normal((net.EVAL_CHUNK * 2 + 3, 1, 28, 28))
    together = net.forward(x, train=False)
    alone = np.concatenate([net.forward(x[i:i + 1], train=False) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)


def test_consecutive_network_steps_with_changing_batch_sizes_match_fresh_networks():
    """A network reused step after step, with evaluation in between and a short last batch,
    gives the same results as a freshly built network at every step."""
    rng = np.random.default_rng(12)
    net = build_network(LENET5, rng=np.random.default_rng(13), dtype=np.float32)
    for n in (64, 64, 24, 64, 1):
        x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
        labels = rng.integers(0, 10, n)
        fresh = build_network(LENET5, dtype=np.float32)
        fresh.load_params(net.params)
        results = []
        for model in (fresh, net):
            loss = SoftmaxCrossEntropy()
            logits = model.forward(x)
            loss.forward(logits, labels)
            model.backward(loss.backward())
            results.append((logits, {k: v.copy() for k, v in model.grads.items()}))
        (logits_ref, grads_ref), (logits, grads) = results
        np.testing.assert_array_equal(logits, logits_ref)
        for name in grads_ref:
            np.testing.assert_array_equal(grads[name], grads_ref[name])
        net.forward(rng.standard_normal((300, 1, 28, 28)).astype(np.float32), train=False)


def test_float32_training_step_tracks_float64_at_full_batch_size():
    """A whole batch of 64 exercises every shortcut at its real size (conv1's products in
    several pieces, the BLAS row sums): float32 must stay within float32 rounding of float64."""
    rng = np.random.default_rng(14)
    net64 = build_network(LENET5, rng=np.random.default_rng(15), dtype=np.float64)
    net32 = build_network(LENET5, dtype=np.float32)
    net32.load_params({k: v.astype(np.float32) for k, v in net64.params.items()})
    x = rng.standard_normal((64, 1, 28, 28))
    labels = rng.integers(0, 10, 64)
    results = []
    for net, dtype in ((net64, np.float64), (net32, np.float32)):
        loss = SoftmaxCrossEntropy()
        logits = net.forward(x.astype(dtype))
        loss.forward(logits, labels)
        net.backward(loss.backward())
        results.append((logits, net.grads))
    (z64, g64), (z32, g32) = results
    assert z32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    np.testing.assert_allclose(z32, z64, rtol=1e-4, atol=1e-5)
    for name in g64:
        scale = np.abs(g64[name]).max()
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-3, atol=1e-4 * scale, err_msg=name)
