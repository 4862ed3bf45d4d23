"""`cnntrain eval`: a checkpoint's network, rebuilt from the checkpoint alone, scored on a split."""

import numpy as np

from cnntrain.constants import NUM_CLASSES
from cnntrain.errors import ConfigError
from cnntrain.runs.build import load_network, prepare_data, random_streams
from cnntrain.runs.checkpoint import describe_position
from cnntrain.runs.train import evaluate


def confusion_matrix(labels, predictions, n_classes=NUM_CLASSES):
    """(N,) true and (N,) predicted classes -> (K, K) int64 counts, rows the true class."""
    flat = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predictions)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_report(confusion):
    """(K, K) confusion matrix -> the JSON-ready "per_class" accuracies (a class without
    images scores 0) and "confusion" rows that eval prints for one network or a committee."""
    confusion = np.asarray(confusion)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"per_class": per_class.tolist(), "confusion": confusion.tolist()}


def empty_split_error(split, path):
    return ConfigError(f"the {split} split of {path} is empty (its config has "
                       f"{split}_size = 0); choose another with --split")


def evaluate_checkpoint(path, *, split="test", batch_size=None, data_dir=None, mirrors=(),
                        progress=True, keep_errors=False):
    """Rebuild the network from a checkpoint alone and score it on a split.

    keep_errors adds "errors": the misclassified images (un-normalised to [0, 1], (M, 28, 28)),
    their true labels and the predictions, in split order.
    """
    ckpt, cfg, network = load_network(path)
    _, data_rng, _ = random_streams(cfg.train.seed)
    splits = prepare_data(cfg, data_rng, data_dir=data_dir, mirrors=mirrors, progress=progress)
    chosen = getattr(splits, split)
    if not len(chosen.labels):
        raise empty_split_error(split, path)
    result = evaluate(network, chosen.images, chosen.labels,
                      batch_size or cfg.train.eval_batch_size, keep_predictions=keep_errors)
    report = {"checkpoint": str(path), "split": split, "accuracy": result["accuracy"],
              "loss": result["loss"], "n": result["n"], **class_report(result["confusion"]),
              "epoch": ckpt.meta["epoch"], "position": describe_position(ckpt.meta)}
    if keep_errors:
        wrong = np.flatnonzero(result["predictions"] != chosen.labels)
        images = chosen.images[wrong, 0] * cfg.data.std + cfg.data.mean
        report["errors"] = {"images": np.clip(images, 0, 1), "labels": chosen.labels[wrong],
                            "predictions": result["predictions"][wrong]}
    return report
