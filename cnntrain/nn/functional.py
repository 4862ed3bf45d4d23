"""The reference kernels: every forward and backward equation of a CNN, each in one plain function.

No state and no I/O: functions take NCHW arrays and return arrays, so each equation can be
read beside the README's map of the maths, tested against a loop oracle and checked by finite
differences on its own. `[train] kernels = reference` trains with these; the default,
`kernels = fast`, runs cnntrain.nn.fast, which computes the same equations with the same
signatures, rearranged for speed (and binds by name the functions it does not speed up).

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

    cols: (N*out_h*out_w, C*kh*kw) from conv_forward; dout: (N, F, out_h, out_w)
    -> dW: (F, C, kh, kw).
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


# --- dropout ------------------------------------------------------------------------------

def dropout_mask(shape, p, rng, dtype=np.float32):
    """Inverted dropout's mask: each unit is dropped with probability p, and the kept ones are
    scaled by 1 / (1 - p), so that the expected output equals the input and evaluation needs
    no rescaling (there dropout is the identity).

    shape: the input's shape, e.g. (N, D) or (N, C, H, W) -> mask: that shape, holding 0 or
    1 / (1 - p). Draws shape-many uniform numbers from rng (a numpy Generator).
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = rng.random(shape, dtype=np.float32) >= p
    return keep * np.asarray(1 / (1 - p), dtype=dtype)


def dropout(x, mask):
    """y = x * mask, with mask from dropout_mask. x: any shape -> y: the same shape."""
    return x * mask


def dropout_backward(dout, mask):
    """dx = dout * mask: a dropped unit passes no gradient, a kept one its delta scaled by
    1 / (1 - p), the same factor as forward. dout: any shape -> dx: the same shape."""
    return dout * mask


# --- batch normalisation: statistics per channel over (N, H, W) of (N, C, H, W), or over N
# of (N, C); m is the number of values each is taken over, N*H*W or N ------------------------

BATCHNORM_MOMENTUM = 0.1  # PyTorch's defaults
BATCHNORM_EPS = 1e-5


def _reduced_axes(x):
    """The axes a statistic is taken over: (0, 2, 3) for (N, C, H, W), (0,) for (N, D)."""
    if x.ndim == 4:
        return (0, 2, 3)
    if x.ndim == 2:
        return (0,)
    raise ValueError(f"batch normalisation takes (N, C, H, W) or (N, D) input, got shape {x.shape}")


def _per_channel(v, x):
    """A (C,) vector shaped to broadcast against x: (1, C, 1, 1) for 4-D x, (1, C) for 2-D."""
    return v.reshape((1, -1, 1, 1) if x.ndim == 4 else (1, -1))


def values_per_channel(x):
    """m, the number of values each channel's statistics are taken over: N*H*W or N."""
    return x.size // x.shape[1]


def batchnorm(x, gamma, beta, eps=BATCHNORM_EPS):
    """Batch normalisation in training: normalise with this batch's own statistics.

        mu    = (1/m) sum x                  per channel, over (N, H, W) or N
        var   = (1/m) sum (x - mu)**2        the biased (population) variance
        x_hat = (x - mu) / sqrt(var + eps)
        y     = gamma * x_hat + beta

    x: (N, C, H, W) or (N, C), gamma, beta: (C,) -> y: like x, and
    cache = (x_hat: like x, inv_std: (C,)) for batchnorm_backward,
    mean: (C,), var: (C,) (biased) for update_running_statistics.
    """
    axes = _reduced_axes(x)
    m = values_per_channel(x)
    if m < 2:
        raise ValueError(f"batch normalisation in training needs more than one value per "
                         f"channel, got input of shape {x.shape}")
    mean = x.mean(axis=axes)
    centred = x - _per_channel(mean, x)
    var = np.mean(centred * centred, axis=axes)
    inv_std = 1 / np.sqrt(var + x.dtype.type(eps))
    x_hat = centred * _per_channel(inv_std, x)
    y = _per_channel(gamma, x) * x_hat + _per_channel(beta, x)
    return y, (x_hat, inv_std), mean, var


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=BATCHNORM_EPS):
    """Batch normalisation in evaluation: the running statistics instead of the batch's, so
    each image's output depends on that image alone.

        y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta

    x: (N, C, H, W) or (N, C), gamma, beta, running_mean, running_var: (C,) -> y: like x.
    """
    _reduced_axes(x)
    scale = gamma / np.sqrt(running_var + x.dtype.type(eps))
    return _per_channel(scale, x) * (x - _per_channel(running_mean, x)) + _per_channel(beta, x)


def update_running_statistics(running_mean, running_var, mean, var, m, momentum=BATCHNORM_MOMENTUM):
    """Move the running statistics towards this batch's, in place (PyTorch's rule):

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    The running variance takes the unbiased batch variance (Bessel's correction, m / (m - 1))
    while the forward pass normalises with the biased one. mean, var (biased): (C,) from
    batchnorm; m: the values per channel. running_mean, running_var: (C,), updated in place.
    """
    unbiased = var * (m / (m - 1))
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * unbiased


