"""Several trained networks answering together: a committee (issue #29).

    model = load_model(["a/checkpoints/last.npz", "b/checkpoints/last.npz"], combine="vote")
    probs = model.probabilities(fields)   # (N, 10): the mean of the members' probabilities
    digits = model.predict(fields)        # (N,): by the committee's rule

A committee has the interface of one Predictor (probabilities, predict, summary, members,
field_shape), so predict, serve and eval take either. Every member applies its own
normalisation to the same [0, 1] fields, so members may differ in architecture, dtype and
[data] mean and std, as long as each reads a 28x28 field and answers the 10 digits.

Two rules combine the members:
  mean: the digit with the highest mean probability;
  vote: the digit most members answer, a tie broken by the highest mean probability among the
        tied digits.
With tta, each member's probabilities are first averaged over the field and its four one-pixel
shifts (up, down, left, right), the pixels moved in being background (0).
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from cnntrain.constants import INPUT_SHAPE, NUM_CLASSES
from cnntrain.errors import CnnTrainError

COMBINE_RULES = ("mean", "vote")
# The rule a committee uses when none is asked for (combine=None, as the CLI passes without
# --combine): the one that measured better on MNIST's test set (docs/results.md, Committees).
# export always averages.
DEFAULT_COMBINE = "vote"
# (rows, columns) each field is moved by for test-time augmentation; (0, 0) is the field itself.
TTA_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def combine_mean(member_probabilities):
    """(k, N, K) members' probabilities -> (N,) the digits with the highest mean probability."""
    return np.argmax(np.mean(member_probabilities, axis=0), axis=1)


def combine_vote(member_probabilities):
    """(k, N, K) members' probabilities -> (N,) the digits most members answer; among digits
    with as many votes, the one with the highest mean probability."""
    member_probabilities = np.asarray(member_probabilities)
    k, n, classes = member_probabilities.shape
    answers = np.argmax(member_probabilities, axis=2)                      # (k, N)
    votes = np.zeros((n, classes), dtype=np.int64)
    np.add.at(votes, (np.arange(n)[None, :].repeat(k, axis=0), answers), 1)
    tied = votes == votes.max(axis=1, keepdims=True)                       # (N, K)
    mean = np.mean(member_probabilities, axis=0)
    return np.argmax(np.where(tied, mean, -np.inf), axis=1)


COMBINERS = {"mean": combine_mean, "vote": combine_vote}


def shift_fields(fields, rows, columns):
    """(N, H, W) fields moved down by `rows` and right by `columns` (negative: up, left),
    background (0) moved in."""
    fields = np.asarray(fields)
    shifted = np.zeros_like(fields)
    h, w = fields.shape[1:]
    src_r = slice(max(0, -rows), h - max(0, rows))
    dst_r = slice(max(0, rows), h - max(0, -rows))
    src_c = slice(max(0, -columns), w - max(0, columns))
    dst_c = slice(max(0, columns), w - max(0, -columns))
    shifted[:, dst_r, dst_c] = fields[:, src_r, src_c]
    return shifted


def tta_probabilities(predictor, fields):
    """One network's probabilities (N, K), averaged over TTA_SHIFTS of the fields."""
    fields = np.asarray(fields, dtype=np.float64)
    total = 0.0
    for rows, columns in TTA_SHIFTS:
        total = total + predictor.probabilities(shift_fields(fields, rows, columns))
    return total / len(TTA_SHIFTS)


class Committee:
    """Predictors (cnntrain.apps.inference) answering together by `combine`, optionally each
    with test-time augmentation."""

    def __init__(self, members, *, combine=None, tta=False, names=None):
        combine = DEFAULT_COMBINE if combine is None else combine
        if combine not in COMBINE_RULES:
            raise CnnTrainError(f"--combine must be one of {', '.join(COMBINE_RULES)}, "
                                f"got {combine!r}")
        self.members = tuple(members)
        self.combine = combine
        self.tta = bool(tta)
        self.names = tuple(names) if names else member_names([m.path for m in self.members])

    @property
    def field_shape(self):
        return tuple(INPUT_SHAPE[1:])

    def member_probabilities(self, fields):
        """(N, 28, 28) fields in [0, 1] -> (k, N, K) float64, one row block per member."""
        one = tta_probabilities if self.tta else (lambda p, f: p.probabilities(f))
        return np.stack([np.asarray(one(member, fields), dtype=np.float64)
                         for member in self.members])

    def answer(self, fields):
        """Everything the committee says about the fields, from one pass of each member:
        "members" (k, N, K), "probabilities" (N, K) their mean, "predictions" (N,) by the
        committee's rule, "member_predictions" (k, N)."""
        members = self.member_probabilities(fields)
        return {"members": members, "probabilities": members.mean(axis=0),
                "predictions": COMBINERS[self.combine](members),
                "member_predictions": np.argmax(members, axis=2)}

    def probabilities(self, fields):
        return self.member_probabilities(fields).mean(axis=0)

    def predict(self, fields):
        return COMBINERS[self.combine](self.member_probabilities(fields))

    def summary(self):
        """JSON-ready: the committee's rule and each member's own summary."""
        members = []
        for name, member in zip(self.names, self.members):
            summary = member.summary()
            summary["name"] = name
            members.append(summary)
        return {
            "name": f"committee of {len(members)}: {', '.join(self.names)}",
            "path": None,
            "epoch": None,
            "test_accuracy": None,
            "val_accuracy": None,
            "parameters": sum(m["parameters"] for m in members),
            # Every member's layer lines, each under its member's name, for a client that
            # reads "layers" as it does for one network.
            "layers": [f"{m['name']}: {line}" for m in members for line in m["layers"]],
            "input_shape": list(INPUT_SHAPE),
            "classes": members[0]["classes"],
            "combine": self.combine,
            "tta": self.tta,
            "members": members,
        }


