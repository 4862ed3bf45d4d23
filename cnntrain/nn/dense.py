"""The fully connected layer: y = x W + b on flat vectors. Its maths is dense and
dense_backward in cnntrain.nn.functional and cnntrain.nn.fast."""

import numpy as np

from cnntrain.nn.init import init_weights
from cnntrain.nn.layers import Field, Layer, register


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
