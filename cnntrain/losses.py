"""The loss: softmax followed by cross-entropy, with its output delta."""

import numpy as np

from cnntrain import functional as fn


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    forward(logits: (N, K), labels: (N,)) -> loss: float, the mean over the batch.
    backward() -> dlogits: (N, K) = (softmax(logits) - onehot(labels)) / N.
    Stable for logits of any magnitude (the log-softmax shifts by each row's maximum).
    """

    def __init__(self):
        self._cache = None

    def forward(self, logits, labels, train=True):
        log_probs = fn.log_softmax(logits)
        loss = fn.cross_entropy(log_probs, labels)
        self._cache = (log_probs, labels) if train else None
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called without a training forward")
        log_probs, labels = self._cache
        self._cache = None
        return fn.softmax_cross_entropy_backward(np.exp(log_probs), labels)
