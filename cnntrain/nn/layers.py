"""Layers that describe themselves: their line in the layer grammar, their arrays, their maths.

A layer class is the whole definition of a kind of layer. It declares

- kind, args, options, about: its line in the layer grammar (`conv F K [stride=S] [pad=P]`);
  the parser, the usage in error messages and the README's grammar table come from these;
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

@register adds a class to REGISTRY, the kinds the layer grammar knows.
"""

import math
from dataclasses import dataclass

import numpy as np

from cnntrain.nn import fast, functional
from cnntrain.nn.init import init_weights

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


def _pair(value, name):
    """An int or a (height, width) pair -> (int, int), validated positive."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _conv_output_shape(input_shape, filters, kernel_size, stride, padding):
    """(C, H, W) -> (F, out_h, out_w) of a convolution."""
    _, H, W = input_shape
    kh, kw = kernel_size
    return (filters, functional.conv_output_size(H, kh, stride, padding),
            functional.conv_output_size(W, kw, stride, padding))


@register
class Conv2D(Layer):
    """2-D convolution (cross-correlation) with F kernels of size kh x kw.

    forward  x: (N, C, H, W) -> y: (N, F, out_h, out_w)
    backward dout: (N, F, out_h, out_w) -> dx: (N, C, H, W); sets grads W: (F, C, kh, kw), b: (F,)
    """

    kind = "conv"
    args = (Field("filters"), Field("kernel", pair=True))
    options = (Field("stride", default=1), Field("pad", lo=0, default=0))
    about = "FILTERS kernels of KERNEL x KERNEL (or HxW), cross-correlation"
    input_rank = 3
    input_hint = "put convolutions and pooling before the first flatten"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 rng=None, dtype=np.float32, init="he", kernels="fast"):
        super().__init__(kernels=kernels)
        kh, kw = _pair(kernel_size, "kernel_size")
        if stride < 1 or padding < 0:
            raise ValueError(f"need stride >= 1 and padding >= 0, got {stride} and {padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        self.add_param("W", init_weights((out_channels, in_channels, kh, kw), fan_in, fan_out,
                                         rng=rng, dtype=dtype, scheme=init))
        self.add_param("b", np.zeros(out_channels, dtype=dtype), decay="bias")
        # the fast kernels' scratch arrays (see cnntrain.nn.fast)
        self._work = {True: {}, False: {}}

    @classmethod
    def build(cls, line, input_shape, context):
        v = line.values
        return cls(input_shape[0], v["filters"], v["kernel"], stride=v["stride"], padding=v["pad"],
                   rng=context.rng, dtype=context.dtype, init=context.init, kernels=context.kernels)

    def forward(self, x, train=True):
        self._check_dtype(x)
        # Training and inference keep separate scratch arrays, so that evaluation batches and
        # training batches, of different sizes, do not reallocate them each time they alternate.
        y, cols = self.kernels.conv_forward(x, self.params["W"], self.params["b"], self.stride,
                                            self.padding, work=self._work[train])
        self._keep(train, cols, x.shape)
        return y

    def backward(self, dout, input_grad=True):
        cols, x_shape = self._kept()
        W = self.params["W"]
        self.grads["W"][...] = self.kernels.conv_kernel_grad(cols, dout, W.shape)
        self.grads["b"][...] = self.kernels.conv_bias_grad(dout)
        if not input_grad:
            return None
        return self.kernels.conv_input_grad(dout, W, x_shape, self.stride, self.padding,
                                            work=self._work[True])

    @classmethod
    def plan(cls, line, input_shape):
        v = line.values
        (kh, kw), filters = v["kernel"], v["filters"]
        shape = _conv_output_shape(input_shape, filters, (kh, kw), v["stride"], v["pad"])
        return shape, filters * input_shape[0] * kh * kw + filters

    def output_shape(self, input_shape):
        return _conv_output_shape(input_shape, self.out_channels, self.kernel_size, self.stride,
                                  self.padding)

    def multiply_adds(self, input_shape):
        F, out_h, out_w = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return F * out_h * out_w * self.in_channels * kh * kw

    def torch_module(self, nn):
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                         stride=self.stride, padding=self.padding)

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


class _Pool2D(Layer):
    """Shared shape logic of the pooling layers (floor mode: leftover rows/columns dropped)."""

    args = (Field("kernel"),)
    options = (Field("stride", default=None),)  # None: the kernel size
    input_rank = 3
    input_hint = "put convolutions and pooling before the first flatten"

    def __init__(self, kernel, stride=None, *, kernels="fast"):
        super().__init__(kernels=kernels)
        self.kernel_size = _pair(kernel, "kernel_size")[0]
        if np.ndim(kernel) and len(set(kernel)) != 1:
            raise ValueError("pooling windows are square: give one kernel_size")
        self.stride = self.kernel_size if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def output_shape(self, input_shape):
        C, H, W = input_shape
        return (C, functional.conv_output_size(H, self.kernel_size, self.stride),
                functional.conv_output_size(W, self.kernel_size, self.stride))

    def __repr__(self):
        return f"{type(self).__name__}({self.kernel_size}, stride={self.stride})"


@register
class MaxPool2D(_Pool2D):
    """Max pooling. forward x: (N, C, H, W) -> y: (N, C, out_h, out_w); backward the reverse.

    The gradient goes to the first maximum of each window in row-major order.
    """

    kind = "maxpool"
    about = "max pooling (stride defaults to KERNEL; floor mode)"

    def forward(self, x, train=True):
        y, argmax = self.kernels.maxpool2d(x, self.kernel_size, self.stride)
        self._keep(train, argmax, x.shape)
        return y

    def backward(self, dout, input_grad=True):
        argmax, x_shape = self._kept()
        return self.kernels.maxpool2d_backward(dout, argmax, x_shape, self.kernel_size, self.stride)

    def torch_module(self, nn):
        return nn.MaxPool2d(self.kernel_size, self.stride)


@register
class MeanPool2D(_Pool2D):
    """Mean (average) pooling. forward x: (N, C, H, W) -> y: (N, C, out_h, out_w)."""

    kind = "meanpool"
    about = "mean pooling"

    def forward(self, x, train=True):
        self._keep(train, x.shape)
        return self.kernels.meanpool2d(x, self.kernel_size, self.stride)

    def backward(self, dout, input_grad=True):
        (x_shape,) = self._kept()
        return self.kernels.meanpool2d_backward(dout, x_shape, self.kernel_size, self.stride)

    def torch_module(self, nn):
        return nn.AvgPool2d(self.kernel_size, self.stride)


@register
class Dense(Layer):
    """Fully connected layer.

    forward  x: (N, in_features) -> y: (N, out_features)
    backward dout: (N, out_features) -> dx: (N, in_features); grads W: (in, out), b: (out,)
    """

    kind = "dense"
    args = (Field("out"),)
    about = "fully connected, input size inferred"
    input_rank = 1
    input_hint = "add a 'flatten' line before it"

    def __init__(self, in_features, out_features, *, rng=None, dtype=np.float32, init="he",
                 kernels="fast"):
        super().__init__(kernels=kernels)
        self.in_features, self.out_features = in_features, out_features
        self.add_param("W", init_weights((in_features, out_features), in_features, out_features,
                                         rng=rng, dtype=dtype, scheme=init))
        self.add_param("b", np.zeros(out_features, dtype=dtype), decay="bias")

    @classmethod
    def build(cls, line, input_shape, context):
        return cls(input_shape[0], line.values["out"], rng=context.rng, dtype=context.dtype,
                   init=context.init, kernels=context.kernels)

    @classmethod
    def plan(cls, line, input_shape):
        out = line.values["out"]
        return (out,), input_shape[0] * out + out

    def forward(self, x, train=True):
        self._check_dtype(x)
        self._keep(train, x)
        return self.kernels.dense(x, self.params["W"], self.params["b"])

    def backward(self, dout, input_grad=True):
        (x,) = self._kept()
        dx, dW, db = self.kernels.dense_backward(dout, x, self.params["W"])
        self.grads["W"][...] = dW
        self.grads["b"][...] = db
        return dx if input_grad else None

    def output_shape(self, input_shape):
        return (self.out_features,)

    def multiply_adds(self, input_shape):
        return self.in_features * self.out_features

    def torch_module(self, nn):
        return nn.Linear(self.in_features, self.out_features)

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features})"


class Activation(Layer):
    """An element-wise activation y = f(x). Each subclass names its two kernels on both paths,
    `f(x) -> y` and `f_backward(dout, y) -> dx` (the delta times f' written with the output,
    which is all the layer keeps), so a reader can follow the call to its equation."""

    fast_kernels = ()       # e.g. (fast.relu, fast.relu_backward)
    reference_kernels = ()  # e.g. (functional.relu, functional.relu_backward)

    def __init__(self, *, kernels="fast"):
        super().__init__(kernels=kernels)
        if self.kernels is fast:
            self._forward, self._backward = self.fast_kernels
        elif self.kernels is functional:
            self._forward, self._backward = self.reference_kernels
        else:
            raise ValueError(f"{type(self).__name__} runs on cnntrain.nn.fast or "
                             f"cnntrain.nn.functional, got {self.kernels!r}")

    def forward(self, x, train=True):
        y = self._forward(x)
        self._keep(train, y)
        return y

    def backward(self, dout, input_grad=True):
        (y,) = self._kept()
        return self._backward(dout, y)


@register
class ReLU(Activation):
    """max(x, 0); the derivative is 1 exactly where the output is positive."""

    kind = "relu"
    fast_kernels = (fast.relu, fast.relu_backward)
    reference_kernels = (functional.relu, functional.relu_backward)
    about = "activation max(x, 0)"
    init_hint = "he"

    def torch_module(self, nn):
        return nn.ReLU()


@register
class Tanh(Activation):
    """tanh(x); the derivative is 1 - y**2."""

    kind = "tanh"
    fast_kernels = (fast.tanh, fast.tanh_backward)
    reference_kernels = (functional.tanh, functional.tanh_backward)
    about = "activation tanh(x)"

    def torch_module(self, nn):
        return nn.Tanh()


@register
class Sigmoid(Activation):
    """The logistic function 1 / (1 + exp(-x)); the derivative is y * (1 - y)."""

    kind = "sigmoid"
    fast_kernels = (fast.sigmoid, fast.sigmoid_backward)
    reference_kernels = (functional.sigmoid, functional.sigmoid_backward)
    about = "activation 1 / (1 + exp(-x))"

    def torch_module(self, nn):
        return nn.Sigmoid()


@register
class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order; backward reshapes the delta back.

    Both are views, no copies, for the maps the fast kernels produce: stored as (C, H, W, N),
    a batch flattens into an (N, C*H*W) matrix in column-major order, which the next
    matrix product takes as it is.
    """

    kind = "flatten"
    about = "(C, H, W) -> C*H*W, before the first dense"
    input_rank = 3

    def forward(self, x, train=True):
        self._keep(train, x.shape)
        return x.reshape(len(x), -1)

    def backward(self, dout, input_grad=True):
        (x_shape,) = self._kept()
        return dout.reshape(x_shape)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def torch_module(self, nn):
        return nn.Flatten()