def batchnorm_backward(dout, cache, gamma):
    """Gradients of training-mode batch normalisation, in the compact closed form.

    dout: like x, (N, C, H, W) or (N, C); cache = (x_hat, inv_std) from batchnorm;
    gamma: (C,) -> dx: like x, dgamma: (C,), dbeta: (C,).

    Derivation, per channel, along the forward graph (sums run over the m values of a channel,
    xc = x - mu, s = 1 / sqrt(var + eps) = inv_std):

        mu = (1/m) sum x,   xc = x - mu,   var = (1/m) sum xc**2,   s = (var + eps)**(-1/2),
        x_hat = xc * s,   y = gamma * x_hat + beta

    Walking it backwards, each node's gradient from the ones after it:

      1. y = gamma * x_hat + beta:
             dbeta = sum dout,   dgamma = sum dout * x_hat,   dx_hat = gamma * dout
      2. x_hat = xc * s, where xc reaches the loss directly and through s:
             ds = sum dx_hat * xc,   dxc (direct) = dx_hat * s
      3. s = (var + eps)**(-1/2):
             dvar = ds * (-1/2) * (var + eps)**(-3/2) = -(1/2) * s**3 * sum dx_hat * xc
      4. var = (1/m) sum xc**2 adds to xc's gradient:
             dxc = dx_hat * s + (2/m) * xc * dvar
      5. xc = x - mu, mu = (1/m) sum x: x reaches xc directly and through mu:
             dx = dxc - (1/m) sum dxc

    Simplify. Since sum xc = 0, sum dxc = s * sum dx_hat. Substituting xc = x_hat / s in
    step 4's second term: (2/m) * xc * dvar = -(1/m) * s * x_hat * sum(dx_hat * x_hat). So

        dx = (s / m) * (m * dx_hat - sum dx_hat - x_hat * sum(dx_hat * x_hat))

    and with dx_hat = gamma * dout, the two sums are exactly dbeta and dgamma of step 1:

        dx = (gamma * s / m) * (m * dout - dbeta - x_hat * dgamma)

    Three reductions over the batch in all, none of them a second pass through mu or var.
    """
    x_hat, inv_std = cache
    axes = _reduced_axes(dout)
    m = values_per_channel(dout)
    dbeta = dout.sum(axis=axes)
    dgamma = np.sum(dout * x_hat, axis=axes)
    scale = gamma * inv_std / dout.dtype.type(m)
    dx = _per_channel(scale, dout) * (
        m * dout - _per_channel(dbeta, dout) - x_hat * _per_channel(dgamma, dout))
    return dx, dgamma, dbeta


def batchnorm_eval_backward(dout, x, gamma, running_mean, running_var, eps=BATCHNORM_EPS):
    """Gradients of evaluation-mode batch normalisation (batchnorm_inference), where the
    statistics are constants, so nothing flows back through them:

        x_hat = (x - running_mean) / sqrt(running_var + eps)
        dx = dout * gamma / sqrt(running_var + eps),   dgamma = sum dout * x_hat,   dbeta = sum dout

    dout, x: (N, C, H, W) or (N, C); gamma, running_mean, running_var: (C,)
    -> dx: like x, dgamma: (C,), dbeta: (C,).
    """
    axes = _reduced_axes(dout)
    inv_std = 1 / np.sqrt(running_var + dout.dtype.type(eps))
    x_hat = (x - _per_channel(running_mean, x)) * _per_channel(inv_std, x)
    dx = dout * _per_channel(gamma * inv_std, dout)
    return dx, np.sum(dout * x_hat, axis=axes), dout.sum(axis=axes)


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


def cross_entropy(log_probs, labels, smoothing=0.0):
    """Mean cross-entropy of the predicted distribution against the target distribution
    t = (1 - smoothing) * onehot(y) + smoothing / K, which is onehot(y) by default:
    -mean_n sum_k t[n, k] * log_probs[n, k].

    log_probs: (N, K), labels: (N,) -> float. With smoothing > 0 the target keeps some
    probability on every class, so the loss stops rewarding ever larger logits
    (label smoothing, Szegedy et al. 2016).
    """
    true_class = log_probs[np.arange(len(labels)), labels].mean()
    if not smoothing:
        return float(-true_class)
    K = log_probs.shape[1]
    every_class = log_probs.sum(axis=1).mean() / K
    return float(-((1 - smoothing) * true_class + smoothing * every_class))


def softmax_cross_entropy_backward(probs, labels, smoothing=0.0):
    """The output delta of softmax + cross-entropy: (softmax(z) - t) / N, with t the target
    distribution of `cross_entropy`: onehot(y) by default, (1 - smoothing) * onehot(y) +
    smoothing / K with label smoothing.

    The division by the batch size N happens here, once, and nowhere else.
    probs: (N, K), labels: (N,) -> dz: (N, K)
    """
    N, K = probs.shape
    dz = probs.copy()
    dz[np.arange(N), labels] -= 1 - smoothing
    if smoothing:
        dz -= dz.dtype.type(smoothing / K)
    dz *= dz.dtype.type(1.0 / N)
    return dz
