"""Config files: one declarative schema, strict INI parsing, `--set` overrides, round trip.

Every key lives in exactly one row of `SCHEMA`; the dataclasses, the defaults, the checks,
the error messages, `valid_keys()` and `config_to_ini()` are all derived from that table, so
adding a key is adding a row. This is the only module that imports configparser, and it
stays free of numpy so that `cnntrain --help` answers quickly: the layer list is checked by
`cnntrain.nn.model`, imported only when a config is actually parsed.

Every problem a user can cause raises `ConfigError` with a one-line message naming where
the bad value came from (file and `[section] key`, or the `--set` override) and what is
expected instead.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from cnntrain.constants import (
    INIT_SCHEMES,
    INPUT_SHAPE,
    MNIST_TEST_IMAGES,
    MNIST_TRAIN_IMAGES,
    SCHEDULES,
)
from cnntrain.errors import ConfigError

# A name that no `[header]` line can produce (headers are single lines), so configparser's
# magic [DEFAULT] section, whose keys would leak into every other section, becomes an
# ordinary section name that the strict checks reject as unknown.
_NO_DEFAULT_SECTION = "\n"

# Where configparser would start an inline comment: at the start of a value or after
# whitespace. A value containing one can be given with --set but could never be written
# back to an INI file intact, so such values are refused up front.
_COMMENT_MARK = re.compile(r"(?:^|\s)[;#]")


class _Invalid(ValueError):
    """A raw value that does not fit its key; the text, if any, says what exactly is wrong."""


def _num(x: float) -> str:
    return f"{x:g}"


# --- kinds of value -------------------------------------------------------------------


class _Kind:
    """How one key's text becomes a value, how it is described, and how it is written back."""

    type: Any = str
    expected = ""
    multiline = False  # written as indented continuation lines by config_to_ini

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def parse_override(self, raw: str) -> Any:
        return self.parse(raw)

    def format(self, value: Any) -> str:
        return str(value)


class Int(_Kind):
    type = int

    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None):
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.expected = f"an integer from {lo} to {hi}"
        elif lo is not None:
            self.expected = f"an integer >= {lo}"
        else:
            self.expected = "an integer"

    def parse(self, raw: str) -> int:
        text = raw.strip()
        # int() alone would also take '1_000' and non-ASCII digits; a config should not.
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise _Invalid()
        value = int(text)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Invalid()
        return value


class Float(_Kind):
    type = float

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        if lo is not None and hi is not None:
            if lo_open or hi_open:
                self.expected = (f"a number in {'(' if lo_open else '['}{_num(lo)}, "
                                 f"{_num(hi)}{')' if hi_open else ']'}")
            else:
                self.expected = f"a number from {_num(lo)} to {_num(hi)}"
        elif lo is not None:
            self.expected = f"a number {'>' if lo_open else '>='} {_num(lo)}"
        else:
            self.expected = "a number"

    def parse(self, raw: str) -> float:
        text = raw.strip()
        if not text.isascii():
            raise _Invalid()
        try:
            value = float(text)
        except ValueError:
            raise _Invalid() from None
        if not math.isfinite(value):
            raise _Invalid()
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise _Invalid()
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            raise _Invalid()
        return value

    def format(self, value: Any) -> str:
        return repr(float(value))  # repr is the shortest text that reads back bit-exact


class Bool(_Kind):
    type = bool
    expected = "true or false (yes/no, on/off and 1/0 work too)"

    def parse(self, raw: str) -> bool:
        value = configparser.ConfigParser.BOOLEAN_STATES.get(raw.strip().lower())
        if value is None:
            raise _Invalid()
        return value

    def format(self, value: Any) -> str:
        return "true" if value else "false"


class Choice(_Kind):
    def __init__(self, *options: str):
        self.options = options
        self.expected = "one of " + ", ".join(options)

    def parse(self, raw: str) -> str:
        text = raw.strip()
        if text not in self.options:
            raise _Invalid(_did_you_mean(text, self.options))
        return text


class Text(_Kind):
    """A single-line string, typically a path."""

    def __init__(self, allow_empty: bool = True):
        self.allow_empty = allow_empty
        self.expected = "a path on one line" if allow_empty else "a non-empty path on one line"

    def parse(self, raw: str) -> str:
        text = raw.strip()
        if "\n" in text or (not text and not self.allow_empty):
            raise _Invalid()
        if _COMMENT_MARK.search(text):
            raise _Invalid("';' or '#' at the start or after a space begins an INI comment")
        return text


