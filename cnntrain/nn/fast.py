"""The fast kernels: the maths of cnntrain.nn.functional rearranged for speed, same signatures.

`[train] kernels = fast` (the default) runs these; `kernels = reference` runs the reference
kernels of cnntrain.nn.functional. Every function here computes the same equation as the
function of the same name there, and tests/nn/test_kernels.py checks each pair against each
other (bit for bit where the arithmetic is the same) and both against loop oracles, finite
differences and PyTorch. A kernel this module has no faster version of is bound by name to
the reference one at the end of the module (`relu = functional.relu`, with why), so every
call a layer makes can be followed to its equation; a new layer's maths needs one such line.

Shape names: N batch, C input channels, H x W input size, F filters (output channels),
kh x kw kernel size, out_h x out_w output size. Gradients are dout, dx, dW, db.

Layout note. Convolutions are computed as one matrix product over "columns" (im2col). The
columns are ordered (C, kh, kw) x (out_h, out_w, N), images varying fastest, so the product
W @ cols lands in (F, out_h, out_w, N) memory order, and the result is returned as an
(N, F, out_h, out_w) *view* of it instead of being copied into NCHW order. The logical
shape is always NCHW and every function here accepts any memory order, but this one, with
the batch innermost, is what makes the slice copies of im2col, col2im and pooling fast: a
window row of W positions is one contiguous run of W*N numbers instead of N runs of W, and
NumPy pays per run. It also makes flattening free (see Flatten) and saves a transposing copy
of every activation in both directions.

Speed without changing the maths. Scratch arrays (the padded input, the columns) can be
kept by the caller in a `work` dict and are then reused from call to call; what a function
returns to its caller is always a fresh array, except `cols`, which the caller keeps only
until the matching backward.
"""

import math

import numpy as np

from cnntrain.nn import functional

# OpenBLAS (0.3.x, x86-64) computes a product with M*N*K <= 1e6 by kernels that read the operands
# where they lie; bigger products are first copied into packed panels. When the other operand is
# tiny (conv1's 6 x 25 kernels) each packed number takes part in only a few multiply-adds, and the
# copy costs more than the arithmetic (docs/speed.md says how this is measured). So such products
# are cut along their long side into pieces below that size (_matmul_pieces); products with a bigger
# small operand (conv2's 16 x 150) are left whole, where OpenBLAS can also use several threads. The
# pieces depend on the shapes only, never on the data or the machine.
GEMM_PIECE = 1_000_000
GEMM_PIECE_MAX_SMALL = 1000  # cut into pieces only if the small operand has fewer entries


def _offset_slices(i, j, stride, out_h, out_w):
    """The slices that pick rows i + stride*y (y < out_h) and columns j + stride*x (x < out_w)."""
    return (slice(i, i + stride * (out_h - 1) + 1, stride),
            slice(j, j + stride * (out_w - 1) + 1, stride))


def _window(a, i, j, stride, out_h, out_w):
    """The strided view a[..., i + stride*y, j + stride*x] for y < out_h, x < out_w."""
    return a[(Ellipsis,) + _offset_slices(i, j, stride, out_h, out_w)]


def _buffer(work, name, shape, dtype, zeros=False):
    """A scratch array kept in the caller's `work` dict (a new one when work is None).

    Reused from call to call, so a training step does not allocate, zero and fault in the
    same large arrays again; its memory only grows, so a smaller batch (the last of an epoch)
    reuses it too. With zeros=True the array starts zeroed, and the caller relies on the
    parts it never writes staying zero (they are zeroed again whenever the shape changes).
    """
    shape, size = tuple(shape), math.prod(shape)
    if work is None:
        return (np.zeros if zeros else np.empty)(shape, dtype=dtype)
    memory, last_shape = work.get(name, (None, None))
    if memory is None or memory.dtype != dtype or memory.size < size:
        memory = (np.zeros if zeros else np.empty)(size, dtype=dtype)
        last_shape = shape
    buf = memory[:size].reshape(shape)
    if last_shape != shape and zeros:
        buf[...] = 0
    work[name] = (memory, shape)
    return buf


def _batch_innermost(shape, dtype, work=None, name=None, zeros=False):
    """An (N, C, H, W) array stored as (C, H, W, N) in memory (the layout note above)."""
    N, C, H, W = shape
    return _buffer(work, name, (C, H, W, N), dtype, zeros).transpose(3, 0, 1, 2)


