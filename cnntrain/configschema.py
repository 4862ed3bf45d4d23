"""The config keys: one declarative table, `SCHEMA`, of every key's kind, default and help.

Every key lives in exactly one row; the Config dataclasses, the defaults, the checks, the
error messages, `valid_keys()`, `config_to_ini()` and docs/configs.md are all derived from it,
so adding a key is adding a row, and the row's help text is the key's documentation. A kind
(Int, Float, Bool, Choice, Text, Mirrors, Lines) says how a key's text becomes a value, how
the expected value is described in an error, and how the value is written back.

Reading files, `--set` overrides and the rules that tie several keys together live in
cnntrain/config.py. Like it, this module stays free of numpy, so that `cnntrain --help`
answers quickly.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import math
import re
from typing import Any, Optional, Tuple

from cnntrain.constants import (
    INIT_SCHEMES,
    MNIST_TEST_IMAGES,
    MNIST_TRAIN_IMAGES,
    SCHEDULES,
)

# Where configparser would start an inline comment: at the start of a value or after
# whitespace. A value containing one can be given with --set but could never be written
# back to an INI file intact, so such values are refused up front.
_COMMENT_MARK = re.compile(r"(?:^|\s)[;#]")


class InvalidValue(ValueError):
    """A raw value that does not fit its key; the text, if any, says what exactly is wrong."""


def short_number(x):
    """A number as messages and range descriptions show it: 0.5, 1e-05, 34."""
    return f"{x:g}"


def did_you_mean(word, choices, fmt="'{}'"):
    """' did you mean ...?' or ''; case and surrounding spaces are ignored when matching."""
    by_lower = {choice.lower(): choice for choice in choices}
    wanted = word.strip().lower()
    if wanted in by_lower:
        match = by_lower[wanted]
    else:
        close = difflib.get_close_matches(wanted, list(by_lower), n=1, cutoff=0.6)
        if not close:
            return ""
        match = by_lower[close[0]]
    return f"did you mean {fmt.format(match)}?"


# --- kinds of value -------------------------------------------------------------------


class _Kind:
    """How one key's text becomes a value, how it is described, and how it is written back."""

    type = str
    expected = ""
    multiline = False  # written as indented continuation lines by config_to_ini

    def parse(self, raw):
        raise NotImplementedError

    def parse_override(self, raw):
        return self.parse(raw)

    def format(self, value):
        return str(value)


class Int(_Kind):
    type = int

    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.expected = f"an integer from {lo} to {hi}"
        elif lo is not None:
            self.expected = f"an integer >= {lo}"
        else:
            self.expected = "an integer"

    def parse(self, raw):
        text = raw.strip()
        # int() alone would also take '1_000' and non-ASCII digits; a config should not.
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise InvalidValue()
        value = int(text)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise InvalidValue()
        return value


