"""`cnntrain predict`: a checkpoint's verdict on pictures of digits, one line per picture.

Every input is read and preprocessed on its own: a file that cannot be read, or a picture
without ink, gets its one-line error and the others go on. The caller turns "some failed"
into exit code 1. Files are named as cnntrain.data.inputs.display_name shows them, so a name
with a newline or a quote still gives one unambiguous line.
"""

import json

import numpy as np

from cnntrain.apps.inference import CLASS_NAMES, load_predictor
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


def format_line(label, ranked):
    digit, probability = ranked[0]
    others = ", ".join(f"{d} {100 * p:.2f}%" for d, p in ranked)
    return f"{label}: {digit} ({100 * probability:.2f}%)   top {len(ranked)}: {others}"


def format_json(label, ranked):
    return json.dumps({"input": label, "digit": int(ranked[0][0]), "probability": ranked[0][1],
                       "top": [{"digit": int(d), "probability": p} for d, p in ranked]})


def predict_inputs(checkpoint, inputs, *, top=3, raw=False, as_json=False, echo=print,
                   echo_error=print):
    """Predict every picture of `inputs` (files and folders) with `checkpoint`.

    echo gets one result line per picture; echo_error one 'error: ...' line per failure (in
    --json mode a {"input", "error"} object goes to echo as well, so stdout accounts for every
    input). Returns (pictures predicted, failures).
    """
    predictor = load_predictor(checkpoint)
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
            for label, probabilities, error in predicted(predictor, chunk, raw):
                if error is not None:
                    fail(label, error)
                    continue
                ranked = ranking(probabilities, top)
                echo(format_json(label, ranked) if as_json else format_line(label, ranked))
                done += 1
    return done, failed


def predicted(predictor, entries, raw):
    """[(label, grey)] -> [(label, probabilities, None) or (label, None, error)], in order:
    each picture's field made on its own, the good ones predicted together."""
    outcomes = []  # per picture: its field, or the error it met, in input order
    for label, grey in entries:
        try:
            outcomes.append((label, to_field(grey, label, raw), None))
        except CnnTrainError as exc:
            outcomes.append((label, None, str(exc)))
    good = [field for _, field, _ in outcomes if field is not None]
    probabilities = iter(predictor.probabilities(np.stack(good)) if good else ())
    return [(label, None, error) if error is not None else (label, next(probabilities), None)
            for label, _, error in outcomes]
