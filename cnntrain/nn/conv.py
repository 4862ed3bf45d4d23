"""The convolution layer: F kernels slid over (C, H, W) maps (cross-correlation), with its
stride and zero padding. Its maths is conv_forward and the conv_*_grad kernels of
cnntrain.nn.functional (textbook) and cnntrain.nn.fast (the default)."""

import numpy as np

from cnntrain.nn import functional
from cnntrain.nn.init import init_weights
from cnntrain.nn.layers import Field, Layer, int_pair, register


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
        kh, kw = int_pair(kernel_size, "kernel_size")
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