class Float(_Kind):
    type = float

    def __init__(self, lo=None, hi=None,
                 lo_open=False, hi_open=False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        if lo is not None and hi is not None:
            if lo_open or hi_open:
                self.expected = (f"a number in {'(' if lo_open else '['}{short_number(lo)}, "
                                 f"{short_number(hi)}{')' if hi_open else ']'}")
            else:
                self.expected = f"a number from {short_number(lo)} to {short_number(hi)}"
        elif lo is not None:
            self.expected = f"a number {'>' if lo_open else '>='} {short_number(lo)}"
        else:
            self.expected = "a number"

    def parse(self, raw):
        text = raw.strip()
        if not text.isascii():
            raise InvalidValue()
        try:
            value = float(text)
        except ValueError:
            raise InvalidValue() from None
        if not math.isfinite(value):
            raise InvalidValue()
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise InvalidValue()
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            raise InvalidValue()
        return value

    def format(self, value):
        return repr(float(value))  # repr is the shortest text that reads back bit-exact


class Bool(_Kind):
    type = bool
    expected = "true or false (yes/no, on/off and 1/0 work too)"

    def parse(self, raw):
        value = configparser.ConfigParser.BOOLEAN_STATES.get(raw.strip().lower())
        if value is None:
            raise InvalidValue()
        return value

    def format(self, value):
        return "true" if value else "false"


class Choice(_Kind):
    def __init__(self, *options):
        self.options = options
        self.expected = "one of " + ", ".join(options)

    def parse(self, raw):
        text = raw.strip()
        if text not in self.options:
            raise InvalidValue(did_you_mean(text, self.options))
        return text


class Text(_Kind):
    """A single-line string, typically a path."""

    def __init__(self, allow_empty=True):
        self.allow_empty = allow_empty
        self.expected = "a path on one line" if allow_empty else "a non-empty path on one line"

    def parse(self, raw):
        text = raw.strip()
        if "\n" in text or (not text and not self.allow_empty):
            raise InvalidValue()
        if _COMMENT_MARK.search(text):
            raise InvalidValue("';' or '#' at the start or after a space begins an INI comment")
        return text


class Mirrors(_Kind):
    type = Tuple[str, ...]
    expected = ("base URLs starting with http://, https:// or file://, or directory paths, "
                "separated by spaces, commas or newlines")

    def parse(self, raw):
        items = tuple(item for item in re.split(r"[\s,]+", raw) if item)
        for item in items:
            if item[0] in ";#":
                raise InvalidValue(f"{item!r} would read back as an INI comment")
            scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", item)
            # A one-letter "scheme" is a Windows drive letter, i.e. a path.
            if scheme is None or len(scheme.group(1)) == 1:
                continue
            name = scheme.group(1).lower()
            rest = item[len(name) + 1:]
            if name not in ("http", "https", "file"):
                hint = "" if rest.startswith("//") else " (a host:port needs http:// in front)"
                raise InvalidValue(f"{item!r} has the unsupported scheme '{name}:'{hint}")
            if not rest.startswith("//") or (name != "file" and len(rest.strip("/")) == 0):
                raise InvalidValue(f"{item!r} is not a complete {name}:// URL")
        return items

    def format(self, value):
        return "\n".join(value)


class Lines(_Kind):
    """One entry per line; on the command line, where newlines are awkward, ' / ' separates."""

    type = Tuple[str, ...]
    multiline = True

    def __init__(self, what, examples):
        self.expected = (f"at least one {what}, one per indented line below the key, "
                         f"e.g. {', '.join(examples)} (in --set: separated by ' / ')")

    def parse(self, raw):
        lines = tuple(line.strip() for line in raw.split("\n") if line.strip())
        if not lines:
            raise InvalidValue()
        for line in lines:
            if _COMMENT_MARK.search(line):
                raise InvalidValue(f"{line!r} contains an INI comment marker")
        return lines

    def parse_override(self, raw):
        return self.parse("\n".join(raw.split("/")))

    def format(self, value):
        return "\n".join(value)


# --- the schema -----------------------------------------------------------------------

_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Key:
    """One row of the schema: kind (type and range), default, and what the key is for."""

    kind: _Kind
    default: Any
    help: str
    example: Optional[str] = None  # a value for 'e.g. key = ...' when the default is no example

    @property
    def required(self):
        return self.default is _REQUIRED


SCHEMA = {
    "data": {
        "dir": Key(Text(), "", "MNIST cache directory, used unless --data-dir or "
                   "CNNTRAIN_DATA_DIR is set; empty = ~/.cache/cnntrain/mnist", "~/data/mnist"),
        "mirrors": Key(Mirrors(), (), "base URLs or directories to fetch MNIST from, in order, "
                       "unless --mirror or CNNTRAIN_MNIST_MIRRORS is set; empty = the public "
                       "mirrors", "https://example.org/mnist/"),
        "val_size": Key(Int(0, MNIST_TRAIN_IMAGES - 1), 5000,
                        "training images held out for validation"),
        "train_size": Key(Int(0), 0, "training images used; 0 = all not held out"),
        "test_size": Key(Int(0, MNIST_TEST_IMAGES), 0, "test images evaluated; 0 = all"),
        "mean": Key(Float(), 0.1307, "pixel mean subtracted after scaling to [0, 1]"),
        "std": Key(Float(0, lo_open=True), 0.3081, "pixel std divided by after the mean"),
    },
    "augment": {
        "translate": Key(Int(0, 8), 0, "max random shift in pixels; 0 = off", "2"),
        "rotate": Key(Float(0, 45), 0.0, "max random rotation in degrees; 0 = off", "10"),
        "scale": Key(Float(0, 0.5), 0.0, "max random zoom as a fraction; 0 = off", "0.1"),
        "elastic_alpha": Key(Float(0), 0.0, "elastic distortion strength in pixels; 0 = off",
                             "34"),
        "elastic_sigma": Key(Float(0, lo_open=True), 4.0,
                             "smoothness of the elastic displacement field in pixels"),
        "clean_epochs": Key(Int(0), 0, "the last N epochs train on undistorted images, so the "
                            "weights and batch norm's statistics settle on images like the test "
                            "set's; 0 = distort in every epoch", "2"),
    },
    "model": {
        "layers": Key(Lines("layer", ("conv 6 5 pad=2", "relu", "maxpool 2", "flatten",
                                      "dense 10")), _REQUIRED,
                      "the network, one layer per line, input 1x28x28"),
        "init": Key(Choice("auto", *INIT_SCHEMES), "auto",
                    "weight init; auto = He before ReLU, Glorot before tanh/sigmoid"),
    },
    "train": {
        "epochs": Key(Int(1), 15, "passes over the training images"),
        "batch_size": Key(Int(1), 64, "images per SGD step"),
        "eval_batch_size": Key(Int(1), 1000, "images per forward pass when evaluating"),
        "lr": Key(Float(0, lo_open=True), 0.05, "peak learning rate"),
        "momentum": Key(Float(0, 1, hi_open=True), 0.9, "SGD momentum; 0 = plain SGD"),
        "nesterov": Key(Bool(), False, "Nesterov momentum (needs momentum > 0)"),
        "weight_decay": Key(Float(0), 5e-4, "L2 penalty coefficient added to the gradient"),
        "decay_biases": Key(Bool(), True, "apply weight_decay to biases too, as PyTorch does"),
        # At 0.9 the target is uniform over the ten digits and above it favours the wrong
        # ones: nothing a network could learn from.
        "label_smoothing": Key(Float(0, 0.9, hi_open=True), 0.0,
                               "training targets (1 - s) * onehot + s / 10 instead of onehot; "
                               "0 = plain cross-entropy; below 0.9, where the target would "
                               "stop favouring the true digit", "0.1"),
        "lr_schedule": Key(Choice(*SCHEDULES), "cosine",
                           "how the learning rate changes over the epochs"),
        "lr_step_epochs": Key(Int(1), 5, "step schedule: epochs between decays"),
        "lr_gamma": Key(Float(0, 1, lo_open=True), 0.1, "step schedule: factor per decay"),
        "warmup_epochs": Key(Float(0), 0.0, "linear warm-up from 0 to lr; 0 = none", "1"),
        "seed": Key(Int(0), 0, "seed of every random choice (init, shuffling, augmentation)"),
        "dtype": Key(Choice("float32", "float64"), "float32", "floating-point precision"),
        "kernels": Key(Choice("fast", "reference"), "fast",
                       "the layers' maths: fast (cnntrain/nn/fast.py) or reference, the reference "
                       "kernels (cnntrain/nn/functional.py): the same maths, slower"),
    },
    "run": {
        "dir": Key(Text(allow_empty=False), "runs/lenet5",
                   "where checkpoints, logs and metrics are written"),
    },
}


def valid_keys():
    """Section -> key names, in the order the schema lists them."""
    return {section: list(keys) for section, keys in SCHEMA.items()}