def _pad2d(x, pad, work=None):
    """x: (N, C, H, W) -> (N, C, H + 2*pad, W + 2*pad), zeros around; x itself when pad is 0.

    The padded copy is stored batch-innermost; with a work dict it is reused, and only its
    interior is rewritten (the border stays zero).
    """
    if pad == 0:
        return x
    N, C, H, W = x.shape
    xp = _batch_innermost((N, C, H + 2 * pad, W + 2 * pad), x.dtype, work, "padded", zeros=True)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    return xp


def _im2col(x, kh, kw, stride=1, pad=0, work=None):
    """Unfold every kh x kw patch of the padded input into a column.

    x: (N, C, H, W) -> cols: (C*kh*kw, out_h*out_w*N), with
    cols[(c, i, j), (y, x, n)] = x_padded[n, c, stride*y + i, stride*x + j].

    Built with one vectorised slice copy per kernel offset (kh*kw copies), never a loop over
    pixels or images. With a work dict, cols is a buffer reused by the next call.
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(W, kw, stride, pad)
    xp = _pad2d(x, pad, work).transpose(1, 2, 3, 0)  # (C, H + 2*pad, W + 2*pad, N) view
    cols = _buffer(work, "cols", (C, kh, kw, out_h, out_w, N), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, out_h, out_w)
            cols[:, i, j] = xp[:, rows, columns]
    return cols.reshape(C * kh * kw, out_h * out_w * N)


def _col2im(dcols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of im2col: add every column back onto the patch it came from.

    dcols: (C*kh*kw, out_h*out_w*N) -> dx: (N, C, H, W), stored batch-innermost.
    Overlapping patches add up; the padding border is cropped off. One vectorised slice add
    per kernel offset.
    """
    N, C, H, W = x_shape
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(W, kw, stride, pad)
    dcols = dcols.reshape(C, kh, kw, out_h, out_w, N)
    dxp = np.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, out_h, out_w)
            dxp[:, rows, columns] += dcols[:, i, j]
    dx = dxp[:, pad:pad + H, pad:pad + W].transpose(3, 0, 1, 2)  # (N, C, H, W) view
    assert dx.shape == tuple(x_shape)
    return dx


def _as_filter_rows(dout):
    """dout: (N, F, out_h, out_w) -> (F, out_h*out_w*N), a view when dout is batch-innermost."""
    N, F, out_h, out_w = dout.shape
    return dout.transpose(1, 2, 3, 0).reshape(F, out_h * out_w * N)


def _matmul_pieces(a, b, out):
    """out = a @ b for a short, wide b, over pieces of b's columns when a is tiny (see GEMM_PIECE).

    a: (M, K), b: (K, P) -> out: (M, P)
    """
    small = a.shape[0] * a.shape[1]
    step = GEMM_PIECE // small if small < GEMM_PIECE_MAX_SMALL else max(1, b.shape[1])
    for start in range(0, b.shape[1], step):
        np.matmul(a, b[:, start:start + step], out=out[:, start:start + step])
    return out


def _matmul_nt_pieces(a, b):
    """a @ b.T for two short, wide matrices; when the result is tiny (see GEMM_PIECE), the sum
    over their long shared axis is taken over pieces of it, added up in order.

    a: (M, P), b: (K, P) -> (M, K)
    """
    small = a.shape[0] * b.shape[0]
    if small >= GEMM_PIECE_MAX_SMALL:
        return a @ b.T
    step = GEMM_PIECE // small
    out = a[:, :step] @ b[:, :step].T
    part = np.empty_like(out)
    for start in range(step, a.shape[1], step):
        np.matmul(a[:, start:start + step], b[:, start:start + step].T, out=part)
        out += part
    return out


def conv_forward(x, W, b, stride=1, pad=0, work=None):
    """Forward convolution, which is cross-correlation (the kernel is not flipped).

    y[n, f, p, q] = b[f] + sum_{c, i, j} W[f, c, i, j] * x_padded[n, c, stride*p + i, stride*q + j]

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) -> y: (N, F, out_h, out_w), cols.
    cols (see im2col) is the input unfolded; backward needs it for the kernel gradient.
    With a work dict, cols is a buffer the next call with the same dict overwrites.
    """
    N, C, H, Wd = x.shape
    F, C_w, kh, kw = W.shape
    assert C == C_w, f"input has {C} channels, kernels expect {C_w}"
    cols = _im2col(x, kh, kw, stride, pad, work)
    out_h = conv_output_size(H, kh, stride, pad)
    out_w = conv_output_size(Wd, kw, stride, pad)
    y = np.empty((F, out_h * out_w * N), dtype=x.dtype)
    _matmul_pieces(W.reshape(F, C * kh * kw), cols, out=y)
    y += b[:, None]
    y = y.reshape(F, out_h, out_w, N).transpose(3, 0, 1, 2)
    assert y.shape == (N, F, out_h, out_w)
    return y, cols


