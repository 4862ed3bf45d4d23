"""Batch normalisation rearranged for speed: the equations of functional_norm, same signatures.

Each channel's values are taken as one row of a (C, m) matrix: for the batch-innermost maps
the fast convolutions produce ((C, H, W, N) in memory), that matrix is a view, each row one
contiguous run, so the per-channel sums are BLAS products with a vector of ones and the
element-wise steps stream through memory once each, with the temporaries reused. The results
come back as (N, C, H, W) views of (C, m) arrays, the layout the next fast layer expects.
"""

import numpy as np

from cnntrain.functional_norm import (BATCHNORM_EPS, batchnorm_inference,  # noqa: F401
                                      dropout, dropout_backward, dropout_mask,
                                      update_running_statistics, values_per_channel)


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


def batchnorm(x, gamma, beta, eps=BATCHNORM_EPS):
    """functional_norm.batchnorm, per channel row. Same arguments and results."""
    rows = _channel_rows(x)
    m = rows.shape[1]
    if m < 2:
        raise ValueError(f"batch normalisation in training needs more than one value per "
                         f"channel, got input of shape {x.shape}")
    ones = np.ones(m, dtype=x.dtype)
    inv_m = x.dtype.type(1 / m)
    mean = (rows @ ones) * inv_m
    x_hat = rows - mean[:, None]
    y = np.square(x_hat)
    var = (y @ ones) * inv_m
    inv_std = 1 / np.sqrt(var + x.dtype.type(eps))
    x_hat *= inv_std[:, None]
    np.multiply(x_hat, gamma[:, None], out=y)
    y += beta[:, None]
    return _as_input_shape(y, x), (_as_input_shape(x_hat, x), inv_std), mean, var


def batchnorm_backward(dout, cache, gamma):
    """functional_norm.batchnorm_backward, per channel row, with the closed form expanded to
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
