"""Weight initialisers. Each draws from a numpy.random.Generator passed in by the caller, so
the same seed always gives the same network.

- He (Kaiming) normal, std = sqrt(2 / fan_in): keeps the variance of activations steady
  through ReLU layers, which zero half their inputs (He et al., 2015).
- Glorot (Xavier) uniform, limit = sqrt(6 / (fan_in + fan_out)): balances forward and
  backward variance for tanh and sigmoid layers (Glorot and Bengio, 2010).

Biases start at zero (set by the layers).
"""

import numpy as np

from cnntrain.constants import INIT_SCHEMES


def he_normal(shape, fan_in, rng, dtype=np.float32):
    """Normal(0, 2 / fan_in) weights of the given shape."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(shape, fan_in, fan_out, rng, dtype=np.float32):
    """Uniform(-limit, limit) weights with limit = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def init_weights(shape, fan_in, fan_out, *, rng, dtype=np.float32, scheme="he"):
    """Weights drawn by `scheme` from `rng`; without a generator, zeros (to be loaded later,
    e.g. from a checkpoint) rather than hidden, unseeded randomness."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of "
                         f"{', '.join(INIT_SCHEMES)}")
    if rng is None:
        return np.zeros(shape, dtype=dtype)
    if scheme == "he":
        return he_normal(shape, fan_in, rng, dtype)
    return glorot_uniform(shape, fan_in, fan_out, rng, dtype)
