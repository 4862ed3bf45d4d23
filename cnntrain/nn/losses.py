"""The loss: softmax followed by cross-entropy, with its output delta."""

import numpy as np

from cnntrain.nn import functional as fn


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels, optionally smoothed.

    forward(logits: (N, K), labels: (N,)) -> loss: float, the mean over the batch.
    backward() -> dlogits: (N, K) = (softmax(logits) - t) / N, where the target t is
    onehot(labels), or (1 - smoothing) * onehot(labels) + smoothing / K with label smoothing.
    Stable for logits of any magnitude (the log-softmax shifts by each row's maximum).
    """

    def __init__(self, smoothing=0.0):
        if not 0 <= smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self._cache = None

    def forward(self, logits, labels, train=True):
        log_probs = fn.log_softmax(logits)
        loss = fn.cross_entropy(log_probs, labels, self.smoothing)
        self._cache = (log_probs, labels) if train else None
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called without a training forward")
        log_probs, labels = self._cache
        self._cache = None
        return fn.softmax_cross_entropy_backward(np.exp(log_probs), labels, self.smoothing)
