"""The pooling layers: max and mean over square windows of (C, H, W) maps, in floor mode.
Their maths is maxpool2d and meanpool2d (and their backward) in cnntrain.nn.functional and
cnntrain.nn.fast."""

import numpy as np

from cnntrain.nn import functional
from cnntrain.nn.layers import Field, Layer, int_pair, register


class _Pool2D(Layer):
    """Shared shape logic of the pooling layers (floor mode: leftover rows/columns dropped)."""

    args = (Field("kernel"),)
    options = (Field("stride", default=None),)  # None: the kernel size
    input_rank = 3
    input_hint = "put convolutions and pooling before the first flatten"

    def __init__(self, kernel, stride=None, *, kernels="fast"):
        super().__init__(kernels=kernels)
        self.kernel_size = int_pair(kernel, "kernel_size")[0]
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

    def routes(self, x):
        """Where backward sends each delta: x: (N, C, H, W) -> (N, C, out_h, out_w, 2), the
        (row, column) in x of each window's first maximum (the reference kernel's argmax, for
        display; both kernel paths route to the same position)."""
        _, argmax = functional.maxpool2d(x, self.kernel_size, self.stride)
        out_h, out_w = argmax.shape[2:]
        rows = np.arange(out_h)[:, None] * self.stride + argmax // self.kernel_size
        cols = np.arange(out_w)[None, :] * self.stride + argmax % self.kernel_size
        return np.stack([rows, cols], axis=-1)

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