def member_names(paths):
    """Short distinct names: each checkpoint's run folder name (seed-0), with as many parent
    folders as it takes to tell the members apart (bn-aug/seed-0, bn-aug-k7/seed-3)."""
    from cnntrain.apps.inference import checkpoint_name

    parts = []
    for path in paths:
        path = Path(path)
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        leaf = checkpoint_name(path)
        parents = [p.name for p in run.resolve().parents if p.name][:3] \
            if path.parent.name == "checkpoints" else []
        parents.reverse()
        parts.append((parents, leaf))
    for depth in range(0, 4):
        names = ["/".join(parents[len(parents) - depth:] + [leaf]) if depth else leaf
                 for parents, leaf in parts]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


def _file_identity(path):
    """(device, inode) and the SHA-256 of the bytes: a file given twice, under any name or as a
    copy, has the same one or the other."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    st = os.stat(path)
    return (st.st_dev, st.st_ino), digest.hexdigest()


def check_distinct(paths):
    """CnnTrainError naming the pair when one checkpoint is given twice (same file, a link
    to it, or a byte-identical copy)."""
    seen_files, seen_bytes = {}, {}
    for path in paths:
        try:
            inode, digest = _file_identity(path)
        except OSError:
            continue  # the loader gives the one-line reason
        first = seen_files.get(inode) or seen_bytes.get(digest)
        if first is not None:
            how = "the same file" if inode in seen_files else "a byte-identical copy"
            raise CnnTrainError(f"{path}: {how} as {first}, given twice; a committee needs "
                                "each network once")
        seen_files[inode], seen_bytes[digest] = path, path


def check_member(path, predictor):
    """CnnTrainError naming `path` unless its network reads one 28x28 field and answers the
    digits (load_predictor has checked the 10 outputs)."""
    if tuple(predictor.network.input_shape) != tuple(INPUT_SHAPE):
        raise CnnTrainError(f"{path}: its network reads {predictor.network.input_shape}, not "
                            f"{tuple(INPUT_SHAPE)}; a committee's members all read one "
                            f"28x28 MNIST field")
    n_out = predictor.network.summary()[-1].output_shape
    if tuple(n_out) != (NUM_CLASSES,):
        raise CnnTrainError(f"{path}: its network outputs {n_out}, not {NUM_CLASSES} scores")


def load_model(paths, *, combine=None, tta=False):
    """One checkpoint without tta -> its Predictor; otherwise a Committee of them all
    (combine None: by DEFAULT_COMBINE). Every refusal is one line naming the checkpoint at
    fault."""
    from cnntrain.apps.inference import load_predictor

    paths = [str(p) for p in paths]
    if not paths:
        raise CnnTrainError("give at least one checkpoint")
    if len(paths) == 1 and not tta:
        return load_predictor(paths[0])
    check_distinct(paths)
    members = []
    for path in paths:
        predictor = load_predictor(path)
        check_member(path, predictor)
        members.append(predictor)
    return Committee(members, combine=combine, tta=tta)


def sweep_checkpoints(sweep_dir):
    """(checkpoints, left_out) of a sweep folder (scripts/sweep.sh's SWEEP_DIR): the final
    weights (checkpoints/last.npz, as the results tables use) of every run folder in it whose
    run finished, sorted by folder name, and [(run folder, its state)] of the run folders
    that did not finish. CnnTrainError (one line) when fewer than two runs finished."""
    from cnntrain.runs import runfolder_layout as layout

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CnnTrainError(f"--committee {sweep_dir}: not a folder; give a sweep's folder "
                            "(scripts/sweep.sh -o SWEEP_DIR), which holds one folder per run")
    finished, left_out = [], []
    for run in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if not layout.is_run_folder(run):
            continue
        state = layout.folder_state(run)
        if state == layout.FINISHED:
            finished.append(run / layout.LAST)
        else:
            left_out.append((run, state))
    if len(finished) < 2:
        unfinished = ", ".join(f"{run.name} ({state})" for run, state in left_out)
        raise CnnTrainError(f"--committee {sweep_dir}: {len(finished)} finished run(s), a "
                            "committee needs at least 2"
                            + (f"; not finished: {unfinished}" if left_out else ""))
    return finished, left_out