class Mirrors(_Kind):
    type = Tuple[str, ...]
    expected = ("base URLs starting with http://, https:// or file://, or directory paths, "
                "separated by spaces, commas or newlines")

    def parse(self, raw: str) -> Tuple[str, ...]:
        items = tuple(item for item in re.split(r"[\s,]+", raw) if item)
        for item in items:
            if item[0] in ";#":
                raise _Invalid(f"{item!r} would read back as an INI comment")
            scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", item)
            # A one-letter "scheme" is a Windows drive letter, i.e. a path.
            if scheme is None or len(scheme.group(1)) == 1:
                continue
            name = scheme.group(1).lower()
            rest = item[len(name) + 1:]
            if name not in ("http", "https", "file"):
                hint = "" if rest.startswith("//") else " (a host:port needs http:// in front)"
                raise _Invalid(f"{item!r} has the unsupported scheme '{name}:'{hint}")
            if not rest.startswith("//") or (name != "file" and len(rest.strip("/")) == 0):
                raise _Invalid(f"{item!r} is not a complete {name}:// URL")
        return items

    def format(self, value: Any) -> str:
        return "\n".join(value)


class Lines(_Kind):
    """One entry per line; on the command line, where newlines are awkward, ' / ' separates."""

    type = Tuple[str, ...]
    multiline = True

    def __init__(self, what: str, examples: Tuple[str, ...]):
        self.expected = (f"at least one {what}, one per indented line below the key, "
                         f"e.g. {', '.join(examples)} (in --set: separated by ' / ')")

    def parse(self, raw: str) -> Tuple[str, ...]:
        lines = tuple(line.strip() for line in raw.split("\n") if line.strip())
        if not lines:
            raise _Invalid()
        for line in lines:
            if _COMMENT_MARK.search(line):
                raise _Invalid(f"{line!r} contains an INI comment marker")
        return lines

    def parse_override(self, raw: str) -> Tuple[str, ...]:
        return self.parse("\n".join(raw.split("/")))

    def format(self, value: Any) -> str:
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
    def required(self) -> bool:
        return self.default is _REQUIRED


SCHEMA: Dict[str, Dict[str, Key]] = {
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


def valid_keys() -> Dict[str, List[str]]:
    """Section -> key names, in the order the schema lists them."""
    return {section: list(keys) for section, keys in SCHEMA.items()}


def _section_class(section: str) -> type:
    keys = SCHEMA[section]
    # Dataclasses want defaulted fields last; the (rare) required keys go first.
    ordered = sorted(keys.items(), key=lambda item: not item[1].required)
    fields = [(name, spec.kind.type) if spec.required
              else (name, spec.kind.type, dataclasses.field(default=spec.default))
              for name, spec in ordered]
    name = section.capitalize() + "Config"
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = __name__  # so that instances pickle and repr as cnntrain.config.*
    cls.__qualname__ = name
    cls.__doc__ = f"The [{section}] section: " + "; ".join(
        f"{key}: {spec.help}" for key, spec in keys.items()) + "."
    return cls


DataConfig = _section_class("data")
AugmentConfig = _section_class("augment")
ModelConfig = _section_class("model")
TrainConfig = _section_class("train")
RunConfig = _section_class("run")
_SECTION_CLASSES = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig,
                    "train": TrainConfig, "run": RunConfig}


@dataclasses.dataclass(frozen=True)
class Config:
    """A fully resolved, checked config. `source` says where it came from and is not
    compared, so a config equals its own round trip through config_to_ini."""

    data: DataConfig
    augment: AugmentConfig
    model: ModelConfig
    train: TrainConfig
    run: RunConfig
    source: str = dataclasses.field(default="<string>", compare=False)


# --- helpers for messages -------------------------------------------------------------


def _did_you_mean(word: str, choices: Iterable[str], fmt: str = "'{}'") -> str:
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


