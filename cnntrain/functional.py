"""The textbook maths of a CNN: every forward and backward equation, each in one plain function.

No state and no I/O: functions take NCHW arrays and return arrays, so each equation can be
read beside the README's table, tested against a loop oracle and checked by finite
differences on its own. `[train] kernels = reference` trains with these; the default,
`kernels = fast`, runs cnntrain.fast, which computes the same equations with the same
signatures, rearranged for speed (and takes the functions it does not speed up from here).

Shape names: N batch, C input channels, H x W input size, F filters (output channels),
kh x kw kernel size, out_h x out_w output size. Gradients are dout, dx, dW, db.

The `work` argument of the convolutions is the fast path's scratch space; it is accepted
and ignored here, so that both modules can be called the same way.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv_output_size(size, kernel, stride=1, pad=0):
    """Output length of a 'valid' correlation of a padded axis (PyTorch's floor mode)."""
    return (size + 2 * pad - kernel) // stride + 1


def _strided(start, stride, count):
    """The slice start, start + stride, ..., count positions in all."""
    return slice(start, start + stride * (count - 1) + 1, stride)


# --- convolution --------------------------------------------------------------------------

def im2col(x, kh, kw, stride=1, pad=0):
    """Every kh x kw patch of the zero-padded input, flattened into one row per output position.

    x: (N, C, H, W) -> cols: (N*out_h*out_w, C*kh*kw), with
    cols[(n, p, q), (c, i, j)] = x_padded[n, c, stride*p + i, stride*q + j].
    """
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    N, C, out_h, out_w = windows.shape[:4]  # windows: (N, C, out_h, out_w, kh, kw)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(N * out_h * out_w, C * kh * kw)


def col2im(dcols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: add every row back onto the patch it came from.

    dcols: (N*out_h*out_w, C*kh*kw) -> dx: (N, C, H, W). Overlapping patches add up; the
    padding border is cropped off.
    """
    N, C, H, W = x_shape
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(W, kw, stride, pad)
    patches = dcols.reshape(N, out_h, out_w, C, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, _strided(i, stride, out_h), _strided(j, stride, out_w)] += patches[..., i, j]
    return dxp[:, :, pad:pad + H, pad:pad + W]


def conv_forward(x, W, b, stride=1, pad=0, work=None):
    """Forward convolution, which is cross-correlation (the kernel is not flipped).

    y[n, f, p, q] = b[f] + sum_{c, i, j} W[f, c, i, j] * x_padded[n, c, stride*p + i, stride*q + j]

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) -> y: (N, F, out_h, out_w), cols.
    cols (see im2col) is the input unfolded; the kernel gradient needs it.
    """
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    cols = im2col(x, kh, kw, stride, pad)
    y = cols @ W.reshape(F, -1).T + b                     # (N*out_h*out_w, F)
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(Wd, kw, stride, pad)
    return y.reshape(N, out_h, out_w, F).transpose(0, 3, 1, 2), cols


def _rows(dout):
    """dout: (N, F, out_h, out_w) -> (N*out_h*out_w, F), one row per output position."""
    return dout.transpose(0, 2, 3, 1).reshape(-1, dout.shape[1])


def conv_input_grad(dout, W, x_shape, stride=1, pad=0, work=None):
    """The delta handed to the layer below: the 'full' convolution of the delta with the kernels.

    dx[n, c] = sum_f full_convolution(dout[n, f], W[f, c]), i.e. the correlation of the
    zero-padded (and, for stride > 1, zero-dilated) delta with each kernel rotated 180
    degrees, summed over the output channels f, then cropped by the forward padding.
    Computed in its scatter form: each output position sends dout @ W back to its patch.

    dout: (N, F, out_h, out_w), W: (F, C, kh, kw) -> dx: (N, C, H, W) with x_shape = (N, C, H, W).
    """
    F, C, kh, kw = W.shape
    dcols = _rows(dout) @ W.reshape(F, -1)                # (N*out_h*out_w, C*kh*kw)
    return col2im(dcols, x_shape, kh, kw, stride, pad)


def conv_kernel_grad(cols, dout, kernel_shape):
    """The kernel gradient: the 'valid' correlation of the layer's input with its delta.

    dW[f, c, i, j] = sum_{n, p, q} x_padded[n, c, stride*p + i, stride*q + j] * dout[n, f, p, q]

    cols: (N*out_h*out_w, C*kh*kw) from conv_forward; dout: (N, F, out_h, out_w) -> dW: (F, C, kh, kw).
    """
    return (_rows(dout).T @ cols).reshape(kernel_shape)


def conv_bias_grad(dout):
    """The bias gradient: the sum of the delta over N, out_h, out_w.

    dout: (N, F, out_h, out_w) -> db: (F,)
    """
    return dout.sum(axis=(0, 2, 3))


# --- pooling ------------------------------------------------------------------------------

def _pool_windows(x, kernel, stride):
    """x: (N, C, H, W) -> its windows (N, C, out_h, out_w, kernel*kernel), floor mode (a view)."""
    windows = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.reshape(windows.shape[:4] + (kernel * kernel,))


def maxpool2d(x, kernel, stride):
    """Max pooling, floor mode: each output is the largest value of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w), the row-major
    offset i*kernel + j of each window's *first* maximum.
    """
    windows = _pool_windows(x, kernel, stride)
    return windows.max(axis=-1), windows.argmax(axis=-1)


def maxpool2d_backward(dout, argmax, x_shape, kernel, stride):
    """Upsample a max-pooled delta: each value goes to the position of its window's maximum;
    every other position of the window gets zero (overlapping windows add up).

    dout: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w) -> dx: (N, C, H, W)
    """
    out_h, out_w = dout.shape[2:]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(kernel):
        for j in range(kernel):
            routed = dout * (argmax == i * kernel + j)
            dx[:, :, _strided(i, stride, out_h), _strided(j, stride, out_w)] += routed
    return dx


def meanpool2d(x, kernel, stride):
    """Mean pooling, floor mode: each output is the average of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w)
    """
    return _pool_windows(x, kernel, stride).mean(axis=-1)


def meanpool2d_backward(dout, x_shape, kernel, stride):
    """Upsample a mean-pooled delta: each value is spread over its window, divided by the
    window's area (overlapping windows add up).

    dout: (N, C, out_h, out_w) -> dx: (N, C, H, W)
    """
    out_h, out_w = dout.shape[2:]
    share = dout / (kernel * kernel)
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(kernel):
        for j in range(kernel):
            dx[:, :, _strided(i, stride, out_h), _strided(j, stride, out_w)] += share
    return dx


# --- activations: each backward multiplies the delta by f', written with the output y ------

def relu(x):
    """max(x, 0), elementwise."""
    return np.maximum(x, 0)


def relu_backward(dout, y):
    """dout * relu'(x): 1 where the output is positive (exactly where x > 0), else 0."""
    return dout * (y > 0)


def tanh(x):
    """tanh(x), elementwise."""
    return np.tanh(x)


def tanh_backward(dout, y):
    """dout * tanh'(x), with tanh' = 1 - y**2."""
    return dout * (1 - y * y)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""
    half = x.dtype.type(0.5)
    return half * (1 + np.tanh(half * x))


def sigmoid_backward(dout, y):
    """dout * sigmoid'(x), with sigmoid' = y * (1 - y)."""
    return dout * (y * (1 - y))


# --- fully connected ----------------------------------------------------------------------

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


# --- the loss -----------------------------------------------------------------------------

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
