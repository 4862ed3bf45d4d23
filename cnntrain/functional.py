"""Pure array maths of a CNN: every forward and backward equation, each in exactly one place.

No state and no I/O: functions take arrays and return arrays, so each equation can be read,
tested against a naive loop and checked by finite differences on its own.

Shape names: N batch, C input channels, H x W input size, F filters (output channels),
kh x kw kernel size, out_h x out_w output size. Gradients are dout, dx, dW, db.

Layout note. Convolutions are computed as one matrix product over "columns" (im2col). The
columns are ordered (C, kh, kw) x (N, out_h, out_w), so the product W @ cols lands in
(F, N, out_h, out_w) memory order, and the result is returned as an (N, F, out_h, out_w)
*view* of it instead of being copied into NCHW order. Every function here accepts such
views, and backward functions accept deltas in either memory order: the logical shape is
always NCHW. This saves a full copy of every activation in both directions.
"""

import numpy as np


def conv_output_size(size, kernel, stride=1, pad=0):
    """Output length of a 'valid' correlation of a padded axis (PyTorch's floor mode)."""
    return (size + 2 * pad - kernel) // stride + 1


def _window(a, i, j, stride, out_h, out_w):
    """The strided view a[..., i + stride*y, j + stride*x] for y < out_h, x < out_w."""
    return a[..., i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]


def pad2d(x, pad):
    """x: (N, C, H, W) -> (N, C, H + 2*pad, W + 2*pad), zeros around; x itself when pad is 0."""
    if pad == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    return xp


def im2col(x, kh, kw, stride=1, pad=0):
    """Unfold every kh x kw patch of the padded input into a column.

    x: (N, C, H, W) -> cols: (C*kh*kw, N*out_h*out_w), with
    cols[(c, i, j), (n, y, x)] = x_padded[n, c, stride*y + i, stride*x + j].

    Built with one vectorised slice copy per kernel offset (kh*kw copies), never a loop over
    pixels or images.
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(W, kw, stride, pad)
    xp = pad2d(x, pad).transpose(1, 0, 2, 3)  # (C, N, H+2p, W+2p) view
    cols = np.empty((C, kh, kw, N, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = _window(xp, i, j, stride, out_h, out_w)
    return cols.reshape(C * kh * kw, N * out_h * out_w)


def col2im(dcols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: add every column back onto the patch it came from.

    dcols: (C*kh*kw, N*out_h*out_w) -> dx: (N, C, H, W). Overlapping patches add up; the
    padding border is cropped off. One vectorised slice add per kernel offset.
    """
    N, C, H, W = x_shape
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(W, kw, stride, pad)
    dcols = dcols.reshape(C, kh, kw, N, out_h, out_w)
    dxp = np.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(dxp, i, j, stride, out_h, out_w)[...] += dcols[:, i, j]
    dx = dxp[:, :, pad:pad + H, pad:pad + W].transpose(1, 0, 2, 3)
    assert dx.shape == tuple(x_shape)
    return dx


def _as_filter_rows(dout):
    """dout: (N, F, out_h, out_w) -> (F, N*out_h*out_w), a view when dout is in FNHW memory."""
    N, F, out_h, out_w = dout.shape
    return dout.transpose(1, 0, 2, 3).reshape(F, N * out_h * out_w)


def correlate2d(x, W, b, stride=1, pad=0):
    """Forward convolution, which is cross-correlation (the kernel is not flipped).

    y[n, f, p, q] = b[f] + sum_{c, i, j} W[f, c, i, j] * x_padded[n, c, stride*p + i, stride*q + j]

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) -> y: (N, F, out_h, out_w), cols.
    cols (see im2col) is the input unfolded; backward needs it for the kernel gradient.
    """
    N, C, H, Wd = x.shape
    F, C_w, kh, kw = W.shape
    assert C == C_w, f"input has {C} channels, kernels expect {C_w}"
    cols = im2col(x, kh, kw, stride, pad)
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(Wd, kw, stride, pad)
    y = W.reshape(F, C * kh * kw) @ cols
    y += b[:, None]
    y = y.reshape(F, N, out_h, out_w).transpose(1, 0, 2, 3)
    assert y.shape == (N, F, out_h, out_w)
    return y, cols


def convolve2d_full(dout, W, x_shape, stride=1, pad=0):
    """The delta handed to the layer below: the 'full' convolution of the delta with the kernels.

    dx[n, c] = sum_f full_convolution(dout[n, f], W[f, c]), i.e. the correlation of the
    zero-padded (and, for stride > 1, zero-dilated) delta with each kernel rotated 180
    degrees, summed over the output channels f, then cropped by the forward padding.

    Computed in its scatter form: every output position sends W[f, c, i, j] * dout back to
    the input pixel it read, via one matrix product and col2im.

    dout: (N, F, out_h, out_w), W: (F, C, kh, kw) -> dx: (N, C, H, W) with x_shape = (N, C, H, W).
    """
    F, C, kh, kw = W.shape
    dcols = W.reshape(F, C * kh * kw).T @ _as_filter_rows(dout)
    return col2im(dcols, x_shape, kh, kw, stride, pad)