def _error(message: str) -> ConfigError:
    # The CLI prints exactly one line; paths or values with line breaks must not split it.
    return ConfigError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _join(*parts: str) -> str:
    """Message parts joined by '; ', except that a question already ends its part."""
    text = ""
    for part in filter(None, parts):
        text += ("" if not text else " " if text.endswith("?") else "; ") + part
    return text


def _unknown_section(name: str) -> str:
    return _join(f"unknown section [{name}]", _did_you_mean(name, SCHEMA, "[{}]"),
                 "valid sections: " + ", ".join(f"[{s}]" for s in SCHEMA))


def _unknown_key(section: str, key: str, override: bool) -> str:
    elsewhere = [other for other, keys in SCHEMA.items() if other != section and key in keys]
    if elsewhere:
        fmt = "{}.{}" if override else "[{}] {}"
        hint = "did you mean " + " or ".join(fmt.format(other, key) for other in elsewhere) + "?"
    else:
        hint = _did_you_mean(key, SCHEMA[section])
    if not hint and not override and re.search(r"\s", key):
        hint = "lines that continue a multi-line value (such as [model] layers) must be indented"
    return _join(f"unknown key '{key}' in [{section}]", hint,
                 f"valid keys in [{section}]: " + ", ".join(SCHEMA[section]))


# --- reading --------------------------------------------------------------------------


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: a BOM left by some Windows editors is harmless
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _error(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                     "save the file as UTF-8") from None


