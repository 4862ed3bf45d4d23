"""What a run says about itself: the greppable epoch line, the metrics.jsonl line, and which
epoch is the best. Where they are written and in which order is cnntrain.runs.runfolder's
business, reading metrics.jsonl back cnntrain.runs.runfolder_metrics'."""

import json
import math

METRIC_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
               "test_loss", "test_acc", "seconds", "images_per_s")


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def epoch_line(m, epochs):
    """One greppable line per epoch, accuracies as percentages, e.g.
    epoch 3/15 train_loss 0.0412 train_acc 98.71% val_acc 98.90% test_acc 98.95% lr 0.0452 41.2s"""
    return (f"epoch {m['epoch']}/{epochs} train_loss {m['train_loss']:.4f} "
            f"train_acc {_percent(m['train_acc'])} val_acc {_percent(m['val_acc'])} "
            f"test_acc {_percent(m['test_acc'])} lr {m['lr']:.4g} {m['seconds']:.1f}s")


def metrics_json(metrics):
    """One metrics.jsonl line: strict JSON, a value that is not a finite number (a split that
    could not be scored) written as null, never as NaN or Infinity."""
    row = {}
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        row[key] = value
    return json.dumps(row, allow_nan=False)


def best_epoch(history):
    """The epoch with the highest validation accuracy (the first of equals), which is the one
    kept as best.npz; without a validation split, the last epoch."""
    scored = [m for m in history if m.get("val_acc") is not None]
    if not scored:
        return history[-1] if history else None
    return max(scored, key=lambda m: (m["val_acc"], -m["epoch"]))
