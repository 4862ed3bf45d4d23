"""`cnntrain eval`: a checkpoint's network, rebuilt from the checkpoint alone, scored on a split."""

import numpy as np

from cnntrain.errors import ConfigError
from cnntrain.runs.build import load_network, prepare_data, random_streams
from cnntrain.runs.checkpoint import describe_position
from cnntrain.runs.train import evaluate


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
        raise ConfigError(f"the {split} split of {path} is empty (its config has "
                          f"{split}_size = 0); choose another with --split")
    result = evaluate(network, chosen.images, chosen.labels,
                      batch_size or cfg.train.eval_batch_size, keep_predictions=keep_errors)
    confusion = result["confusion"]
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    report = {"checkpoint": str(path), "split": split, "accuracy": result["accuracy"],
              "loss": result["loss"], "n": result["n"], "per_class": per_class.tolist(),
              "confusion": confusion.tolist(), "epoch": ckpt.meta["epoch"],
              "position": describe_position(ckpt.meta)}
    if keep_errors:
        wrong = np.flatnonzero(result["predictions"] != chosen.labels)
        images = chosen.images[wrong, 0] * cfg.data.std + cfg.data.mean
        report["errors"] = {"images": np.clip(images, 0, 1), "labels": chosen.labels[wrong],
                            "predictions": result["predictions"][wrong]}
    return report
