"""`cnntrain eval` of a committee: every member and the committee scored on one split.

The split is read once, as fields in [0, 1] (cnntrain.data.mnist.field_split), and every member
gets those same fields, normalised its own way (cnntrain.apps.inference.Predictor), so members
may differ in [data] mean and std. Members whose configs select different images for the split
(another test_size, or val_size for the validation split, ...) are refused: their scores would
not be of the same images.
"""

import numpy as np

from cnntrain.apps.committee import COMBINERS
from cnntrain.data.download import fetch_mnist
from cnntrain.data.mnist import field_split, read_mnist, split_indices
from cnntrain.errors import ConfigError
from cnntrain.runs.build import random_streams
from cnntrain.runs.evaluate import class_report, confusion_matrix, empty_split_error

# The config keys that choose each split's images (cnntrain.data.mnist.split_indices): the
# first of them two members differ in is named when their images differ.
SPLIT_KEYS = {
    "test": ("data.test_size", "train.seed"),
    "val": ("data.val_size", "train.seed"),
    "train": ("data.val_size", "data.train_size", "train.seed"),
}


def _config_value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def split_index(cfg, split, n_train, n_test, path):
    """The indices of `split`'s images in the files (None: the whole test set) that the config
    of checkpoint `path` selects, exactly as its training run selected them."""
    _, data_rng, _ = random_streams(cfg.train.seed)
    try:
        chosen = split_indices(n_train, n_test, val_size=cfg.data.val_size,
                               train_size=cfg.data.train_size, test_size=cfg.data.test_size,
                               rng=data_rng)
    except ValueError as exc:
        raise ConfigError(f"{path}: its config's split does not fit the data: {exc}") from None
    return dict(zip(("train", "val", "test"), chosen))[split]


def common_index(members, split, n_train, n_test):
    """The split's indices, the same for every member (Predictors with .config and .path);
    ConfigError naming two checkpoints and the key they differ in otherwise."""
    first = members[0]
    index = split_index(first.config, split, n_train, n_test, first.path)
    for member in members[1:]:
        other = split_index(member.config, split, n_train, n_test, member.path)
        same = (index is None and other is None) or (
            index is not None and other is not None and np.array_equal(index, other))
        if same:
            continue
        differing = [key for key in SPLIT_KEYS[split]
                     if _config_value(first.config, key) != _config_value(member.config, key)]
        why = (f"{differing[0]} is {_config_value(first.config, differing[0])} in the first "
               f"and {_config_value(member.config, differing[0])} in the second"
               if differing else "their configs select other images")
        raise ConfigError(f"{first.path} and {member.path} score different {split} images: "
                          f"{why}; a committee's members must share the split settings")
    return index


def cross_entropy(probabilities, labels):
    """(N, K) probabilities, (N,) labels -> the mean of -log p(true class); a probability
    rounded to 0 counts as the smallest float64, so one confident mistake stays finite."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, np.finfo(np.float64).tiny))))


def score_committee(member_probabilities, labels, combine):
    """(k, N, K) members' probabilities and (N,) labels -> the scores of each member and of
    the committee: "members" [{accuracy, loss}], "accuracy", "loss" (cross-entropy of the mean
    probabilities), "predictions" (N,) by the rule `combine`, "member_predictions" (k, N),
    and class_report's "per_class" and "confusion"."""
    member_probabilities = np.asarray(member_probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    member_predictions = np.argmax(member_probabilities, axis=2)
    members = [{"accuracy": float(np.mean(guess == labels)), "loss": cross_entropy(probs, labels)}
               for probs, guess in zip(member_probabilities, member_predictions)]
    predictions = COMBINERS[combine](member_probabilities)
    return {"members": members, "accuracy": float(np.mean(predictions == labels)),
            "loss": cross_entropy(member_probabilities.mean(axis=0), labels),
            "predictions": predictions, "member_predictions": member_predictions,
            **class_report(confusion_matrix(labels, predictions,
                                            n_classes=member_probabilities.shape[2]))}


def member_probabilities(committee, fields, batch_size):
    """(N, 28, 28) fields -> (k, N, K): each member's probabilities, batch_size at a time."""
    return np.concatenate([committee.member_probabilities(fields[start:start + batch_size])
                           for start in range(0, len(fields), batch_size)], axis=1)


def split_source(members, split, *, data_dir=None, mirrors=(), progress=True):
    """(uint8 images (N, 28, 28), labels, index) of the split every member is scored on: the
    files' images and the indices of the split's (None: all), the same for every member."""
    cfg = members[0].config
    folder, _ = fetch_mnist(data_dir, mirrors, config_dir=cfg.data.dir or None,
                            config_mirrors=cfg.data.mirrors, progress=progress)
    (train_x, train_y), (test_x, test_y) = read_mnist(folder)
    index = common_index(members, split, len(train_y), len(test_y))
    return (test_x, test_y, index) if split == "test" else (train_x, train_y, index)


def load_split(members, split, *, data_dir=None, mirrors=(), progress=True):
    """The Split (fields in [0, 1]) every member is scored on, read once."""
    chosen = field_split(*split_source(members, split, data_dir=data_dir, mirrors=mirrors,
                                       progress=progress))
    if not len(chosen):
        raise empty_split_error(split, members[0].path)
    return chosen


def evaluate_committee(committee, *, split="test", batch_size=None, data_dir=None, mirrors=(),
                       progress=True, keep_errors=False):
    """Score a Committee (cnntrain.apps.committee) and each of its members on a split.

    keep_errors adds "errors": the committee's mistakes, their fields (M, 28, 28) in [0, 1],
    true labels, the committee's predictions, each member's ("member_predictions" (k, M)) and
    the members' names.
    """
    members = committee.members
    chosen = load_split(members, split, data_dir=data_dir, mirrors=mirrors, progress=progress)
    fields = chosen.images[:, 0]
    batch_size = batch_size or members[0].config.train.eval_batch_size
    scores = score_committee(member_probabilities(committee, fields, batch_size),
                             chosen.labels, committee.combine)
    report = {
        "members": [{"name": name, "checkpoint": str(member.path), **score}
                    for name, member, score in zip(committee.names, members, scores["members"])],
        "accuracy": scores["accuracy"], "loss": scores["loss"],
        "per_class": scores["per_class"], "confusion": scores["confusion"],
        "combine": committee.combine, "tta": committee.tta, "split": split, "n": len(fields),
    }
    if keep_errors:
        wrong = np.flatnonzero(scores["predictions"] != chosen.labels)
        report["errors"] = {"images": fields[wrong], "labels": chosen.labels[wrong],
                            "predictions": scores["predictions"][wrong],
                            "member_predictions": scores["member_predictions"][:, wrong],
                            "names": list(committee.names)}
    return report
