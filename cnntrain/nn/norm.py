"""The layers that act differently in training and in evaluation: inverted dropout, which draws
its masks from its own generator, and batch normalisation, which keeps running statistics as
buffers. Their maths is dropout*, batchnorm* and update_running_statistics in
cnntrain.nn.functional and cnntrain.nn.fast."""

import math

import numpy as np

from cnntrain.nn import functional
from cnntrain.nn.layers import Field, Layer, register


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

    def forward_eval_kept(self, x):
        # The identity, whose delta passes through unchanged: a mask of ones, no draw.
        self._keep(True, np.ones_like(x))
        return x

    def backward(self, dout, input_grad=True):
        (mask,) = self._kept()
        return self.kernels.dropout_backward(dout, mask) if input_grad else None

    def torch_module(self, nn):
        return nn.Dropout(self.p)

    def __repr__(self):
        return f"Dropout(p={self.p:g})"


_EVALUATED = object()  # marks what BatchNorm.forward_eval_kept keeps


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

    def forward_eval_kept(self, x):
        # The running statistics, not updated; backward sees the input and takes the
        # evaluation-mode equation.
        y = self.forward(x, train=False)
        self._keep(True, _EVALUATED, x)
        return y

    def backward(self, dout, input_grad=True):
        saved = self._kept()
        gamma = self.params["gamma"]
        if saved[0] is _EVALUATED:
            dx, dgamma, dbeta = self.kernels.batchnorm_eval_backward(
                dout, saved[1], gamma, self.buffers["running_mean"], self.buffers["running_var"],
                self.eps)
        else:
            dx, dgamma, dbeta = self.kernels.batchnorm_backward(dout, saved[0], gamma)
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        return dx if input_grad else None

    def torch_module(self, nn):
        module = nn.BatchNorm2d if self.spatial else nn.BatchNorm1d
        return module(self.channels, eps=self.eps, momentum=self.momentum)

    def __repr__(self):
        return f"BatchNorm({self.channels}, momentum={self.momentum:g}, eps={self.eps:g})"