def conv_input_grad(dout, W, x_shape, stride=1, pad=0, work=None):
    """The delta handed to the layer below: the 'full' convolution of the delta with the kernels.

    dx[n, c] = sum_f full_convolution(dout[n, f], W[f, c]), i.e. the correlation of the
    zero-padded (and, for stride > 1, zero-dilated) delta with each kernel rotated 180
    degrees, summed over the output channels f, then cropped by the forward padding.

    Computed in its scatter form: every output position sends W[f, c, i, j] * dout back to
    the input pixel it read, via one matrix product and col2im.

    dout: (N, F, out_h, out_w), W: (F, C, kh, kw) -> dx: (N, C, H, W) with x_shape = (N, C, H, W).
    """
    F, C, kh, kw = W.shape
    rows = _as_filter_rows(dout)
    dcols = _buffer(work, "dcols", (C * kh * kw, rows.shape[1]), dout.dtype)
    _matmul_pieces(W.reshape(F, C * kh * kw).T, rows, out=dcols)
    return _col2im(dcols, x_shape, kh, kw, stride, pad)


def conv_kernel_grad(cols, dout, kernel_shape):
    """The kernel gradient: the 'valid' correlation of the layer's input with its delta.

    dW[f, c, i, j] = sum_{n, p, q} x_padded[n, c, stride*p + i, stride*q + j] * dout[n, f, p, q]

    cols: (C*kh*kw, out_h*out_w*N), the input unfolded by the forward pass;
    dout: (N, F, out_h, out_w) -> dW: (F, C, kh, kw).
    """
    # Computed as its transpose, cols @ rows.T: OpenBLAS handles this orientation of these
    # tall, thin shapes better.
    dW_transposed = _matmul_nt_pieces(cols, _as_filter_rows(dout))
    return dW_transposed.T.reshape(kernel_shape)


def conv_bias_grad(dout):
    """The bias gradient is the sum of the delta over N, out_h, out_w.

    dout: (N, F, out_h, out_w) -> db: (F,)
    """
    rows = _as_filter_rows(dout)
    # The row sums as a product with a vector of ones: BLAS sums these long rows faster than
    # ndarray.sum, and about as accurately (not bit for bit: the reference kernel uses sum).
    return rows @ np.ones(rows.shape[1], dtype=rows.dtype)


def _empty_like_layout(shape, like, dtype):
    """An uninitialised array of `shape` whose axes lie in memory in the same order as those of
    `like` (for example the batch-innermost maps of the convolutions), so that the layer
    reading it next finds the layout it expects and need not make a transposed copy."""
    order = sorted(range(len(shape)), key=lambda axis: -like.strides[axis])
    base = np.empty([shape[axis] for axis in order], dtype=dtype)
    return base.transpose([order.index(axis) for axis in range(len(shape))])


