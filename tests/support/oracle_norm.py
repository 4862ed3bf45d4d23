"""Loop oracles for dropout and batch normalisation, in the style of tests/support/oracle.py: plain
loops over every index, straight from the definitions, sharing no code with cnntrain.

The batch-norm backward here walks the computational graph node by node (the staged form);
cnntrain's is the compact closed form, so agreement checks the derivation, not just the code.
"""

import math

import numpy as np


def _channel_positions(shape):
    """For (N, C, H, W) or (N, C): per channel c, the list of index tuples that belong to it."""
    channels = shape[1]
    groups = [[] for _ in range(channels)]
    for index in np.ndindex(*shape):
        groups[index[1]].append(index)
    return groups


def dropout(x, keep, p):
    """y[i] = x[i] / (1 - p) where unit i is kept, else 0."""
    y = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        if keep[index]:
            y[index] = x[index] / (1 - p)
    return y


def batchnorm_forward(x, gamma, beta, eps):
    """Per channel: mean and biased variance over its values, then gamma * x_hat + beta.
    Returns y and the per-channel mean and biased variance."""
    y = np.zeros_like(x)
    means, variances = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c, positions in enumerate(_channel_positions(x.shape)):
        m = len(positions)
        mean = sum(x[i] for i in positions) / m
        var = sum((x[i] - mean) ** 2 for i in positions) / m
        for i in positions:
            y[i] = gamma[c] * (x[i] - mean) / math.sqrt(var + eps) + beta[c]
        means[c], variances[c] = mean, var
    return y, means, variances


def batchnorm_backward_staged(x, dout, gamma, eps):
    """The backward pass node by node: y = gamma*x_hat + beta, x_hat = xc*s, s = (var+eps)^-1/2,
    var = mean(xc^2), xc = x - mu, mu = mean(x). Returns dx, dgamma, dbeta."""
    dx = np.zeros_like(x)
    dgamma, dbeta = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c, positions in enumerate(_channel_positions(x.shape)):
        m = len(positions)
        mu = sum(x[i] for i in positions) / m
        xc = {i: x[i] - mu for i in positions}
        var = sum(v * v for v in xc.values()) / m
        s = (var + eps) ** -0.5
        x_hat = {i: xc[i] * s for i in positions}
        dbeta[c] = sum(dout[i] for i in positions)
        dgamma[c] = sum(dout[i] * x_hat[i] for i in positions)
        dx_hat = {i: gamma[c] * dout[i] for i in positions}
        ds = sum(dx_hat[i] * xc[i] for i in positions)
        dvar = ds * -0.5 * (var + eps) ** -1.5
        dxc = {i: dx_hat[i] * s + dvar * 2 * xc[i] / m for i in positions}
        dmu = -sum(dxc.values())
        for i in positions:
            dx[i] = dxc[i] + dmu / m
    return dx, dgamma, dbeta


def batchnorm_running(x_batches, momentum):
    """Running mean and variance after the given batches, from (0, 1), PyTorch's rule with the
    unbiased batch variance."""
    channels = x_batches[0].shape[1]
    running_mean, running_var = np.zeros(channels), np.ones(channels)
    for x in x_batches:
        for c, positions in enumerate(_channel_positions(x.shape)):
            m = len(positions)
            mean = sum(x[i] for i in positions) / m
            unbiased = sum((x[i] - mean) ** 2 for i in positions) / (m - 1)
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = (1 - momentum) * running_var[c] + momentum * unbiased
    return running_mean, running_var
