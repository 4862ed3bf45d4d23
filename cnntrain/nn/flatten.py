"""The flatten layer: (C, H, W) maps to flat vectors, between the convolutional part of a
network and its first dense layer. It has no maths of its own: both passes are reshapes."""

import math

from cnntrain.nn.layers import Layer, register


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
