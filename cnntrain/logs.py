"""What a run says about itself: the greppable epoch line, the metrics.jsonl line, reading
them back. Where they are written, and in which order, is cnntrain.runfolder's business."""

import json
import math
from pathlib import Path

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


def __getattr__(name):
    # The run folder's layout is owned by cnntrain.runfolder; RUN_FILES stays importable here
    # for older callers without an import cycle.
    if name == "RUN_FILES":
        from cnntrain.runfolder import RUN_FILES
        return RUN_FILES
    raise AttributeError(name)


def read_metrics(run_dir):
    """The epochs recorded in RUN_DIR/metrics.jsonl ([] when there is none); a line cut short
    by a crash is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return rows


def best_epoch(history):
    """The epoch with the highest validation accuracy (the first of equals), which is the one
    kept as best.npz; without a validation split, the last epoch."""
    scored = [m for m in history if m.get("val_acc") is not None]
    if not scored:
        return history[-1] if history else None
    return max(scored, key=lambda m: (m["val_acc"], -m["epoch"]))
