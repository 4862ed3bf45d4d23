"""Minibatch SGD with momentum and weight decay, and learning-rate schedules.

Weight decay and the L2 term of the objective
---------------------------------------------
The objective is  J(W) = cross_entropy(W) + (weight_decay / 2) * sum ||W||^2  over the decayed
parameters. Its gradient is  dJ/dW = dW + weight_decay * W,  which is PyTorch's convention for
SGD's `weight_decay`. A penalty written as  lambda * sum ||W||^2  is the same thing with
weight_decay = 2 * lambda. The layers only say which of their parameters it applies to
(Network.decayed); the penalty lives here only, in SGD.penalty (its value) and SGD.step
(its gradient).
"""

import math

import numpy as np

from cnntrain.constants import SCHEDULES


class SGD:
    """SGD with (optionally Nesterov) momentum and L2 weight decay, PyTorch's update rule:

        g = dW + weight_decay * W
        v = momentum * v + g
        W -= lr * (g + momentum * v  if nesterov else  v)

    params: dict name -> ndarray, updated in place. Velocities are kept per parameter name
    (state_dict keys 'NAME.v') so a checkpoint can hold and restore them exactly.
    decayed: the names of the parameters weight decay applies to (and the penalty sums
    over), as the network's layers declare them (Network.decayed); None: all of them.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
                 decayed=None):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got "
                             f"{lr}, {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.params = params
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay
        decayed = set(params if decayed is None else decayed)
        if decayed - set(params):
            raise ValueError(f"weight decay for unknown parameters {sorted(decayed - set(params))}")
        self.decay = {name: weight_decay if name in decayed else 0.0 for name in params}
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()}

    def penalty(self):
        """The objective's L2 term: (weight_decay / 2) * sum of squared decayed parameters."""
        return sum(0.5 * wd * float(np.vdot(self.params[name], self.params[name]))
                   for name, wd in self.decay.items() if wd)

    def step(self, grads):
        """One update of every parameter from grads (dict name -> ndarray, left untouched)."""
        # Each product and sum is written into a scratch array kept per parameter instead of
        # a new temporary: the same operations on the same operands in the same order (so the
        # same numbers), without allocating and touching fresh memory at every step.
        scratch = self.__dict__.setdefault("_scratch", {})
        for name, W in self.params.items():
            g = grads[name]
            wd = self.decay[name]
            buf = scratch.get(name)
            if buf is None or buf.shape != W.shape or buf.dtype != W.dtype:
                buf = scratch[name] = np.empty_like(W)
            if wd:
                np.multiply(W, W.dtype.type(wd), out=buf)
                buf += g                    # g + weight_decay * W
                g = buf
            if self.momentum:
                v = self.velocity[name]
                v *= v.dtype.type(self.momentum)
                v += g
                g = g + v.dtype.type(self.momentum) * v if self.nesterov else v
            np.multiply(g, W.dtype.type(self.lr), out=buf)
            W -= buf                        # W - lr * g

    def state_dict(self):
        """Velocities keyed 'NAME.v' (copies)."""
        return {f"{name}.v": v.copy() for name, v in self.velocity.items()}

    def load_state_dict(self, state):
        """Restore velocities saved by state_dict, checking names and shapes."""
        expected = {f"{name}.v" for name in self.velocity}
        if set(state) != expected:
            raise ValueError(f"optimizer state names differ: missing "
                             f"{sorted(expected - set(state))}, unexpected "
                             f"{sorted(set(state) - expected)}")
        for name, v in self.velocity.items():
            saved = state[f"{name}.v"]
            if saved.shape != v.shape:
                raise ValueError(f"{name}.v has shape {saved.shape}, expected {v.shape}")
            v[...] = saved


class LRSchedule:
    """The learning rate at each global step (0-based).

    The schedule changes once per epoch, as PyTorch's epoch-stepped schedulers do:
      constant: lr
      step:     lr * gamma ** (epoch // step_epochs)
      cosine:   lr * (1 + cos(pi * epoch / epochs)) / 2   (CosineAnnealingLR with T_max=epochs)
    An optional linear warm-up scales it by (step + 1) / warmup_steps over the first
    warmup_epochs (fractions allowed), which tames the first updates of a high learning rate.
    """

    def __init__(self, lr, kind="constant", *, epochs, steps_per_epoch, warmup_epochs=0.0,
                 step_epochs=5, gamma=0.1):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        self.lr, self.kind, self.epochs = lr, kind, epochs
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.step_epochs, self.gamma = step_epochs, gamma

    def epoch_lr(self, epoch):
        """The schedule's value for a whole (0-based) epoch, before warm-up."""
        if self.kind == "step":
            return self.lr * self.gamma ** (epoch // self.step_epochs)
        if self.kind == "cosine":
            return self.lr * (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        return self.lr

    def __call__(self, step):
        lr = self.epoch_lr(step // self.steps_per_epoch)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr
