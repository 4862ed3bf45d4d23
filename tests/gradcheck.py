"""Centred finite differences in float64, contracted with a fixed random upstream gradient."""

import numpy as np


def numeric_gradient(f, a, eps=1e-6, indices=None):
    """d f / d a by centred differences, f a scalar function that reads `a` (changed in place).

    indices: flat indices to probe (all when None); the others are left at NaN.
    """
    grad = np.full(a.shape, np.nan)
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a), "a must be contiguous so the probe reaches it"
    for k in range(flat.size) if indices is None else indices:
        saved = flat[k]
        flat[k] = saved + eps
        plus = f()
        flat[k] = saved - eps
        minus = f()
        flat[k] = saved
        grad.reshape(-1)[k] = (plus - minus) / (2 * eps)
    return grad


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
