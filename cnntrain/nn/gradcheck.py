"""Gradient checks: the analytic gradients of backward against centred finite differences.

numeric_gradient and relative_error are the two tools (the tests use them too); check_network
applies them to every layer of a network, in float64, at the activations real images produce.
"""

import math
from dataclasses import dataclass

import numpy as np

from cnntrain.errors import ConfigError


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


# --------------------------------------------------------------------- a whole network

DEFAULT_TOLERANCE = 1e-6
DEFAULT_PROBES = 60
JITTER = 1e-2  # of each layer input's standard deviation; see check_network


@dataclass
class LayerCheck:
    """The result for one layer: the relative error of each checked array ('input' for the
    input gradient, else the parameter's key), how many entries were probed in all, and how
    many probes sat on a kink and were left out."""

    name: str
    layer: str
    errors: dict
    probed: int
    kinks: int
    tolerance: float

    @property
    def worst(self):
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self):
        return self.worst <= self.tolerance


def check_tolerance(tolerance, option="--tolerance"):
    """ConfigError (one line) unless 0 < tolerance < 1: relative_error lies in [0, 1], so a
    tolerance of 1 or more passes any gradient, 0 or less fails every one that rounding
    touches, and NaN, which compares false with everything, failed every layer."""
    if not math.isfinite(tolerance):
        problem = "is not a finite number"
    elif tolerance <= 0:
        problem = "would fail every layer (finite differences always carry rounding error)"
    elif tolerance >= 1:
        problem = "would pass any gradient, right or wrong (a relative error is at most 1)"
    else:
        return tolerance
    raise ConfigError(f"{option} {tolerance:g} {problem}; give the largest relative error to "
                      f"accept, between 0 and 1, e.g. {option} {DEFAULT_TOLERANCE:g}")


def check_image_count(images, available, option="--images"):
    """ConfigError (one line) when `images` asks for more images than the split holds, which
    would otherwise quietly check fewer."""
    if images > available:
        raise ConfigError(f"{option} {images}: the config's training split holds {available} "
                          f"images; give at most {available} (the default is 8)")
    return images


def _probe_indices(size, count, rng):
    """`count` distinct flat indices of an array of `size` entries (all of them if fewer)."""
    return np.arange(size) if size <= count else np.sort(rng.choice(size, count, replace=False))


class _FrozenState:
    """Keeps a layer's randomness and running statistics fixed while it is probed: every
    forward pass of the check starts from the same generator state (so dropout draws the same
    mask each time), and restore() puts the generator and the buffers back as they were, so
    checking changes nothing."""

    def __init__(self, layer):
        self.layer = layer
        self.rng = getattr(layer, "rng", None)
        self.rng_state = self.rng.bit_generator.state if self.rng is not None else None
        self.buffers = {key: value.copy() for key, value in getattr(layer, "buffers", {}).items()}

    def forward(self, x):
        if self.rng is not None:
            self.rng.bit_generator.state = self.rng_state
        return self.layer.forward(x, train=True)

    def restore(self):
        if self.rng is not None:
            self.rng.bit_generator.state = self.rng_state
        for key, value in self.buffers.items():
            self.layer.buffers[key][...] = value


def check_layer(name, layer, x, rng, *, probes=DEFAULT_PROBES, eps=1e-6,
                tolerance=DEFAULT_TOLERANCE):
    """Check one layer at input x (float64): its input gradient and the gradient of every
    parameter against centred differences of sum(forward(x) * G), G a fixed random array.
    At most `probes` entries of each array are probed, chosen at random."""
    frozen = _FrozenState(layer)
    x = np.array(x, dtype=np.float64)  # contiguous, so the probe reaches it
    G = rng.standard_normal(frozen.forward(x).shape)
    analytic = {"input": layer.backward(G, input_grad=True)}
    analytic.update({key: grad.copy() for key, grad in layer.grads.items()})
    arrays = {"input": x, **layer.params}

    def objective():
        return float(np.vdot(frozen.forward(x), G))

    errors, probed, kinks = {}, 0, 0
    try:
        for key, array in arrays.items():
            assert array.dtype == np.float64 and array.flags.c_contiguous, key
            picks = _probe_indices(array.size, probes, rng)
            numeric, skipped = numeric_gradient(objective, array, eps=eps, indices=picks,
                                                kinks=1e-3)
            kinks += skipped
            probed += len(picks)
            kept = ~np.isnan(numeric)
            if skipped > len(picks) // 2:
                # Mostly kinks: the forward pass is not a smooth function of this array here
                # (or not a deterministic one), and the few probes left would prove little.
                errors[key] = float("inf")
            elif not np.any(analytic[key][kept]) and not np.any(numeric[kept]):
                errors[key] = 0.0  # both exactly zero where probed: nothing reaches them
            else:
                errors[key] = relative_error(analytic[key], numeric)
    finally:
        frozen.restore()
    return LayerCheck(name, repr(layer), errors, probed, kinks, tolerance)


def check_network(network, images, *, seed=0, probes=DEFAULT_PROBES, eps=1e-6,
                  tolerance=DEFAULT_TOLERANCE):
    """Check every layer of a float64 network where real images put it -> [LayerCheck].

    images: (N, C, H, W) float64, run through the layers in training mode. Each layer is
    checked at its input plus a small random jitter (JITTER times the input's standard
    deviation): real digits have a constant background, so without it max pooling would sit
    on ties and ReLU on exact zeros, where no derivative exists. Probes that still land on a
    kink (the one-sided differences disagree) are counted and left out.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(images, dtype=np.float64)
    results = []
    for name, layer in network.layers:
        spread = float(x.std()) or 1.0
        jittered = x + JITTER * spread * rng.standard_normal(x.shape)
        results.append(check_layer(name, layer, jittered, rng, probes=probes, eps=eps,
                                   tolerance=tolerance))
        frozen = _FrozenState(layer)
        x = frozen.forward(np.ascontiguousarray(x))
        frozen.restore()
    return results


def format_table(results):
    """One line per layer: name, definition, largest relative error, arrays checked, verdict."""
    lines = [f"{'layer':<12}{'definition':<44}{'max rel err':>12}{'probes':>8}{'kinks':>7}  "
             f"{'verdict':<8}per array"]
    for r in results:
        worst = f"{r.worst:.1e}" if r.errors else "-"
        arrays = ", ".join(f"{key} {err:.1e}" for key, err in r.errors.items())
        lines.append(f"{r.name:<12}{r.layer:<44}{worst:>12}{r.probed:>8}{r.kinks:>7}  "
                     f"{'ok' if r.passed else 'FAIL':<8}{arrays}")
    return "\n".join(lines)
