"""What a run writes about itself: the greppable epoch line, metrics.jsonl and train.log."""

import json
from pathlib import Path

from cnntrain.fileio import append_line, atomic_write_text

# What a run folder holds (see cnntrain.run); `cnntrain summarize` recognises runs by them.
RUN_FILES = ("config.ini", "metrics.jsonl", "train.log", "summary.json", "checkpoints")

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


class RunLog:
    """metrics.jsonl (one JSON object per epoch, accuracies as fractions) and train.log."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.log_path = self.run_dir / "train.log"

    def line(self, text):
        append_line(self.log_path, text)

    def epoch(self, metrics):
        append_line(self.metrics_path, json.dumps({k: metrics[k] for k in METRIC_KEYS}))

    def restart_metrics(self, history):
        """On resume: metrics.jsonl becomes exactly the checkpoint's history, dropping any
        epoch logged after that checkpoint was written."""
        atomic_write_text(self.metrics_path,
                          "".join(json.dumps({k: m[k] for k in METRIC_KEYS}) + "\n" for m in history))


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
