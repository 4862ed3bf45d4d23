"""Layers that describe themselves: their line in the layer grammar, their arrays, their maths.

A layer class is the whole definition of a kind of layer. It declares

- kind, args, options, about: its line in the layer grammar (`conv F K [stride=S] [pad=P]`);
  the parser, the usage in error messages and the grammar table of docs/layers.md come from these;
- input_rank: what it takes, 3 for (C, H, W) maps, 1 for flat vectors, None for anything;
- build(line, input_shape, context): the layer for a parsed line, given the input shape
  (the default passes the line's values to the constructor);
- output_shape(input_shape), multiply_adds(input_shape) and n_params, for summaries;
- its arrays, in three kinds: trained parameters (add_param, with their weight-decay group),
  buffers (add_buffer: saved in checkpoints, never trained or decayed), and, when
  needs_rng is set, its own generator `rng`, which the network builder draws from the run's
  seed and whose state checkpoints keep;
- torch_module(nn): the equivalent torch.nn module (the benchmark's PyTorch counterpart);
- forward(x, train=True) -> y and backward(dout, input_grad=True) -> dx, which remember
  only what backward needs and call the maths in `self.kernels`: cnntrain.nn.fast (default)
  or the reference kernels of cnntrain.nn.functional (`kernels = reference`), the same
  functions by name in both.

@register adds a class to REGISTRY, the kinds the layer grammar knows. The built-in kinds live
one module per concept (conv, pooling, dense, activations, flatten, norm); the package
(cnntrain/nn/__init__.py) imports them all, in the order of the grammar table, so the registry
is complete wherever it is read.
"""

import math
from dataclasses import dataclass

import numpy as np

from cnntrain.nn import fast, functional

KERNELS = {"fast": fast, "reference": functional}
DECAY_GROUPS = ("weight", "bias", None)  # None: never decayed
REGISTRY = {}


def register(cls):
    """Class decorator: make a layer class's kind a word of the layer grammar."""
    if cls.kind in REGISTRY and REGISTRY[cls.kind] is not cls:
        raise ValueError(f"layer kind '{cls.kind}' is already {REGISTRY[cls.kind].__name__}")
    REGISTRY[cls.kind] = cls
    return cls


def kernels_module(kernels):
    """'fast' | 'reference' | one of those modules -> the module."""
    if isinstance(kernels, str):
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; expected one of {', '.join(KERNELS)}")
        return KERNELS[kernels]
    return kernels


@dataclass(frozen=True)
class Field:
    """One number on a grammar line: positional (no default) or an option name=value.

    type int or float; lo/hi the allowed range (None: unbounded); default for options;
    pair=True makes 'K' the pair (K, K) and also takes 'HxW'; metavar is the placeholder in
    the usage string (default: the name in capitals, its first letter for an option).
    """

    name: str
    lo: float = 1
    hi: float = None
    type: type = int
    default: object = None
    pair: bool = False
    metavar: str = None

    def placeholder(self):
        return self.metavar or self.name.upper()

    def parse(self, text):
        """text -> value; ValueError with the reason (the caller adds the line)."""
        if self.pair and "x" in text.lower():
            first, _, second = text.lower().partition("x")
            return self._number(first), self._number(second)
        value = self._number(text)
        return (value, value) if self.pair else value

    def _number(self, text):
        try:
            value = self.type(text)
        except ValueError:
            what = "a whole number" if self.type is int else "a number"
            raise ValueError(f"{self.name} must be {what}, got '{text}'") from None
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, got '{text}'")
        if self.lo is not None and value < self.lo:
            raise ValueError(f"{self.name} must be >= {self.lo}, got {value}")
        if self.hi is not None and value > self.hi:
            raise ValueError(f"{self.name} must be <= {self.hi}, got {value}")
        return value


@dataclass(frozen=True)
class BuildContext:
    """What the builder hands every layer besides its line and input shape."""

    rng: object = None            # weight initialisation (None: zeros, to be loaded)
    dtype: object = np.float32
    init: str = "he"
    kernels: object = fast