def maxpool2d(x, kernel, stride):
    """Max pooling, floor mode: each output is the largest value of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w) uint8 or uint16,
    where argmax is the row-major offset i*kernel + j of the window's *first* maximum.
    One vectorised comparison per window offset; windows may overlap (stride < kernel).
    y and argmax are laid out in memory like x.
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kernel, stride)
    out_w = conv_output_size(W, kernel, stride)
    y = _window(x, 0, 0, stride, out_h, out_w).copy(order="K")
    argmax = np.zeros_like(y, dtype=np.uint8 if kernel * kernel <= 256 else np.uint16)
    for offset in range(1, kernel * kernel):
        candidate = _window(x, offset // kernel, offset % kernel, stride, out_h, out_w)
        # Strictly greater, so a later equal value never displaces the first maximum.
        larger = np.greater(candidate, y)
        np.maximum(y, candidate, out=y)
        # argmax = offset where larger, else unchanged. Offsets come in increasing order, so
        # that is max(argmax, larger * offset): one fast element-wise maximum instead of a
        # masked assignment, which NumPy does much more slowly.
        np.maximum(argmax, larger.view(np.uint8) * argmax.dtype.type(offset), out=argmax)
    return y, argmax


def maxpool2d_backward(dout, argmax, x_shape, kernel, stride):
    """Upsample a max-pooled delta: each value goes to the position of its window's maximum
    (recorded by the forward pass); every other position of the window gets zero.

    dout: (N, C, out_h, out_w), argmax: (N, C, out_h, out_w) -> dx: (N, C, H, W), laid out in
    memory like argmax (that is, like the forward input).
    """
    out_h, out_w = dout.shape[2:]
    dx, overlapping = _upsampling_target(x_shape, argmax, kernel, stride, dout.dtype)
    for offset in range(kernel * kernel):
        target = _window(dx, offset // kernel, offset % kernel, stride, out_h, out_w)
        if overlapping:
            target += dout * (argmax == offset)
        else:
            np.multiply(dout, argmax == offset, out=target)
    return dx


def _upsampling_target(x_shape, like, kernel, stride, dtype):
    """The dx that pooling backward fills, and whether its windows overlap.

    Windows that do not overlap (stride >= kernel) receive each element at most once, so
    their values are written directly rather than added; dx then needs zeros first only
    where no window reaches (gaps, or rows and columns left over by floor mode).
    """
    N, C, H, W = x_shape
    overlapping = stride < kernel
    covered = stride == kernel and H % kernel == 0 and W % kernel == 0
    dx = _empty_like_layout(x_shape, like, dtype)
    if not covered:
        dx[...] = 0
    return dx, overlapping


def meanpool2d(x, kernel, stride):
    """Mean pooling, floor mode: each output is the average of its window.

    x: (N, C, H, W) -> y: (N, C, out_h, out_w), laid out in memory like x.
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, kernel, stride)
    out_w = conv_output_size(W, kernel, stride)
    y = _window(x, 0, 0, stride, out_h, out_w).copy(order="K")
    for offset in range(1, kernel * kernel):
        y += _window(x, offset // kernel, offset % kernel, stride, out_h, out_w)
    y *= y.dtype.type(1.0 / (kernel * kernel))
    return y


def meanpool2d_backward(dout, x_shape, kernel, stride):
    """Upsample a mean-pooled delta: each value is spread over its window, divided by the
    window's area (kernel * kernel).

    dout: (N, C, out_h, out_w) -> dx: (N, C, H, W), laid out in memory like dout.
    """
    out_h, out_w = dout.shape[2:]
    share = dout * dout.dtype.type(1.0 / (kernel * kernel))
    dx, overlapping = _upsampling_target(x_shape, share, kernel, stride, dout.dtype)
    for offset in range(kernel * kernel):
        target = _window(dx, offset // kernel, offset % kernel, stride, out_h, out_w)
        if overlapping:
            target += share
        else:
            target[...] = share
    return dx


def tanh_backward(dout, y):
    """Multiply the delta by tanh's derivative written with its output: 1 - y**2."""
    # dout * (1 - y*y), evaluated in one array instead of three temporaries (same operations).
    dx = np.multiply(y, y)
    np.subtract(1, dx, out=dx)
    dx *= dout
    return dx


def sigmoid_backward(dout, y):
    """Multiply the delta by the sigmoid's derivative written with its output: y * (1 - y)."""
    # dout * (y * (1 - y)), evaluated in one array instead of three temporaries.
    dx = np.subtract(1, y)
    dx *= y
    dx *= dout
    return dx


def dense_backward(dout, x, W):
    """Gradients of y = x @ W + b.

    dout: (N, out_features) -> dx: (N, in_features) = dout @ W.T,
    dW: (in_features, out_features) = x.T @ dout, db: (out_features,) = dout summed over N.
    """
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        # x is a flattened batch-innermost map (see the layout note): make dx in that same
        # memory order, as the transpose of W @ dout.T, so the pooling layer below gets its
        # delta in the layout of its own arrays instead of a transposed one.
        dx = (W @ dout.T).T
    else:
        dx = dout @ W.T
    return dx, x.T @ dout, dout.sum(axis=0)


# --- batch normalisation: each channel's values as one row of a (C, m) matrix. For the
# batch-innermost maps ((C, H, W, N) in memory) that matrix is a view, each row one contiguous
# run, so the per-channel sums are BLAS products with a vector of ones (or einsum's row-wise
# dot products) and each element-wise step is one pass through memory. Results come back as
# (N, C, H, W) views of (C, m) arrays, the layout the next fast layer expects.


def _channel_rows(x):
    """x: (N, C, H, W) -> (C, H*W*N); (N, C) -> (C, N). A view when x is batch-innermost
    (or, for 2-D, always); otherwise reshape copies."""
    if x.ndim == 4:
        return x.transpose(1, 2, 3, 0).reshape(x.shape[1], -1)
    if x.ndim == 2:
        return x.T
    raise ValueError(f"batch normalisation takes (N, C, H, W) or (N, D) input, got shape {x.shape}")


def _as_input_shape(rows, like):
    """The inverse of _channel_rows for an array shaped like `like`."""
    if like.ndim == 4:
        N, C, H, W = like.shape
        return rows.reshape(C, H, W, N).transpose(3, 0, 1, 2)
    return rows.T


def batchnorm(x, gamma, beta, eps=functional.BATCHNORM_EPS):
    """functional.batchnorm, per channel row. Same arguments and results."""
    rows = _channel_rows(x)
    m = rows.shape[1]
    if m < 2:
        raise ValueError(f"batch normalisation in training needs more than one value per "
                         f"channel, got input of shape {x.shape}")
    ones = np.ones(m, dtype=x.dtype)
    inv_m = x.dtype.type(1 / m)
    mean = (rows @ ones) * inv_m
    x_hat = rows - mean[:, None]
    var = np.einsum("ij,ij->i", x_hat, x_hat) * inv_m  # no squared copy written out
    inv_std = 1 / np.sqrt(var + x.dtype.type(eps))
    x_hat *= inv_std[:, None]
    y = np.multiply(x_hat, gamma[:, None])
    y += beta[:, None]
    return _as_input_shape(y, x), (_as_input_shape(x_hat, x), inv_std), mean, var


def batchnorm_backward(dout, cache, gamma):
    """functional.batchnorm_backward, per channel row, with the closed form expanded to
    dx = a * dout - (a / m) * (dbeta + dgamma * x_hat), a = gamma * inv_std."""
    x_hat, inv_std = cache
    d, x_hat = _channel_rows(dout), _channel_rows(x_hat)
    m = d.shape[1]
    dbeta = d @ np.ones(m, dtype=d.dtype)
    dgamma = np.einsum("ij,ij->i", d, x_hat)
    a = gamma * inv_std
    a_over_m = a * dout.dtype.type(1 / m)
    dx = np.multiply(x_hat, (-a_over_m * dgamma)[:, None])
    dx -= (a_over_m * dbeta)[:, None]
    dx += d * a[:, None]
    return _as_input_shape(dx, dout), dgamma, dbeta


# --- the kernels this module has no faster version of. Each is bound here by name, so that
# grep and an IDE follow a layer's call to its equation, and tests/test_visible_path.py fails
# when cnntrain.nn.functional gains a kernel that is not listed here (fast or bound).

conv_output_size = functional.conv_output_size  # shape arithmetic, no array work
im2col = functional.im2col  # the reference column layout; conv_forward here uses _im2col
col2im = functional.col2im  # the reference column layout; conv_input_grad here uses _col2im
relu = functional.relu  # already one NumPy pass
relu_backward = functional.relu_backward  # already one comparison and one product
tanh = functional.tanh  # already one NumPy pass
sigmoid = functional.sigmoid  # two passes through np.tanh, which dominates either way
dense = functional.dense  # one BLAS product plus the bias, nothing to rearrange
dropout_mask = functional.dropout_mask  # the random draw dominates; the same draws keep runs equal
dropout = functional.dropout  # already one NumPy pass
dropout_backward = functional.dropout_backward  # already one NumPy pass
batchnorm_inference = functional.batchnorm_inference  # evaluation only, not the training step
batchnorm_eval_backward = functional.batchnorm_eval_backward  # explain's one image, not training
update_running_statistics = functional.update_running_statistics  # (C,) vectors, negligible
values_per_channel = functional.values_per_channel  # shape arithmetic, no array work
log_softmax = functional.log_softmax  # (N, 10) logits: negligible beside the layers
softmax = functional.softmax  # (N, 10) logits: negligible beside the layers
cross_entropy = functional.cross_entropy  # (N, 10) logits: negligible beside the layers
softmax_cross_entropy_backward = functional.softmax_cross_entropy_backward  # (N, 10), negligible