def correlate2d_valid(cols, dout, kernel_shape):
    """The kernel gradient: the 'valid' correlation of the layer's input with its delta.

    dW[f, c, i, j] = sum_{n, p, q} x_padded[n, c, stride*p + i, stride*q + j] * dout[n, f, p, q]

    cols: (C*kh*kw, N*out_h*out_w), the input unfolded by the forward pass;
    dout: (N, F, out_h, out_w) -> dW: (F, C, kh, kw).
    """
    dW = (_as_filter_rows(dout) @ cols.T).reshape(kernel_shape)
    return dW


def bias_gradient(dout):
    """The bias gradient is the sum of the delta over N, out_h, out_w.

    dout: (N, F, out_h, out_w) -> db: (F,)
    """
    return _as_filter_rows(dout).sum(axis=1)


def maxpool2d(x, kernel, stride):
    """Max pooling, floor mode: each output is the largest value of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w) uint8 or uint16,
    where argmax is the row-major offset i*kernel + j of the window's *first* maximum.
    One vectorised comparison per window offset; windows may overlap (stride < kernel).
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kernel, stride)
    out_w = conv_output_size(W, kernel, stride)
    y = _window(x, 0, 0, stride, out_h, out_w).copy()
    argmax = np.zeros(y.shape, dtype=np.uint8 if kernel * kernel <= 256 else np.uint16)
    for offset in range(1, kernel * kernel):
        candidate = _window(x, offset // kernel, offset % kernel, stride, out_h, out_w)
        # Strictly greater, so a later equal value never displaces the first maximum.
        larger = candidate > y
        np.copyto(y, candidate, where=larger)
        argmax[larger] = offset
    return y, argmax


def maxpool2d_backward(dout, argmax, x_shape, kernel, stride):
    """Upsample a max-pooled delta: each value goes to the position of its window's maximum
    (recorded by the forward pass); every other position of the window gets zero.

    dout: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w) -> dx: (N, C, H, W)
    """
    out_h, out_w = dout.shape[2:]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for offset in range(kernel * kernel):
        routed = np.where(argmax == offset, dout, 0)
        _window(dx, offset // kernel, offset % kernel, stride, out_h, out_w)[...] += routed
    return dx


def meanpool2d(x, kernel, stride):
    """Mean pooling, floor mode: each output is the average of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w)
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kernel, stride)
    out_w = conv_output_size(W, kernel, stride)
    y = _window(x, 0, 0, stride, out_h, out_w).copy()
    for offset in range(1, kernel * kernel):
        y += _window(x, offset // kernel, offset % kernel, stride, out_h, out_w)
    y *= y.dtype.type(1.0 / (kernel * kernel))
    return y


def meanpool2d_backward(dout, x_shape, kernel, stride):
    """Upsample a mean-pooled delta: each value is spread over its window, divided by the
    window's area (kernel * kernel).

    dout: (N, C, out_h, out_w) -> dx: (N, C, H, W)
    """
    out_h, out_w = dout.shape[2:]
    share = dout * dout.dtype.type(1.0 / (kernel * kernel))
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for offset in range(kernel * kernel):
        _window(dx, offset // kernel, offset % kernel, stride, out_h, out_w)[...] += share
    return dx


def relu(x):
    """max(x, 0), elementwise."""
    return np.maximum(x, 0)


def relu_backward(dout, y):
    """Multiply the delta by ReLU's derivative, 1 where the output was positive, else 0.

    Uses the forward output y (y > 0 exactly where x > 0). dout, y: any shape, equal.
    """
    return dout * (y > 0)


def tanh_backward(dout, y):
    """Multiply the delta by tanh's derivative written with its output: 1 - y**2."""
    return dout * (1 - y * y)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""
    half = x.dtype.type(0.5)
    return half * (1 + np.tanh(half * x))


def sigmoid_backward(dout, y):
    """Multiply the delta by the sigmoid's derivative written with its output: y * (1 - y)."""
    return dout * (y * (1 - y))


def dense(x, W, b):
    """Fully connected layer: y = x @ W + b.

    x: (N, in_features), W: (in_features, out_features), b: (out_features,) -> y: (N, out_features)
    """
    return x @ W + b


def dense_backward(dout, x, W):
    """Gradients of y = x @ W + b.

    dout: (N, out_features) -> dx: (N, in_features) = dout @ W.T,
    dW: (in_features, out_features) = x.T @ dout, db: (out_features,) = dout summed over N.
    """
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def log_softmax(z):
    """log(softmax(z)) along the last axis, stable for logits of any size.

    z: (N, K) -> (N, K). Subtracting each row's maximum first keeps exp from overflowing.
    """
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z):
    """softmax(z) along the last axis. z: (N, K) -> probabilities (N, K), rows sum to 1."""
    return np.exp(log_softmax(z))


def cross_entropy(log_probs, labels):
    """Mean negative log-likelihood of the true classes. log_probs: (N, K), labels: (N,) -> float."""
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def softmax_cross_entropy_backward(probs, labels):
    """The output delta of softmax + cross-entropy: (softmax(z) - onehot(y)) / N.

    The division by the batch size N happens here, once, and nowhere else.
    probs: (N, K), labels: (N,) -> dz: (N, K)
    """
    N = len(labels)
    dz = probs.copy()
    dz[np.arange(N), labels] -= 1
    dz *= dz.dtype.type(1.0 / N)
    return dz
