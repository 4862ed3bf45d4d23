"""The element-wise activations, y = f(x): ReLU, tanh and the logistic sigmoid. Each names its
forward and backward kernels on both paths (cnntrain.nn.fast and cnntrain.nn.functional)."""

from cnntrain.nn import fast, functional
from cnntrain.nn.layers import Layer, register


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
