"""`cnntrain predict`: a checkpoint's verdict on pictures of digits, one line per picture.

With several checkpoints (or --tta) a committee (cnntrain.apps.committee) answers: the digit by
its rule, that digit's mean probability and the top K of the mean probabilities; --json adds
each member's own answer.

Every input is read and preprocessed on its own: a file that cannot be read, or a picture
without ink, gets its one-line error and the others go on. The caller turns "some failed"
into exit code 1. Files are named as cnntrain.data.inputs.display_name shows them, so a name
with a newline or a quote still gives one unambiguous line.
"""

import json
import os

import numpy as np

from cnntrain.apps.committee import load_model
from cnntrain.apps.inference import CLASS_NAMES
from cnntrain.data.inputs import display_name, expand_inputs, read_input
from cnntrain.data.preprocess import FIELD, grey_levels, to_mnist_field
from cnntrain.errors import CnnTrainError

CHUNK = 256  # pictures preprocessed and predicted at a time


def raw_field(grey, label):
    """--raw: a 28x28 picture already MNIST-like (ink high, centred) is used as it is."""
    grey = np.asarray(grey)
    if grey.shape != (FIELD, FIELD):
        raise CnnTrainError(f"{label}: is {grey.shape[0]}x{grey.shape[1]}; --raw takes "
                            f"{FIELD}x{FIELD} MNIST-like pictures (drop --raw to preprocess it)")
    try:
        return grey_levels(grey).astype(np.float32)
    except ValueError as exc:
        raise CnnTrainError(f"{label}: {exc}") from None


def to_field(grey, label, raw=False):
    """One picture -> its 28x28 field; CnnTrainError (one line naming `label`) if it fails."""
    if raw:
        return raw_field(grey, label)
    try:
        return to_mnist_field(grey)
    except CnnTrainError as exc:
        raise CnnTrainError(f"{label}: {exc}") from None
    except ValueError as exc:
        raise CnnTrainError(f"{label}: {exc}") from None


def ranking(probabilities, top):
    """(10,) probabilities -> the `top` most likely [(class name, probability)], best first
    (ties in class order)."""
    order = np.argsort(-probabilities, kind="stable")[:top]
    return [(CLASS_NAMES[i], float(probabilities[i])) for i in order]


def format_line(label, ranked, answer=None):
    """One picture's line: the answer (a committee's `answer`, see answers; else the most
    likely digit), its probability and the top K."""
    digit, probability = ranked[0] if answer is None else (CLASS_NAMES[answer["digit"]],
                                                           answer["probability"])
    others = ", ".join(f"{d} {100 * p:.2f}%" for d, p in ranked)
    return f"{label}: {digit} ({100 * probability:.2f}%)   top {len(ranked)}: {others}"


def format_json(label, ranked, answer=None):
    """One picture's JSON object; a committee's `answer` (see answers) adds its digit by the
    committee's rule and "members"."""
    digit = int(ranked[0][0]) if answer is None else answer["digit"]
    probability = ranked[0][1] if answer is None else answer["probability"]
    record = {"input": label, "digit": digit, "probability": probability,
              "top": [{"digit": int(d), "probability": p} for d, p in ranked]}
    if answer is not None and answer["members"] is not None:
        record["members"] = answer["members"]
    return json.dumps(record)


def answers(model, fields):
    """(N, 28, 28) fields -> per picture {"probabilities" (10,), "digit", "probability" (of
    that digit), "members" (a committee's: [{name, digit, probability}], else None)}."""
    if not hasattr(model, "answer"):  # one network
        return [{"probabilities": p, "digit": int(np.argmax(p)), "probability": float(p.max()),
                 "members": None} for p in model.probabilities(fields)]
    said = model.answer(fields)
    out = []
    for n, digit in enumerate(said["predictions"]):
        members = [{"name": name, "digit": int(guess), "probability": float(probs[n, guess])}
                   for name, guess, probs in zip(model.names, said["member_predictions"][:, n],
                                                 said["members"])]
        out.append({"probabilities": said["probabilities"][n], "digit": int(digit),
                    "probability": float(said["probabilities"][n, digit]), "members": members})
    return out


def predict_inputs(checkpoints, inputs, *, top=3, raw=False, as_json=False, echo=print,
                   echo_error=print, combine=None, tta=False):
    """Predict every picture of `inputs` (files and folders) with `checkpoints` (one path, or
    several answering as a committee by `combine`, each with test-time augmentation if `tta`).

    echo gets one result line per picture; echo_error one 'error: ...' line per failure (in
    --json mode a {"input", "error"} object goes to echo as well, so stdout accounts for every
    input). Returns (pictures predicted, failures).
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    model = load_model(paths, combine=combine, tta=tta)
    top = max(1, min(top, len(CLASS_NAMES)))
    done = failed = 0

    def fail(label, message):
        nonlocal failed
        failed += 1
        echo_error(f"error: {message}")
        if as_json:
            echo(json.dumps({"input": label, "error": message}))

    for path in expand_inputs(inputs):
        try:
            entries = read_input(path)
        except CnnTrainError as exc:
            fail(display_name(path), str(exc))
            continue
        # By chunks, so a stack of many pictures holds one chunk's fields and activations.
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            for label, answer, error in predicted(model, chunk, raw):
                if error is not None:
                    fail(label, error)
                    continue
                ranked = ranking(answer["probabilities"], top)
                echo(format_json(label, ranked, answer) if as_json
                     else format_line(label, ranked, answer))
                done += 1
    return done, failed


def predicted(model, entries, raw):
    """[(label, grey)] -> [(label, answer, None) or (label, None, error)], in order: each
    picture's field made on its own, the good ones answered together (answers)."""
    outcomes = []  # per picture: its field, or the error it met, in input order
    for label, grey in entries:
        try:
            outcomes.append((label, to_field(grey, label, raw), None))
        except CnnTrainError as exc:
            outcomes.append((label, None, str(exc)))
    good = [field for _, field, _ in outcomes if field is not None]
    said = iter(answers(model, np.stack(good)) if good else ())
    return [(label, None, error) if error is not None else (label, next(said), None)
            for label, _, error in outcomes]