def _read_file(source: str) -> str:
    # configparser.read() silently skips files it cannot open; a typo in --config must not
    # quietly train with defaults, so the file is opened here and every failure reported.
    if os.path.isdir(source):
        raise _error(f"{source}: is a directory, not a config file; "
                     "give an .ini file such as configs/lenet5.ini")
    try:
        with open(source, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise _error(f"{source}: no such config file; check the path "
                     "(the shipped configs are in configs/)") from None
    except OSError as exc:
        raise _error(f"{source}: cannot read the config file: {exc.strerror or exc}") from None
    return _decode(data, source)


def _parse_ini(text: str, source: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,  # '%' in paths and URLs is just a character
        inline_comment_prefixes=(";", "#"),
        strict=True,
        # True lets comment lines sit between the lines of [model] layers; with False a
        # comment would end the value and the next layer would be read as a broken key.
        empty_lines_in_values=True,
        default_section=_NO_DEFAULT_SECTION,
    )
    parser.optionxform = str  # names are case-sensitive, so 'LR' is reported, not guessed
    lines = text.split("\n")  # configparser numbers lines split on '\n' alone

    def shown(lineno: int) -> str:
        return repr(lines[lineno - 1].strip()) if 0 < lineno <= len(lines) else "?"

    try:
        parser.read_string(text, source=source)
    except configparser.MissingSectionHeaderError as exc:
        raise _error(f"{source}: line {exc.lineno}: {shown(exc.lineno)} comes before any "
                     "[section] header; put it under one such as [train]") from None
    except configparser.DuplicateSectionError as exc:
        raise _error(f"{source}: line {exc.lineno}: section [{exc.section}] appears twice; "
                     "merge the two into one") from None
    except configparser.DuplicateOptionError as exc:
        raise _error(f"{source}: line {exc.lineno}: [{exc.section}] {exc.option} is set twice; "
                     "keep one") from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        more = len(exc.errors) - 1
        raise _error(
            f"{source}: line {lineno}: {shown(lineno)} is not 'key = value' "
            "(lines that continue a multi-line value such as [model] layers must be indented)"
            + (f"; {more} more such line{'s' if more > 1 else ''}" if more else "")) from None
    except configparser.Error as exc:
        raise _error(f"{source}: not a valid INI file: {exc}") from None
    return parser


def peek_value(path: Any, section: str, key: str, strict: bool = False) -> Optional[str]:
    """One key's text as the file has it, unchecked; None if the file or key is missing or
    unreadable (strict=True: a file that cannot be read or parsed raises its ConfigError).
    For tools that only look, such as `cnntrain summarize` over many runs."""
    try:
        parser = _parse_ini(_read_file(str(path)), str(path))
    except ConfigError:
        if strict:
            raise
        return None
    return parser.get(section, key, fallback=None)


def parse_override(text: str) -> Tuple[str, str, str]:
    """'train.lr=0.1' -> ('train', 'lr', '0.1'); the section and key must exist."""
    head, eq, value = text.partition("=")
    section, dot, key = head.partition(".")
    section, key = section.strip(), key.strip()
    if not eq or not dot or not section or not key:
        raise _error(f"--set {text}: expected SECTION.KEY=VALUE, e.g. --set train.lr=0.1")
    if section not in SCHEMA:
        raise _error(f"--set {text}: " + _unknown_section(section))
    if key not in SCHEMA[section]:
        raise _error(f"--set {text}: " + _unknown_key(section, key, override=True))
    return section, key, value.strip()


class _Values:
    """The raw text of every key given, and for each the message prefix naming its origin."""

    def __init__(self, source: str):
        self.source = source
        self.raw: Dict[Tuple[str, str], str] = {}
        self.override: Dict[Tuple[str, str], str] = {}

    def where(self, section: str, key: str) -> str:
        """Prefix for messages about a key without its value: file and key, or the --set."""
        if (section, key) in self.override:
            return f"--set {self.override[section, key]}"
        return f"{self.source}: [{section}] {key}"

    def where_value(self, section: str, key: str) -> str:
        if (section, key) in self.override:
            return self.where(section, key)
        return f"{self.where(section, key)} = {self.raw[section, key]!r}"

    def where_all(self, *pairs: Tuple[str, str]) -> str:
        """Prefix for a rule tying several keys: the file, plus any --set that took part."""
        sets = [self.where(*pair) for pair in pairs if pair in self.override]
        return ", ".join([self.source] + sets)


def _convert(values: _Values, section: str, key: str) -> Any:
    spec = SCHEMA[section][key]
    if (section, key) not in values.raw:
        if spec.required:
            raise _error(f"{values.source}: [{section}] {key} is missing and has no default; "
                         f"expected {spec.kind.expected}")
        return spec.default
    raw = values.raw[section, key]
    override = (section, key) in values.override
    try:
        return spec.kind.parse_override(raw) if override else spec.kind.parse(raw)
    except _Invalid as exc:
        message = f"{values.where_value(section, key)}: expected {spec.kind.expected}"
        if not spec.kind.multiline:  # Lines kinds carry their examples in `expected`
            example = spec.example if spec.example is not None else spec.kind.format(spec.default)
            message += (f", e.g. --set {section}.{key}={example}" if override
                        else f", e.g. {key} = {example}")
        raise _error(_join(message, str(exc))) from None


# Elastic distortion moves pixels by about ELASTIC_RMS * alpha / sigma on average (RMS per
# axis; cnntrain/data/augment.py derives it). Past half the 28-pixel image no digit survives, and
# far past it the displacements overflow to NaN, which made training diverge and the advice
# blame the learning rate.
ELASTIC_RMS = 0.163
ELASTIC_MAX_SHIFT = INPUT_SHAPE[-1] / 2


def _check_rules(cfg: Dict[str, Dict[str, Any]], values: _Values) -> None:
    data, train, augment = cfg["data"], cfg["train"], cfg["augment"]
    shift = ELASTIC_RMS * augment["elastic_alpha"] / augment["elastic_sigma"]
    if shift > ELASTIC_MAX_SHIFT:
        raise _error(
            f"{values.where_all(('augment', 'elastic_alpha'), ('augment', 'elastic_sigma'))}: "
            f"[augment] elastic_alpha = {_num(augment['elastic_alpha'])} with elastic_sigma = "
            f"{_num(augment['elastic_sigma'])} moves pixels by about {shift:.3g} px, more than "
            f"half the image, so no digit would be left; keep elastic_alpha at most "
            f"{math.floor(ELASTIC_MAX_SHIFT / ELASTIC_RMS * augment['elastic_sigma'])} at this "
            "sigma "
            "(Simard's values are elastic_alpha = 34, elastic_sigma = 4)")
    if data["val_size"] + data["train_size"] > MNIST_TRAIN_IMAGES:
        raise _error(
            f"{values.where_all(('data', 'val_size'), ('data', 'train_size'))}: [data] "
            f"val_size + train_size = {data['val_size']} + {data['train_size']} = "
            f"{data['val_size'] + data['train_size']}, more than the {MNIST_TRAIN_IMAGES} "
            "MNIST training images; lower one of them (train_size = 0 takes all the rest)")
    if train["warmup_epochs"] >= train["epochs"]:
        raise _error(
            f"{values.where_all(('train', 'warmup_epochs'), ('train', 'epochs'))}: [train] "
            f"warmup_epochs = {_num(train['warmup_epochs'])} must be less than "
            f"epochs = {train['epochs']}; shorten the warm-up or train longer")
    if train["nesterov"] and train["momentum"] == 0:
        raise _error(
            f"{values.where_all(('train', 'nesterov'), ('train', 'momentum'))}: [train] "
            "nesterov = true needs momentum > 0, but momentum = 0; "
            "set momentum (e.g. 0.9) or nesterov = false")


def _check_layers(layers: Tuple[str, ...], values: _Values, cfg: Dict[str, Dict[str, Any]]) -> None:
    # Imported here: the model module pulls in numpy, which `cnntrain --help` must not pay for.
    import cnntrain.nn.model as model

    data, train = cfg["data"], cfg["train"]
    train_images = data["train_size"] or MNIST_TRAIN_IMAGES - data["val_size"]
    try:
        # The network must also fit in memory at the training batch size (no batch is larger
        # than the training set) and dtype.
        model.check_layers(list(layers), input_shape=INPUT_SHAPE,
                           batch_size=min(train["batch_size"], train_images),
                           eval_batch_size=train["eval_batch_size"], dtype=train["dtype"])
    except ConfigError as exc:  # LayerLineError, or any other complaint about the list
        where = values.where("model", "layers")
        line_no = getattr(exc, "line_no", None)
        if not line_no:  # 0 or absent: a complaint about the list as a whole
            raise _error(f"{where}: {getattr(exc, 'reason', None) or exc}") from exc
        line = getattr(exc, "line", None)
        if line is None and 0 < line_no <= len(layers):
            line = layers[line_no - 1]
        reason = getattr(exc, "reason", None) or str(exc)
        separator = ": " if ("model", "layers") in values.override else ", "
        raise _error(f"{where}{separator}line {line_no} {line!r}: {reason}") from exc


def parse_config(text: Any, source: str = "<string>", overrides: Iterable[str] = ()) -> Config:
    """Check and resolve config text; `overrides` are 'section.key=value' strings that win
    over the text. Used for files and for the config text stored in checkpoints."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), source)
    if isinstance(overrides, str):  # one override passed bare would iterate as characters
        overrides = (overrides,)
    parser = _parse_ini(text, source)

    values = _Values(source)
    for section in parser.sections():
        if section not in SCHEMA:
            raise _error(f"{source}: " + _unknown_section(section))
        for key in parser.options(section):
            if key not in SCHEMA[section]:
                raise _error(f"{source}: " + _unknown_key(section, key, override=False))
            values.raw[section, key] = parser.get(section, key, raw=True)
    for override in overrides:
        section, key, value = parse_override(override)
        values.raw[section, key] = value
        values.override[section, key] = override

    resolved = {section: {key: _convert(values, section, key) for key in keys}
                for section, keys in SCHEMA.items()}
    _check_rules(resolved, values)
    _check_layers(resolved["model"]["layers"], values, resolved)
    return Config(source=source, **{section: _SECTION_CLASSES[section](**fields)
                                    for section, fields in resolved.items()})


def load_config(path: Any, overrides: Iterable[str] = ()) -> Config:
    """Read, check and resolve a config file; see parse_config for `overrides`."""
    source = os.fsdecode(path)
    return parse_config(_read_file(source), source=source, overrides=overrides)


def config_to_ini(cfg: Config) -> str:
    """The resolved config as INI text, every key written out; parse_config reads it back to
    an equal Config, which is what lets a checkpoint rebuild its model from this text."""
    source = cfg.source.replace("\r", "\\r").replace("\n", "\\n")
    out = [f"# cnntrain config, every key resolved; read from {source}"]
    for section, keys in SCHEMA.items():
        values = getattr(cfg, section)
        out += ["", f"[{section}]"]
        for key, spec in keys.items():
            text = spec.kind.format(getattr(values, key))
            if spec.kind.multiline or "\n" in text:
                out.append(f"{key} =" + "".join(f"\n    {line}" for line in text.split("\n")))
            else:
                out.append(f"{key} = {text}".rstrip())
    return "\n".join(out) + "\n"
