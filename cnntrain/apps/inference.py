"""A trained network ready to answer: rebuilt from a checkpoint alone, in evaluation mode.

    predictor = Predictor.from_checkpoint("runs/lenet5/checkpoints/best.npz")
    probs = predictor.probabilities(fields)   # fields: (N, 28, 28) in [0, 1], ink high

The fields are MNIST-like pictures (cnntrain.data.preprocess.to_mnist_field makes them from any
picture of a digit); the checkpoint's own [data] mean and std are applied here, exactly as
training applied them, so callers never see normalisation.
"""

import json
import threading
from pathlib import Path

import numpy as np

from cnntrain.constants import NUM_CLASSES
from cnntrain.errors import CnnTrainError
from cnntrain.nn import functional as fn

CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))


def checkpoint_name(path):
    """runs/lenet5/checkpoints/best.npz -> 'lenet5'; any other file -> its file name."""
    path = Path(path)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.name


def _epoch_metrics(meta):
    """The metrics row of the epoch a checkpoint was saved after, or None (none completed)."""
    history = meta.get("history") or []
    for row in history:
        if isinstance(row, dict) and row.get("epoch") == meta.get("epoch"):
            return row
    return None


def _summary_test_accuracy(path, epoch):
    """The test accuracy the run's summary.json records for `epoch`, or None."""
    run_dir = Path(path).parent.parent if Path(path).parent.name == "checkpoints" else None
    if run_dir is None:
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("best", "final"):
        row = summary.get(key) if isinstance(summary, dict) else None
        if isinstance(row, dict) and row.get("epoch") == epoch:
            return row.get("test_acc")
    return None


class Predictor:
    """A network with its weights and the normalisation it was trained with.

    probabilities(fields: (N, 28, 28) floats in [0, 1]) -> (N, 10) float64, rows sum to 1.
    logits(fields) -> (N, 10) in the network's dtype, before softmax.

    Safe to call from several threads: the layers reuse scratch arrays from call to call, so
    forward passes take turns (a lock), each still computing its whole batch at once.
    """

    def __init__(self, network, *, mean, std, meta=None, path=None, config=None):
        self.network = network
        self.config = config  # the checkpoint's resolved Config, when it came from one
        self.mean, self.std = float(mean), float(std)
        self.meta = dict(meta or {})
        self.path = None if path is None else Path(path)
        self._forward_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path):
        """Load `path` (no pickle); CheckpointError / ConfigError (one line) if unusable."""
        from cnntrain.runs.build import load_network

        ckpt, cfg, network = load_network(path)
        return cls(network, mean=cfg.data.mean, std=cfg.data.std, meta=ckpt.meta, path=path,
                   config=cfg)

    @property
    def field_shape(self):
        """The (H, W) of one input field: (28, 28) for MNIST networks."""
        return tuple(self.network.input_shape[1:])

    def normalise(self, fields):
        """(N, H, W) fields in [0, 1] -> (N, 1, H, W) network input, (x - mean) / std, in the
        network's dtype (computed in float64 first, as training's lookup table was)."""
        fields = np.asarray(fields, dtype=np.float64)
        if fields.ndim == 2:
            fields = fields[None]
        if fields.ndim != 3 or fields.shape[1:] != self.field_shape:
            raise ValueError(f"expected fields of shape (N, {self.field_shape[0]}, "
                             f"{self.field_shape[1]}), got {fields.shape}")
        x = (fields - self.mean) / self.std
        return x[:, None].astype(self.network.dtype)

    def logits(self, fields):
        x = self.normalise(fields)
        with self._forward_lock:
            return self.network.forward(x, train=False)

    def probabilities(self, fields):
        return fn.softmax(np.asarray(self.logits(fields), dtype=np.float64))

    def predict(self, fields):
        """(N, 28, 28) fields -> (N,) the most probable digits (as a Committee's predict)."""
        return np.argmax(self.probabilities(fields), axis=1)

    @property
    def members(self):
        """The networks answering: this one (a Committee has several)."""
        return (self,)

    def test_accuracy(self):
        """Test accuracy after the checkpoint's epoch: from the checkpoint's own metrics,
        else from its run's summary.json; None if neither knows."""
        row = _epoch_metrics(self.meta)
        if row is not None and row.get("test_acc") is not None:
            return row["test_acc"]
        if self.path is None:
            return None
        return _summary_test_accuracy(self.path, self.meta.get("epoch"))

    def summary(self):
        """What a user (or a server's /info) shows about the model, JSON-ready."""
        row = _epoch_metrics(self.meta) or {}
        layers = []
        for item in self.network.summary():
            shape = "x".join(map(str, item.output_shape))
            layers.append(f"{item.name:<10}{item.layer:<40}{shape:>12}{item.params:>10,}")
        return {
            "name": checkpoint_name(self.path) if self.path else "model",
            "path": str(self.path) if self.path else None,
            "epoch": self.meta.get("epoch"),
            "test_accuracy": self.test_accuracy(),
            "val_accuracy": row.get("val_acc"),
            "parameters": int(self.network.n_params),
            "layers": layers,
            "input_shape": list(self.network.input_shape),
            "normalisation": {"mean": self.mean, "std": self.std},
            "classes": list(CLASS_NAMES),
            "dtype": str(self.network.dtype),
        }


def load_predictor(path):
    """Predictor.from_checkpoint, with a one-line error for a network that is not a digit
    classifier on 28x28 pictures (it must output 10 scores)."""
    predictor = Predictor.from_checkpoint(path)
    rows = predictor.network.summary()
    if rows[-1].output_shape != (len(CLASS_NAMES),):
        raise CnnTrainError(f"{path}: its network outputs {rows[-1].output_shape}, not "
                            f"{len(CLASS_NAMES)} class scores")
    return predictor
