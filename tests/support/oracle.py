"""Independent reference implementations: plain loops over every index, written straight from
the textbook definitions and sharing no code with cnntrain. Slow, small inputs only."""

import numpy as np


def out_size(size, kernel, stride, pad=0):
    return (size + 2 * pad - kernel) // stride + 1


def padded(x, pad):
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    return xp


def conv_forward(x, W, b, stride, pad):
    """y[n,f,p,q] = b[f] + sum_{c,i,j} W[f,c,i,j] x_pad[n,c,s*p+i,s*q+j]"""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    xp = padded(x, pad)
    oh, ow = out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)
    y = np.zeros((N, F, oh, ow), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for p in range(oh):
                for q in range(ow):
                    total = b[f]
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                total += W[f, c, i, j] * xp[n, c, stride * p + i, stride * q + j]
                    y[n, f, p, q] = total
    return y


def full_convolution_2d(a, k):
    """The textbook 'full' 2-D convolution of one map a (h, w) with one kernel k (kh, kw):
    out[r, s] = sum_{i,j} a[i, j] * k[r - i, s - j], out has shape (h + kh - 1, w + kw - 1)."""
    h, w = a.shape
    kh, kw = k.shape
    out = np.zeros((h + kh - 1, w + kw - 1), dtype=np.result_type(a, k))
    for r in range(h + kh - 1):
        for s in range(w + kw - 1):
            for i in range(h):
                for j in range(w):
                    if 0 <= r - i < kh and 0 <= s - j < kw:
                        out[r, s] += a[i, j] * k[r - i, s - j]
    return out


def dilate(a, stride):
    """Insert stride - 1 zeros between the elements of a 2-D map."""
    if stride == 1:
        return a
    h, w = a.shape
    out = np.zeros(((h - 1) * stride + 1, (w - 1) * stride + 1), dtype=a.dtype)
    out[::stride, ::stride] = a
    return out


def conv_input_grad(dout, W, x_shape, stride, pad):
    """dx[n, c] = sum_f full_conv(dilate(dout[n, f]), W[f, c]), cropped by the padding and
    extended with zeros for input rows/columns that no window reached."""
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    dxp = np.zeros((N, C, H + 2 * pad, Wd + 2 * pad), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for f in range(F):
                full = full_convolution_2d(dilate(dout[n, f], stride), W[f, c])
                dxp[n, c, :full.shape[0], :full.shape[1]] += full
    return dxp[:, :, pad:pad + H, pad:pad + Wd]


def conv_weight_grad(x, dout, kernel_shape, stride, pad):
    """dW[f,c,i,j] = sum_{n,p,q} x_pad[n,c,s*p+i,s*q+j] dout[n,f,p,q]"""
    F, C, kh, kw = kernel_shape
    xp = padded(x, pad)
    N, _, oh, ow = dout.shape
    dW = np.zeros(kernel_shape, dtype=dout.dtype)
    for f in range(F):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for n in range(N):
                        for p in range(oh):
                            for q in range(ow):
                                x_in = xp[n, c, stride * p + i, stride * q + j]
                                dW[f, c, i, j] += x_in * dout[n, f, p, q]
    return dW


def pool_forward(x, kernel, stride, mode):
    """Max or mean over each kernel x kernel window, floor mode."""
    N, C, H, W = x.shape
    oh, ow = out_size(H, kernel, stride), out_size(W, kernel, stride)
    y = np.zeros((N, C, oh, ow), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for p in range(oh):
                for q in range(ow):
                    window = x[n, c, stride * p:stride * p + kernel, stride * q:stride * q + kernel]
                    y[n, c, p, q] = window.max() if mode == "max" else window.mean()
    return y


def pool_backward(x, dout, kernel, stride, mode):
    """Max: each delta to the first (row-major) maximum of its window; mean: spread evenly."""
    dx = np.zeros_like(x)
    N, C, oh, ow = dout.shape
    for n in range(N):
        for c in range(C):
            for p in range(oh):
                for q in range(ow):
                    r0, s0 = stride * p, stride * q
                    if mode == "max":
                        best = None
                        for i in range(kernel):
                            for j in range(kernel):
                                if best is None or x[n, c, r0 + i, s0 + j] > x[n, c, best[0],
                                                                               best[1]]:
                                    best = (r0 + i, s0 + j)
                        dx[n, c, best[0], best[1]] += dout[n, c, p, q]
                    else:
                        for i in range(kernel):
                            for j in range(kernel):
                                dx[n, c, r0 + i, s0 + j] += dout[n, c, p, q] / (kernel * kernel)
    return dx