@register
class Dropout(Layer):
    """Inverted dropout: in training each unit is zeroed with probability p and the kept ones
    are scaled by 1 / (1 - p); in evaluation it is the identity.

    forward  x: any shape -> y: the same shape
    backward dout -> dx = dout * mask (the mask of the forward pass)

    The mask is drawn from the layer's own generator (`self.rng`, from the run's seed, its
    state kept in checkpoints), so runs repeat exactly and a resumed run draws the masks the
    uninterrupted one would have.
    """

    kind = "dropout"
    args = (Field("p", lo=0, hi=0.99, type=float, metavar="P"),)
    about = "inverted dropout: zero each value with probability P in training"
    needs_rng = True

    def __init__(self, p, *, kernels="fast"):
        super().__init__(kernels=kernels)
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x, train=True):
        if not train:
            self._keep(False)
            return x
        mask = self.kernels.dropout_mask(x.shape, self.p, self._generator(), x.dtype)
        self._keep(train, mask)
        return self.kernels.dropout(x, mask)

    def backward(self, dout, input_grad=True):
        (mask,) = self._kept()
        return self.kernels.dropout_backward(dout, mask) if input_grad else None

    def torch_module(self, nn):
        return nn.Dropout(self.p)

    def __repr__(self):
        return f"Dropout(p={self.p:g})"


