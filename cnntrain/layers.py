"""Stateful layers: parameters, gradients and what the forward pass keeps for backward.

The maths lives in cnntrain.functional; a layer only remembers what its backward needs.
Every layer has:
- params, grads: dicts with the same keys ("W", "b"), plain ndarrays (empty when the layer
  has no parameters). Parameters may be assigned in place; backward overwrites grads.
- forward(x, train=True) -> y. With train=False nothing is kept (inference).
- backward(dout) -> dx, the gradient with respect to the layer's input.
"""

import numpy as np

from cnntrain import functional as fn
from cnntrain.init import init_weights


def _pair(value, name):
    """An int or a (height, width) pair -> (int, int), validated positive."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


class Layer:
    """Base class: a layer without parameters that keeps nothing."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self._cache = None

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dout, input_grad=True):
        """dout: gradient w.r.t. the output -> dx: gradient w.r.t. the input.

        input_grad=False lets the first layer of a network skip computing a dx nobody reads;
        it then returns None (parameter gradients are still computed).
        """
        raise NotImplementedError

    def output_shape(self, input_shape):
        """The per-example output shape for a per-example input shape (no batch axis)."""
        return tuple(input_shape)

    def multiply_adds(self, input_shape):
        """Multiply-adds per example, for summaries; element-wise layers count as 0."""
        return 0

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

    def __repr__(self):
        return f"{type(self).__name__}()"


class Conv2D(Layer):
    """2-D convolution (cross-correlation) with F kernels of size kh x kw.

    forward  x: (N, C, H, W) -> y: (N, F, out_h, out_w)
    backward dout: (N, F, out_h, out_w) -> dx: (N, C, H, W); sets grads W: (F, C, kh, kw), b: (F,)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 rng=None, dtype=np.float32, init="he"):
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        if stride < 1 or padding < 0:
            raise ValueError(f"need stride >= 1 and padding >= 0, got {stride} and {padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        shape = (out_channels, in_channels, kh, kw)
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        self.params = {"W": init_weights(shape, fan_in, fan_out, rng=rng, dtype=dtype, scheme=init),
                       "b": np.zeros(out_channels, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._work = {True: {}, False: {}}  # scratch arrays kept between calls (see functional)

    def forward(self, x, train=True):
        self._check_dtype(x)
        # Training and inference keep separate scratch arrays, so that evaluation batches and
        # training batches, of different sizes, do not reallocate them each time they alternate.
        y, cols = fn.correlate2d(x, self.params["W"], self.params["b"], self.stride, self.padding,
                                 work=self._work[train])
        self._keep(train, cols, x.shape)
        return y

    def backward(self, dout, input_grad=True):
        cols, x_shape = self._kept()
        W = self.params["W"]
        self.grads["W"][...] = fn.correlate2d_valid(cols, dout, W.shape)
        self.grads["b"][...] = fn.bias_gradient(dout)
        if not input_grad:
            return None
        return fn.convolve2d_full(dout, W, x_shape, self.stride, self.padding, work=self._work[True])

    def output_shape(self, input_shape):
        C, H, W = input_shape
        kh, kw = self.kernel_size
        return (self.out_channels,
                fn.conv_output_size(H, kh, self.stride, self.padding),
                fn.conv_output_size(W, kw, self.stride, self.padding))

    def multiply_adds(self, input_shape):
        F, out_h, out_w = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return F * out_h * out_w * self.in_channels * kh * kw

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


class _Pool2D(Layer):
    """Shared shape logic of the pooling layers (floor mode: leftover rows/columns dropped)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")[0]
        if np.ndim(kernel_size) and len(set(kernel_size)) != 1:
            raise ValueError("pooling windows are square: give one kernel_size")
        self.stride = self.kernel_size if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def output_shape(self, input_shape):
        C, H, W = input_shape
        return (C, fn.conv_output_size(H, self.kernel_size, self.stride),
                fn.conv_output_size(W, self.kernel_size, self.stride))

    def __repr__(self):
        return f"{type(self).__name__}({self.kernel_size}, stride={self.stride})"


class MaxPool2D(_Pool2D):
    """Max pooling. forward x: (N, C, H, W) -> y: (N, C, out_h, out_w); backward the reverse.

    The gradient goes to the first maximum of each window in row-major order.
    """

    def forward(self, x, train=True):
        y, argmax = fn.maxpool2d(x, self.kernel_size, self.stride)
        self._keep(train, argmax, x.shape)
        return y

    def backward(self, dout, input_grad=True):
        argmax, x_shape = self._kept()
        return fn.maxpool2d_backward(dout, argmax, x_shape, self.kernel_size, self.stride)


class MeanPool2D(_Pool2D):
    """Mean (average) pooling. forward x: (N, C, H, W) -> y: (N, C, out_h, out_w)."""

    def forward(self, x, train=True):
        self._keep(train, x.shape)
        return fn.meanpool2d(x, self.kernel_size, self.stride)

    def backward(self, dout, input_grad=True):
        (x_shape,) = self._kept()
        return fn.meanpool2d_backward(dout, x_shape, self.kernel_size, self.stride)


class Dense(Layer):
    """Fully connected layer.

    forward  x: (N, in_features) -> y: (N, out_features)
    backward dout: (N, out_features) -> dx: (N, in_features); grads W: (in, out), b: (out,)
    """

    def __init__(self, in_features, out_features, *, rng=None, dtype=np.float32, init="he"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params = {"W": init_weights((in_features, out_features), in_features, out_features,
                                         rng=rng, dtype=dtype, scheme=init),
                       "b": np.zeros(out_features, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        self._check_dtype(x)
        self._keep(train, x)
        return fn.dense(x, self.params["W"], self.params["b"])

    def backward(self, dout, input_grad=True):
        (x,) = self._kept()
        dx, dW, db = fn.dense_backward(dout, x, self.params["W"])
        self.grads["W"][...] = dW
        self.grads["b"][...] = db
        return dx if input_grad else None

    def output_shape(self, input_shape):
        return (self.out_features,)

    def multiply_adds(self, input_shape):
        return self.in_features * self.out_features

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features})"


class _Activation(Layer):
    """An element-wise activation y = f(x). It keeps its output, from which each derivative
    here follows, and backward multiplies the delta by f' (the maths is in functional)."""

    function = derivative = None  # set by each subclass

    def forward(self, x, train=True):
        y = self.function(x)
        self._keep(train, y)
        return y

    def backward(self, dout, input_grad=True):
        (y,) = self._kept()
        return self.derivative(dout, y)


class ReLU(_Activation):
    """max(x, 0); the derivative is 1 exactly where the output is positive."""

    function, derivative = staticmethod(fn.relu), staticmethod(fn.relu_backward)


class Tanh(_Activation):
    """tanh(x); the derivative is 1 - y**2."""

    function, derivative = staticmethod(np.tanh), staticmethod(fn.tanh_backward)


class Sigmoid(_Activation):
    """The logistic function 1 / (1 + exp(-x)); the derivative is y * (1 - y)."""

    function, derivative = staticmethod(fn.sigmoid), staticmethod(fn.sigmoid_backward)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order; backward reshapes the delta back.

    Both are views, no copies, for the maps the layers here produce: stored as (C, H, W, N),
    a batch flattens into an (N, C*H*W) matrix in column-major order, which the next
    matrix product takes as it is.
    """

    def forward(self, x, train=True):
        self._keep(train, x.shape)
        return x.reshape(len(x), -1)

    def backward(self, dout, input_grad=True):
        (x_shape,) = self._kept()
        return dout.reshape(x_shape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)
