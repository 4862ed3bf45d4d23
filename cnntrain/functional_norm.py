"""The maths of dropout and batch normalisation, in the textbook style of functional.py.

Pure functions of arrays: randomness comes in as a numpy Generator, running statistics are
arrays the caller owns. Shape names as in functional.py; for batch normalisation the
statistics are taken per channel over (N, H, W) of an (N, C, H, W) input (after a
convolution) and per feature over N of an (N, D) input (after a dense layer). m is the number
of values each statistic is taken over: N*H*W or N.
"""

import numpy as np

BATCHNORM_MOMENTUM = 0.1  # PyTorch's defaults
BATCHNORM_EPS = 1e-5


# ----------------------------------------------------------------------------- dropout

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


# ------------------------------------------------------------------- batch normalisation

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