@register
class BatchNorm(Layer):
    """Batch normalisation, per channel over (N, H, W) after a convolution, per feature after a
    dense layer: y = gamma * (x - mean) / sqrt(var + eps) + beta.

    forward  x: (N, C, H, W) or (N, C) -> y: the same shape
    backward dout -> dx: the same shape; grads gamma: (C,), beta: (C,)

    Training normalises with the batch's own mean and (biased) variance and moves the running
    statistics towards them: running = (1 - momentum) * running + momentum * batch, with the
    unbiased variance (PyTorch's rule and defaults). Evaluation normalises with the running
    statistics. gamma and beta are trained; by default (decay=0) weight decay leaves them
    alone, the usual practice: they set each channel's scale and offset, which is not the
    network's capacity that weight decay is there to limit. The running mean and variance
    are buffers: checkpointed, never trained.
    """

    kind = "batchnorm"
    options = (Field("momentum", lo=0, hi=1, type=float, default=functional.BATCHNORM_MOMENTUM,
                     metavar="M"),
               Field("eps", lo=1e-12, hi=1, type=float, default=functional.BATCHNORM_EPS,
                     metavar="E"),
               Field("decay", lo=0, hi=1, default=0, metavar="0|1"))
    about = "batch normalisation per channel or feature; decay=1 decays gamma, beta"

    def __init__(self, channels, momentum=functional.BATCHNORM_MOMENTUM,
                 eps=functional.BATCHNORM_EPS, decay=0, *, spatial=True, dtype=np.float32,
                 kernels="fast"):
        super().__init__(kernels=kernels)
        self.channels, self.momentum, self.eps, self.spatial = channels, momentum, eps, spatial
        self.add_param("gamma", np.ones(channels, dtype=dtype), decay="weight" if decay else None)
        self.add_param("beta", np.zeros(channels, dtype=dtype), decay="bias" if decay else None)
        self.add_buffer("running_mean", np.zeros(channels, dtype=dtype))
        self.add_buffer("running_var", np.ones(channels, dtype=dtype))

    @classmethod
    def plan(cls, line, input_shape):
        cls._check_input(input_shape)
        return tuple(input_shape), 2 * input_shape[0]

    @staticmethod
    def _check_input(input_shape):
        if len(input_shape) not in (1, 3):
            raise ValueError(f"batchnorm needs a (C, H, W) or flat input, got {input_shape}")

    @classmethod
    def build(cls, line, input_shape, context):
        cls._check_input(input_shape)
        layer = cls(input_shape[0], **line.values, spatial=len(input_shape) == 3,
                    dtype=context.dtype, kernels=context.kernels)
        # A statistic over one value has no variance: after a dense layer (or on 1 x 1 maps)
        # each training batch needs two examples.
        layer.min_batch = 2 if math.prod(input_shape[1:]) == 1 else 1
        return layer

    def forward(self, x, train=True):
        self._check_dtype(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not train:
            self._keep(False)
            return self.kernels.batchnorm_inference(x, gamma, beta, self.buffers["running_mean"],
                                                    self.buffers["running_var"], self.eps)
        y, cache, mean, var = self.kernels.batchnorm(x, gamma, beta, self.eps)
        self.kernels.update_running_statistics(
            self.buffers["running_mean"], self.buffers["running_var"], mean, var,
            self.kernels.values_per_channel(x), self.momentum)
        self._keep(train, cache)
        return y

    def backward(self, dout, input_grad=True):
        (cache,) = self._kept()
        dx, dgamma, dbeta = self.kernels.batchnorm_backward(dout, cache, self.params["gamma"])
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        return dx if input_grad else None

    def torch_module(self, nn):
        module = nn.BatchNorm2d if self.spatial else nn.BatchNorm1d
        return module(self.channels, eps=self.eps, momentum=self.momentum)

    def __repr__(self):
        return f"BatchNorm({self.channels}, momentum={self.momentum:g}, eps={self.eps:g})"
