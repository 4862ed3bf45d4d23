"""The training loop: epochs of shuffled minibatches, evaluation, progress and its position.

The trainer owns the loop and nothing else: the network, optimizer, schedule, data and the
generator come in ready-made, and what happens at the end of an epoch (checkpoints, logs) is a
callback. Its whole position lives in a TrainState, so a checkpoint taken after any step
continues to the same weights, bit for bit, as a run that never stopped.
"""

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from cnntrain.constants import NUM_CLASSES
from cnntrain.errors import DivergedError, Interrupted  # noqa: F401 (Interrupted: re-exported)
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.runs.stopsignals import stop_on_signals


@dataclass
class TrainState:
    """Where training is: enough, with the weights, velocities and generator, to continue."""

    epoch: int = 0                 # epochs completed
    step: int = 0                  # optimizer steps taken in all
    step_in_epoch: int = 0         # steps taken in the current epoch
    order: np.ndarray = None       # the current epoch's shuffled example order
    loss_sum: float = 0.0          # running sums of the current epoch's training batches
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0           # training time spent in the current epoch so far
    history: list = field(default_factory=list)   # one metrics dict per completed epoch

    def to_meta(self):
        return {"epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                "seconds": self.seconds, "history": self.history}

    @classmethod
    def from_meta(cls, meta, order):
        return cls(epoch=meta["epoch"], step=meta["step"], step_in_epoch=meta["step_in_epoch"],
                   order=order, loss_sum=meta["loss_sum"], correct=meta["correct"],
                   seen=meta["seen"], seconds=meta["seconds"], history=list(meta["history"]))


def steps_per_epoch(n_examples, batch_size):
    """Minibatches in one pass over the data; the last one may be smaller."""
    return math.ceil(n_examples / batch_size)


def evaluate(network, images, labels, batch_size=1000, n_classes=NUM_CLASSES,
             keep_predictions=False):
    """Mean loss, accuracy (a fraction) and confusion matrix (rows: true labels) of a split;
    with keep_predictions, also every predicted class in order."""
    loss_fn = SoftmaxCrossEntropy()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    predictions = np.empty(len(labels), dtype=np.int64) if keep_predictions else None
    loss_sum = 0.0
    for start in range(0, len(labels), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        logits = network.forward(x, train=False)
        loss_sum += loss_fn.forward(logits, y, train=False) * len(y)
        guess = logits.argmax(axis=1)
        confusion += np.bincount(y * n_classes + guess,
                                 minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        if keep_predictions:
            predictions[start:start + len(y)] = guess
    n = int(confusion.sum())
    result = {"loss": loss_sum / n if n else float("nan"),
              "accuracy": float(np.trace(confusion) / n) if n else float("nan"),
              "n": n, "confusion": confusion}
    if keep_predictions:
        result["predictions"] = predictions
    return result


def train_step(network, loss_fn, optimizer, images, labels, lr):
    """One step of minibatch gradient descent on (images, labels) at learning rate lr ->
    (the batch's mean loss, its logits). A loss that is not finite raises DivergedError
    before the backward pass, so such a step changes no weight."""
    optimizer.lr = lr
    logits = network.forward(images)
    loss = loss_fn.forward(logits, labels)
    if not math.isfinite(loss):
        raise DivergedError(f"the loss is {loss}")
    network.backward(loss_fn.backward())
    optimizer.step(network.grads)
    return loss, logits


class Trainer:
    """Minibatch SGD over `splits.train`, evaluating `splits.val` and `splits.test` each epoch.

    schedule(step) -> the learning rate of each global step (0-based).
    on_epoch_end(metrics, state) is called after every epoch (state already points at the next
    one); `augment(images, rng) -> images` optionally transforms each training batch, except
    in the last `clean_epochs` epochs. `label_smoothing` smooths the training loss's targets;
    evaluation always scores against the true labels, so its losses compare across runs.
    """

    def __init__(self, network, optimizer, schedule, splits, *, epochs, batch_size,
                 eval_batch_size, rng, progress=False, augment=None, clean_epochs=0,
                 label_smoothing=0.0):
        self.network, self.optimizer, self.schedule = network, optimizer, schedule
        self.splits, self.epochs, self.batch_size = splits, epochs, batch_size
        self.eval_batch_size, self.rng, self.augment = eval_batch_size, rng, augment
        self.progress = progress
        self.clean_epochs = clean_epochs
        self.loss = SoftmaxCrossEntropy(label_smoothing)
        self.steps_per_epoch = steps_per_epoch(len(splits.train.labels), batch_size)

    def fit(self, state, on_epoch_end, stop=None):
        """Train from `state` to the last epoch. stop: a StopRequest (cnntrain.runs.stopsignals)
        whose handlers the caller installed; without one, the trainer installs its own.
        on_epoch_end runs shielded: a signal during its writes is acted on only after them."""
        with ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(stop_on_signals())
            # A diverging run overflows before its loss turns non-finite; the check below
            # reports that in one line, so numpy's warnings would only add noise.
            stack.enter_context(np.errstate(over="ignore", invalid="ignore", divide="ignore"))
            while state.epoch < self.epochs:
                self._check_stop(state, stop)
                self._train_epoch(state, stop)
                metrics = self._end_epoch(state)
                with stop.shielded():
                    on_epoch_end(metrics, state)
        return state

    @staticmethod
    def _check_stop(state, stop):
        if stop.is_set():
            raise Interrupted(state, signum=stop.signum)

    def _train_epoch(self, state, stop):
        images, labels = self.splits.train.images, self.splits.train.labels
        if state.order is None:
            state.order = self.rng.permutation(len(labels))
            state.loss_sum, state.correct, state.seen, state.seconds = 0.0, 0, 0, 0.0
        bar = self._progress_bar(state)
        started = time.perf_counter() - state.seconds
        for i in range(state.step_in_epoch, self.steps_per_epoch):
            batch = state.order[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = images[batch], labels[batch]
            if self.augment is not None and state.epoch < self.epochs - self.clean_epochs:
                x = self.augment(x, self.rng)
            try:
                loss, logits = train_step(self.network, self.loss, self.optimizer, x, y,
                                          self.schedule(state.step))
            except DivergedError as exc:
                # What to change is the run's to say: it knows the config behind the numbers.
                raise DivergedError(f"training diverged at epoch {state.epoch + 1}, step "
                                    f"{state.step + 1}: {exc}") from None

            state.loss_sum += loss * len(y)
            state.correct += int(np.count_nonzero(logits.argmax(axis=1) == y))
            state.seen += len(y)
            state.step += 1
            state.step_in_epoch += 1
            state.seconds = time.perf_counter() - started
            if bar is not None:
                bar.update(1)
                if i % 20 == 0 or i == self.steps_per_epoch - 1:
                    bar.set_postfix_str(self._running(state), refresh=False)
            if stop.is_set():
                if bar is not None:
                    bar.close()
                self._check_stop(state, stop)
        if bar is not None:
            bar.close()

    def _running(self, state):
        return (f"loss {state.loss_sum / state.seen:.4f} "
                f"acc {100 * state.correct / state.seen:.2f}% "
                f"lr {self.optimizer.lr:.4g} {state.seen / max(state.seconds, 1e-9):,.0f} img/s")

    def _progress_bar(self, state):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=self.steps_per_epoch, initial=state.step_in_epoch, unit="batch",
                    desc=f"epoch {state.epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True)

    def _end_epoch(self, state):
        for name, value in self.network.params.items():
            if not np.isfinite(value).all():
                # The last step's update overflowed: such a model is neither scored nor saved.
                raise DivergedError(f"training diverged in epoch {state.epoch + 1}: {name} is no "
                                    "longer finite")
        started = time.perf_counter()
        # The lr of the epoch's last step, from the schedule: a run resumed after that step
        # has taken no step yet, so the optimizer still holds the config's lr.
        metrics = {"epoch": state.epoch + 1, "step": state.step,
                   "lr": self.schedule(state.step - 1),
                   "train_loss": state.loss_sum / state.seen,
                   "train_acc": state.correct / state.seen}
        for split in ("val", "test"):
            data = getattr(self.splits, split)
            if len(data.labels):
                result = evaluate(self.network, data.images, data.labels, self.eval_batch_size)
                metrics[f"{split}_loss"] = result["loss"]
                metrics[f"{split}_acc"] = result["accuracy"]
            else:
                metrics[f"{split}_loss"] = metrics[f"{split}_acc"] = None
        metrics["seconds"] = state.seconds + (time.perf_counter() - started)
        metrics["images_per_s"] = state.seen / max(state.seconds, 1e-9)
        state.history.append(metrics)
        state.epoch += 1
        state.step_in_epoch, state.order = 0, None
        return metrics
