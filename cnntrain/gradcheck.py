"""Gradient checks: the analytic gradients of backward against centred finite differences.

numeric_gradient and relative_error are the two tools (the tests use them too); check_network
applies them to every layer of a network, in float64, at the activations real images produce.
"""

import numpy as np


def numeric_gradient(f, a, eps=1e-6, indices=None, kinks=None):
    """d f / d a by centred differences, f a scalar function that reads `a` (changed in place).

    indices: flat indices to probe (all when None); the others are left at NaN.
    kinks: when a float, also compare the two one-sided differences at each probe, and leave
    at NaN the probes where they differ by more than `kinks` times their size: f is not
    differentiable there (a ReLU at 0, a tie in max pooling), so neither the centred
    difference nor any analytic gradient is "the" derivative. Returns (gradient, number of
    such probes) in that case, else the gradient alone.
    """
    grad = np.full(a.shape, np.nan)
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a), "a must be contiguous so the probe reaches it"
    centre = f() if kinks is not None else None
    skipped = 0
    for k in range(flat.size) if indices is None else indices:
        saved = flat[k]
        flat[k] = saved + eps
        plus = f()
        flat[k] = saved - eps
        minus = f()
        flat[k] = saved
        if kinks is not None:
            right, left = (plus - centre) / eps, (centre - minus) / eps
            if abs(right - left) > kinks * (abs(right) + abs(left)) + 1e-7:
                skipped += 1
                continue
        grad.reshape(-1)[k] = (plus - minus) / (2 * eps)
    return grad if kinks is None else (grad, skipped)


def relative_error(analytic, numeric):
    """||a - n|| / (||a|| + ||n||) over the probed (non-NaN) entries.

    A norm-wise error: entries that are exactly zero (pixels no window reaches) would make an
    element-wise ratio meaningless, while a wrong sign or index anywhere still shows at once.
    """
    probed = ~np.isnan(numeric)
    a, n = np.asarray(analytic, dtype=np.float64)[probed], numeric[probed]
    denominator = np.linalg.norm(a) + np.linalg.norm(n)
    assert denominator > 0, "both gradients are zero: the check would prove nothing"
    return float(np.linalg.norm(a - n) / denominator)