class Layer:
    """Base class: a layer without arrays that keeps nothing."""

    kind = None          # the word on a grammar line
    args = ()            # positional Fields
    options = ()         # optional name=value Fields (with defaults)
    about = ""           # one line for the grammar table
    input_rank = None    # 3: (C, H, W); 1: flat; None: any
    input_hint = ""      # what to do when the input has the wrong rank
    needs_rng = False    # True: the builder gives it `self.rng`, whose state is checkpointed
    init_hint = None     # "he" if networks with this layer should default to He init
    min_batch = 1        # the fewest examples a training batch may hold (see run.check_batches)

    def __init__(self, *, kernels="fast"):
        self.kernels = kernels_module(kernels)
        self.params, self.grads, self.decay, self.buffers = {}, {}, {}, {}
        self.rng = None
        self._cache = None

    # --- the grammar -----------------------------------------------------------------------

    @classmethod
    def usage(cls):
        """'conv FILTERS KERNEL [stride=S] [pad=P]'."""
        words = [cls.kind] + [f.placeholder() for f in cls.args]
        words += [f"[{f.name}={f.metavar or f.name[0].upper()}]" for f in cls.options]
        return " ".join(words)

    @classmethod
    def build(cls, line, input_shape, context):
        """The layer for a parsed line (its values by field name) on a per-example input shape."""
        return cls(**line.values, kernels=context.kernels)

    @classmethod
    def plan(cls, line, input_shape):
        """(output shape, parameter count) of the layer `line` builds on `input_shape`, without
        making its arrays, so that a network of any size can be checked before it is built.
        The default builds the layer, which is right for a layer whose arrays stay small; a
        layer whose arrays grow with its line or its input answers without building."""
        layer = cls.build(line, input_shape, BuildContext())
        return layer.output_shape(input_shape), layer.n_params

    # --- arrays ----------------------------------------------------------------------------

    def add_param(self, key, array, decay="weight"):
        """A trained parameter, with a gradient of its shape; decay: its weight-decay group,
        'weight' (always decayed), 'bias' (unless [train] decay_biases = false) or None."""
        if decay not in DECAY_GROUPS:
            raise ValueError(f"decay must be one of {DECAY_GROUPS}, got {decay!r}")
        self.params[key], self.grads[key], self.decay[key] = array, np.zeros_like(array), decay
        return array

    def add_buffer(self, key, array):
        """An array the layer updates itself (e.g. running statistics): checkpointed, never
        trained, never decayed."""
        self.buffers[key] = array
        return array

    @property
    def n_params(self):
        return sum(p.size for p in self.params.values())

    # --- shapes ----------------------------------------------------------------------------

    def output_shape(self, input_shape):
        """The per-example output shape for a per-example input shape (no batch axis)."""
        return tuple(input_shape)

    def multiply_adds(self, input_shape):
        """Multiply-adds per example, for summaries; element-wise layers count as 0."""
        return 0

    def torch_module(self, nn):
        """The equivalent torch.nn module (freshly initialised), given torch.nn."""
        raise NotImplementedError(f"{type(self).__name__} names no PyTorch equivalent")

    # --- the passes ------------------------------------------------------------------------

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dout, input_grad=True):
        """dout: gradient w.r.t. the output -> dx: gradient w.r.t. the input.

        input_grad=False lets the first layer of a network skip computing a dx nobody reads;
        it then returns None (parameter gradients are still computed).
        """
        raise NotImplementedError

    def forward_eval_kept(self, x):
        """The evaluation-mode forward that still keeps what backward needs, so that backward
        then gives the gradients of the network as it predicts (cnntrain.nn.explain).

        The default is the training forward, right for a layer that computes the same in both
        modes and changes no state when it runs; a layer for which either is false (dropout,
        batch normalisation) overrides it.
        """
        return self.forward(x, train=True)

    def _keep(self, train, *saved):
        # Inference keeps nothing, so a stale cache can never leak into a later backward.
        self._cache = saved if train else None

    def _kept(self):
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward(x, train=True) "
                "before it: nothing was kept to differentiate")
        saved, self._cache = self._cache, None
        return saved

    def _check_dtype(self, x):
        params = list(self.params.values())
        if params and x.dtype != params[0].dtype:
            raise TypeError(
                f"{type(self).__name__} holds {params[0].dtype} parameters but got a {x.dtype} "
                "input; convert one of them (mixing dtypes would upcast silently)")

    def _generator(self):
        if self.rng is None:
            raise RuntimeError(f"{type(self).__name__} needs a random generator to train; build "
                               "it with build_network(..., seeds=...) or set its rng")
        return self.rng

    def __repr__(self):
        return f"{type(self).__name__}()"


def int_pair(value, name):
    """A constructor's int or (height, width) pair -> (int, int), validated positive (the
    grammar's counterpart is Field(pair=True))."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])

