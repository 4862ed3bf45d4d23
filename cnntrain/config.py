"""Config files: strict INI parsing, `--set` overrides, the rules that tie keys together,
and the round trip back to INI text.

What keys exist, their kinds, defaults and help is the table `SCHEMA` in
cnntrain/configschema.py; the Config dataclasses here are made from it. Only this module and
the schema import configparser, and both stay free of numpy so that `cnntrain --help` answers
quickly: the layer list is checked by `cnntrain.nn.model`, imported only when a config is
actually parsed.

Every problem a user can cause raises `ConfigError` with a one-line message naming where
the bad value came from (file and `[section] key`, or the `--set` override) and what is
expected instead.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re

from cnntrain.configschema import SCHEMA, InvalidValue, did_you_mean, short_number
from cnntrain.constants import INPUT_SHAPE, MNIST_TRAIN_IMAGES
from cnntrain.errors import ConfigError

# A name that no `[header]` line can produce (headers are single lines), so configparser's
# magic [DEFAULT] section, whose keys would leak into every other section, becomes an
# ordinary section name that the strict checks reject as unknown.
_NO_DEFAULT_SECTION = "\n"


# --- the resolved config --------------------------------------------------------------


def _section_class(section):
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


def _error(message):
    # The CLI prints exactly one line; paths or values with line breaks must not split it.
    return ConfigError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _join(*parts):
    """Message parts joined by '; ', except that a question already ends its part."""
    text = ""
    for part in filter(None, parts):
        text += ("" if not text else " " if text.endswith("?") else "; ") + part
    return text


def _unknown_section(name):
    return _join(f"unknown section [{name}]", did_you_mean(name, SCHEMA, "[{}]"),
                 "valid sections: " + ", ".join(f"[{s}]" for s in SCHEMA))


def _unknown_key(section, key, override):
    elsewhere = [other for other, keys in SCHEMA.items() if other != section and key in keys]
    if elsewhere:
        fmt = "{}.{}" if override else "[{}] {}"
        hint = "did you mean " + " or ".join(fmt.format(other, key) for other in elsewhere) + "?"
    else:
        hint = did_you_mean(key, SCHEMA[section])
    if not hint and not override and re.search(r"\s", key):
        hint = "lines that continue a multi-line value (such as [model] layers) must be indented"
    return _join(f"unknown key '{key}' in [{section}]", hint,
                 f"valid keys in [{section}]: " + ", ".join(SCHEMA[section]))


# --- reading --------------------------------------------------------------------------


def _decode(data, source):
    try:
        return data.decode("utf-8-sig")  # -sig: a BOM left by some Windows editors is harmless
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _error(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                     "save the file as UTF-8") from None


def _read_file(source):
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


def _parse_ini(text, source):
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

    def shown(lineno):
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


def peek_value(path, section, key, strict=False):
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


def parse_override(text):
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

    def __init__(self, source):
        self.source = source
        self.raw = {}
        self.override = {}

    def where(self, section, key):
        """Prefix for messages about a key without its value: file and key, or the --set."""
        if (section, key) in self.override:
            return f"--set {self.override[section, key]}"
        return f"{self.source}: [{section}] {key}"

    def where_value(self, section, key):
        if (section, key) in self.override:
            return self.where(section, key)
        return f"{self.where(section, key)} = {self.raw[section, key]!r}"

    def where_all(self, *pairs):
        """Prefix for a rule tying several keys: the file, plus any --set that took part."""
        sets = [self.where(*pair) for pair in pairs if pair in self.override]
        return ", ".join([self.source] + sets)


def _convert(values, section, key):
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
    except InvalidValue as exc:
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


def _check_rules(cfg, values):
    data, train, augment = cfg["data"], cfg["train"], cfg["augment"]
    shift = ELASTIC_RMS * augment["elastic_alpha"] / augment["elastic_sigma"]
    if shift > ELASTIC_MAX_SHIFT:
        raise _error(
            f"{values.where_all(('augment', 'elastic_alpha'), ('augment', 'elastic_sigma'))}: "
            f"[augment] elastic_alpha = {short_number(augment['elastic_alpha'])} with "
            f"elastic_sigma = {short_number(augment['elastic_sigma'])} moves pixels by about "
            f"{shift:.3g} px, more than half the image, so no digit would be left; keep "
            f"elastic_alpha at most "
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
            f"warmup_epochs = {short_number(train['warmup_epochs'])} must be less than "
            f"epochs = {train['epochs']}; shorten the warm-up or train longer")
    if train["nesterov"] and train["momentum"] == 0:
        raise _error(
            f"{values.where_all(('train', 'nesterov'), ('train', 'momentum'))}: [train] "
            "nesterov = true needs momentum > 0, but momentum = 0; "
            "set momentum (e.g. 0.9) or nesterov = false")


def _check_layers(layers, values, cfg):
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


def parse_config(text, source="<string>", overrides=()):
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


def load_config(path, overrides=()):
    """Read, check and resolve a config file; see parse_config for `overrides`."""
    source = os.fsdecode(path)
    return parse_config(_read_file(source), source=source, overrides=overrides)


def config_to_ini(cfg):
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
