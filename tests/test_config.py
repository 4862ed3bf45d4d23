"""Tests of cnntrain.config and cnntrain.configschema: the schema, strict parsing, --set
overrides and the round trip."""

import dataclasses
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest

import cnntrain.nn
from cnntrain import config as C
from cnntrain.configschema import valid_keys
from cnntrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(CONFIGS.glob("*.ini"))

# The smallest network the real check_layers accepts; keeps the snippets below about the
# key under test rather than the model.
MINIMAL = "[model]\nlayers =\n    flatten\n    dense 10\n"
LENET = ("conv 6 5 pad=2", "relu", "maxpool 2", "conv 16 5", "relu", "maxpool 2",
         "flatten", "dense 120", "relu", "dense 84", "relu", "dense 10")


def write(tmp_path, text, name="x.ini"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(call, *args, **kwargs):
    """The ConfigError message of a call, checked to be the one line the CLI prints."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert info.value.exit_code == 2
    return message


def with_section(section, body):
    """MINIMAL plus one more section (merged into [model] when that is the section)."""
    if section == "model":
        return MINIMAL + body + "\n"
    return MINIMAL + f"[{section}]\n{body}\n"


class FakeLayerLineError(ConfigError):
    def __init__(self, line_no, line, reason):
        self.line_no, self.line, self.reason = line_no, line, reason
        super().__init__(f"layer line {line_no}: {reason}")


@pytest.fixture
def fake_model(monkeypatch):
    """A stand-in cnntrain.nn.model whose check_layers rejects any line containing ' 0'."""
    calls = []

    def check_layers(lines, input_shape=(1, 28, 28), **memory_check):
        calls.append((list(lines), input_shape))
        if lines == ["whole"]:
            raise FakeLayerLineError(0, "", "the list as a whole is wrong")
        for number, line in enumerate(lines, start=1):
            if " 0" in line:
                raise FakeLayerLineError(number, line, "size must be >= 1, got 0")
        return []

    fake = types.ModuleType("cnntrain.nn.model")
    fake.check_layers, fake.LayerLineError = check_layers, FakeLayerLineError
    monkeypatch.setitem(sys.modules, "cnntrain.nn.model", fake)
    monkeypatch.setattr(cnntrain.nn, "model", fake, raising=False)
    return calls


# --- shipped configs ------------------------------------------------------------------


def test_configs_directory_is_not_empty():
    assert {p.name for p in SHIPPED} >= {"lenet5.ini", "lenet5-classic.ini", "quick.ini"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = C.load_config(path)
    assert cfg.source == str(path)
    again = C.parse_config(C.config_to_ini(cfg), source="<checkpoint>")
    assert again == cfg
    assert again.source == "<checkpoint>"


def test_lenet5_is_the_reference_recipe():
    cfg = C.load_config(CONFIGS / "lenet5.ini")
    assert cfg.model.layers == LENET
    assert cfg.model.init == "auto"
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.nesterov) == (15, 64, 0.05, 0.9, False)
    assert (t.weight_decay, t.decay_biases, t.lr_schedule) == (5e-4, True, "cosine")
    assert (t.warmup_epochs, t.seed, t.dtype, t.kernels) == (1, 0, "float32", "fast")
    assert (cfg.data.dir, cfg.data.mirrors, cfg.data.val_size) == ("", (), 1000)
    assert (cfg.data.train_size, cfg.data.test_size) == (0, 0)
    assert cfg.augment == C.AugmentConfig()  # all augmentation off
    assert cfg.run.dir == "runs/lenet5"


def test_classic_and_quick_flavours():
    classic = C.load_config(CONFIGS / "lenet5-classic.ini")
    assert "tanh" in classic.model.layers and "relu" not in classic.model.layers
    assert "meanpool 2" in classic.model.layers
    assert classic.run.dir == "runs/lenet5-classic"
    quick = C.load_config(CONFIGS / "quick.ini")
    assert quick.model.layers == LENET
    assert quick.data.train_size > 0 and quick.train.epochs <= 3
    assert quick.run.dir == "runs/quick"


def test_bn_aug_trains_on_whole_batches_only():
    # Its README figures rely on it: a partial last batch has shapes whose products OpenBLAS
    # sums in another order on 2 threads than on 1.
    cfg = C.load_config(CONFIGS / "bn-aug.ini")
    assert cfg.data.train_size == 0
    assert (C.MNIST_TRAIN_IMAGES - cfg.data.val_size) % cfg.train.batch_size == 0


def test_shipped_configs_comment_every_key():
    # Caffe-style: each key has a comment beside it, or sits right under a comment; a comment
    # may cover a pair of keys that belong together (mean and std, say), no more.
    for path in SHIPPED:
        keys_under_comment = None  # keys since the last comment line; None: no comment above
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped[:1] in (";", "#"):
                keys_under_comment = 0
            elif not stripped or stripped.startswith("["):
                keys_under_comment = None
            elif "=" in line and not line[:1].isspace():
                if " ;" in line or " #" in line:
                    keys_under_comment = None
                else:
                    assert keys_under_comment is not None and keys_under_comment < 2, (
                        f"{path.name}:{number}: no comment for {stripped!r}")
                    keys_under_comment += 1


# --- the schema and API ---------------------------------------------------------------


def test_valid_keys_match_the_dataclasses():
    keys = valid_keys()
    assert list(keys) == ["data", "augment", "model", "train", "run"]
    for section, names in keys.items():
        cls = type(getattr(C.load_config(CONFIGS / "lenet5.ini"), section))
        assert sorted(f.name for f in dataclasses.fields(cls)) == sorted(names)
    assert [f.name for f in dataclasses.fields(C.Config)] == list(keys) + ["source"]
    assert keys["augment"] == ["translate", "rotate", "scale", "elastic_alpha", "elastic_sigma",
                              "clean_epochs"]


def test_defaults_from_the_table():
    cfg = C.parse_config(MINIMAL)
    assert cfg.data == C.DataConfig()
    assert cfg.train == C.TrainConfig()
    assert cfg.train.lr == 0.05 and cfg.train.epochs == 15 and cfg.train.weight_decay == 5e-4
    assert cfg.train.kernels == "fast"
    assert cfg.data.mean == 0.1307 and cfg.data.std == 0.3081
    assert cfg.augment.elastic_sigma == 4.0
    assert cfg.run.dir == "runs/lenet5"
    assert cfg.source == "<string>"


def test_configs_are_frozen_hashable_and_pickle():
    cfg = C.load_config(CONFIGS / "lenet5.ini")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    assert hash(cfg) == hash(C.parse_config(C.config_to_ini(cfg)))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert type(cfg.train).__module__ == "cnntrain.config"


def test_parse_override_splits_and_strips():
    assert C.parse_override("train.lr=0.1") == ("train", "lr", "0.1")
    assert C.parse_override(" train.lr = 0.1 ") == ("train", "lr", "0.1")
    assert C.parse_override("model.layers=conv 6 5 pad=2 / relu") == (
        "model", "layers", "conv 6 5 pad=2 / relu")
    assert C.parse_override("data.dir=") == ("data", "dir", "")


def test_importing_config_does_not_import_numpy():
    code = "import sys, cnntrain.config; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- values ---------------------------------------------------------------------------


def test_inline_comments_and_percent():
    cfg = C.parse_config(MINIMAL + "[train]\nlr = 0.1 ; why\nepochs = 3 # why\n"
                         "[run]\ndir = runs/100%done;not-a-comment\n")
    assert cfg.train.lr == 0.1 and cfg.train.epochs == 3
    assert cfg.run.dir == "runs/100%done;not-a-comment"


def test_layers_allow_comments_and_blank_lines_between_lines():
    text = ("[model]\nlayers =\n    flatten   ; why\n    # a whole-line comment\n\n"
            "    dense 10\ninit = he\n")
    cfg = C.parse_config(text)
    assert cfg.model.layers == ("flatten", "dense 10")
    assert cfg.model.init == "he"


@pytest.mark.parametrize("word,value", [("true", True), ("yes", True), ("on", True),
                                        ("1", True), ("False", False), ("no", False),
                                        ("off", False), ("0", False)])
def test_bool_words(word, value):
    cfg = C.parse_config(with_section("train", f"decay_biases = {word}"))
    assert cfg.train.decay_biases is value


def test_mirrors_split_on_spaces_commas_and_lines():
    text = with_section("data", "mirrors = https://a.example/mnist/, http://b.example/x\n"
                                "    file:///srv/mnist  /local/mnist\n    relative/dir")
    cfg = C.parse_config(text)
    assert cfg.data.mirrors == ("https://a.example/mnist/", "http://b.example/x",
                                "file:///srv/mnist", "/local/mnist", "relative/dir")
    assert C.parse_config(C.config_to_ini(cfg)) == cfg


def test_bom_and_crlf_are_fine(tmp_path):
    path = tmp_path / "win.ini"
    path.write_bytes(b"\xef\xbb\xbf" + (MINIMAL + "[train]\nlr = 0.2\n").replace(
        "\n", "\r\n").encode())
    cfg = C.load_config(path)
    assert cfg.train.lr == 0.2 and cfg.model.layers == ("flatten", "dense 10")


def test_load_config_takes_str_and_path(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert C.load_config(str(path)) == C.load_config(path)


# --- overrides ------------------------------------------------------------------------


def test_override_beats_file_and_sets_absent_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "[train]\nlr = 0.01\n")
    cfg = C.load_config(path, ["train.lr=0.2", "train.epochs=3", "data.val_size=0"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.val_size) == (0.2, 3, 0)
    assert C.load_config(path).train.lr == 0.01


def test_later_override_wins():
    cfg = C.parse_config(MINIMAL, overrides=["train.lr=0.2", "train.lr=0.3"])
    assert cfg.train.lr == 0.3


def test_override_layers_with_slashes():
    cfg = C.parse_config(MINIMAL, overrides=["model.layers=" + " / ".join(LENET)])
    assert cfg.model.layers == LENET


def test_override_of_a_bad_file_value_repairs_it():
    cfg = C.parse_config(MINIMAL + "[train]\nlr = fast\n", overrides=["train.lr=0.1"])
    assert cfg.train.lr == 0.1


def test_a_single_override_string_is_not_split_into_characters():
    assert C.parse_config(MINIMAL, overrides="train.lr=0.2").train.lr == 0.2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_round_trip_with_overrides(path):
    overrides = ["train.lr=0.125", "data.mirrors=https://m.example/a/, /srv/mnist",
                 "run.dir=runs/50% off", "model.layers=flatten / dense 32 / relu / dense 10",
                 "augment.rotate=7.5", "train.nesterov=on", "data.train_size=1234"]
    cfg = C.load_config(path, overrides)
    assert cfg.run.dir == "runs/50% off"
    assert C.parse_config(C.config_to_ini(cfg)) == cfg


def test_config_to_ini_writes_every_key_and_layers_one_per_line():
    text = C.config_to_ini(C.load_config(CONFIGS / "lenet5.ini"))
    for section, keys in valid_keys().items():
        assert f"[{section}]" in text
        for key in keys:
            assert any(line.startswith(f"{key} =") for line in text.splitlines()), key
    assert "layers =\n    conv 6 5 pad=2\n    relu\n" in text


# --- errors: files --------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.ini"
    message = error_of(C.load_config, missing)
    assert message.startswith(f"{missing}: ") and "no such config file" in message


def test_directory_instead_of_file(tmp_path):
    message = error_of(C.load_config, tmp_path)
    assert message.startswith(f"{tmp_path}: ") and "directory" in message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.ini"
    path.write_bytes(MINIMAL.encode() + "[run]\ndir = caf\xe9\n".encode("latin-1"))
    message = error_of(C.load_config, path)
    assert message.startswith(f"{path}: ") and "UTF-8" in message and "line 6" in message


def test_duplicate_key(tmp_path):
    path = write(tmp_path, MINIMAL + "[train]\nlr = 0.1\nlr = 0.2\n")
    message = error_of(C.load_config, path)
    assert message.startswith(f"{path}: line 7: ") and "[train] lr" in message
    assert "twice" in message


def test_duplicate_section(tmp_path):
    path = write(tmp_path, MINIMAL + "[train]\nlr = 0.1\n[train]\nepochs = 2\n")
    message = error_of(C.load_config, path)
    assert message.startswith(f"{path}: line 7: ") and "[train]" in message


def test_no_section_header(tmp_path):
    path = write(tmp_path, "lr = 0.1\n" + MINIMAL)
    message = error_of(C.load_config, path)
    assert message.startswith(f"{path}: line 1: ") and "'lr = 0.1'" in message
    assert "section" in message


def test_line_that_is_not_key_value_names_it_and_hints_at_indenting(tmp_path):
    path = write(tmp_path, "[model]\nlayers =\nflatten\ndense 10\n")
    message = error_of(C.load_config, path)
    assert message.startswith(f"{path}: line 3: 'flatten'") and "indented" in message
    assert "1 more" in message


def test_default_section_is_not_special():
    message = error_of(C.parse_config, MINIMAL + "[DEFAULT]\nlr = 0.1\n", source="x.ini")
    assert message.startswith("x.ini: unknown section [DEFAULT]")


def test_missing_required_layers():
    message = error_of(C.parse_config, "[train]\nlr = 0.1\n", source="x.ini")
    assert message.startswith("x.ini: [model] layers is missing")
    message = error_of(C.parse_config, "[model]\ninit = he\n", source="x.ini")
    assert message.startswith("x.ini: [model] layers is missing") and "conv 6 5" in message


def test_empty_layers():
    message = error_of(C.parse_config, "[model]\nlayers =\n", source="x.ini")
    assert message.startswith("x.ini: [model] layers = '': expected at least one layer")


# --- errors: names --------------------------------------------------------------------


def test_unknown_section_suggests_and_lists():
    message = error_of(C.parse_config, MINIMAL + "[trian]\nlr = 0.1\n", source="x.ini")
    assert message.startswith("x.ini: unknown section [trian]")
    assert "did you mean [train]?" in message
    assert "[data], [augment], [model], [train], [run]" in message


def test_unknown_key_suggests_and_lists():
    message = error_of(C.parse_config, with_section("train", "epocs = 3"), source="x.ini")
    assert message.startswith("x.ini: unknown key 'epocs' in [train]")
    assert "did you mean 'epochs'?" in message
    assert "valid keys in [train]: epochs, batch_size," in message


def test_unknown_key_that_belongs_to_another_section():
    message = error_of(C.parse_config, with_section("data", "lr = 0.1"), source="x.ini")
    assert "did you mean [train] lr?" in message


def test_names_are_case_sensitive_but_suggested():
    message = error_of(C.parse_config, with_section("train", "LR = 0.1"), source="x.ini")
    assert "unknown key 'LR'" in message and "did you mean 'lr'?" in message


# --- errors: values -------------------------------------------------------------------


@pytest.mark.parametrize("section,key,value,expected", [
    ("train", "epochs", "ten", "an integer >= 1"),
    ("train", "epochs", "2.5", "an integer >= 1"),
    ("train", "batch_size", "1_000", "an integer >= 1"),
    ("train", "lr", "fast", "a number > 0"),
    ("train", "lr", "nan", "a number > 0"),
    ("data", "mean", "inf", "a number"),
    ("train", "nesterov", "maybe", "true or false"),
    ("train", "lr_schedule", "linear", "one of constant, step, cosine"),
    ("model", "init", "xavier", "one of auto, he, glorot"),
    ("train", "dtype", "float16", "one of float32, float64"),
    ("train", "kernels", "slow", "one of fast, reference"),
    ("data", "mirrors", "ftp://example.org/mnist", "base URLs"),
    ("data", "mirrors", "localhost:8000/mnist", "base URLs"),
    ("data", "mirrors", "https://", "base URLs"),
])
def test_wrong_type(section, key, value, expected):
    message = error_of(C.parse_config, with_section(section, f"{key} = {value}"),
                       source="configs/x.ini")
    assert message.startswith(f"configs/x.ini: [{section}] {key} = {value!r}: expected {expected}")


def test_wrong_type_message_has_an_example():
    message = error_of(C.parse_config, with_section("train", "lr = fast"), source="configs/x.ini")
    assert message == "configs/x.ini: [train] lr = 'fast': expected a number > 0, e.g. lr = 0.05"


def test_choice_suggests_the_right_spelling():
    message = error_of(C.parse_config, with_section("train", "lr_schedule = Cosine"))
    assert "did you mean 'cosine'?" in message


@pytest.mark.parametrize("section,key,value,expected", [
    ("data", "val_size", "60000", "an integer from 0 to 59999"),
    ("data", "val_size", "-1", "an integer from 0 to 59999"),
    ("data", "train_size", "-5", "an integer >= 0"),
    ("data", "test_size", "10001", "an integer from 0 to 10000"),
    ("data", "std", "0", "a number > 0"),
    ("augment", "translate", "9", "an integer from 0 to 8"),
    ("augment", "rotate", "46", "a number from 0 to 45"),
    ("augment", "scale", "0.6", "a number from 0 to 0.5"),
    ("augment", "elastic_alpha", "-1", "a number >= 0"),
    ("augment", "elastic_sigma", "0", "a number > 0"),
    ("train", "epochs", "0", "an integer >= 1"),
    ("train", "batch_size", "0", "an integer >= 1"),
    ("train", "eval_batch_size", "-3", "an integer >= 1"),
    ("train", "lr", "0", "a number > 0"),
    ("train", "lr", "-0.1", "a number > 0"),
    ("train", "momentum", "1", "a number in [0, 1)"),
    ("train", "label_smoothing", "0.9", "a number in [0, 0.9)"),
    ("train", "label_smoothing", "-0.1", "a number in [0, 0.9)"),
    ("train", "momentum", "-0.1", "a number in [0, 1)"),
    ("train", "weight_decay", "-1e-4", "a number >= 0"),
    ("train", "lr_step_epochs", "0", "an integer >= 1"),
    ("train", "lr_gamma", "0", "a number in (0, 1]"),
    ("train", "lr_gamma", "1.5", "a number in (0, 1]"),
    ("train", "warmup_epochs", "-1", "a number >= 0"),
    ("train", "seed", "-1", "an integer >= 0"),
    ("run", "dir", "", "a non-empty path"),
])
def test_out_of_range(section, key, value, expected):
    message = error_of(C.parse_config, with_section(section, f"{key} = {value}"), source="x.ini")
    assert message.startswith(f"x.ini: [{section}] {key} = {value!r}: expected {expected}")


@pytest.mark.parametrize("section,key,value,parsed", [
    ("data", "val_size", "0", 0), ("data", "val_size", "59999", 59999),
    ("augment", "rotate", "45", 45.0), ("augment", "scale", "0.5", 0.5),
    ("train", "momentum", "0", 0.0), ("train", "lr_gamma", "1", 1.0),
    ("data", "mean", "-0.5", -0.5), ("train", "lr", "1e-3", 0.001), ("train", "epochs", "+3", 3),
    ("train", "kernels", "reference", "reference"), ("train", "kernels", " fast ", "fast"),
])
def test_range_edges_that_are_allowed(section, key, value, parsed):
    cfg = C.parse_config(with_section(section, f"{key} = {value}"))
    got = getattr(getattr(cfg, section), key)
    assert got == parsed and type(got) is type(parsed)


def test_multi_line_value_for_a_scalar_key_is_one_line_in_the_message():
    message = error_of(C.parse_config, with_section("train", "epochs = 15\n    20"), source="x.ini")
    assert message.startswith("x.ini: [train] epochs = '15\\n20': expected an integer")


# --- errors: rules tying keys ---------------------------------------------------------


def test_val_plus_train_size_at_most_60000():
    C.parse_config(with_section("data", "val_size = 10000\ntrain_size = 50000"))
    message = error_of(C.parse_config, with_section("data", "val_size = 10000\n"
                                                             "train_size = 50001"), source="x.ini")
    assert message.startswith("x.ini: [data] ") and "val_size" in message
    assert "train_size" in message and "60001" in message


def test_warmup_shorter_than_training():
    C.parse_config(with_section("train", "epochs = 5\nwarmup_epochs = 4.5"))
    message = error_of(C.parse_config, with_section("train", "epochs = 5\nwarmup_epochs = 5"),
                       source="x.ini")
    assert message.startswith("x.ini: [train] warmup_epochs = 5 must be less than epochs = 5")


def test_nesterov_needs_momentum():
    C.parse_config(with_section("train", "nesterov = true\nmomentum = 0.5"))
    message = error_of(C.parse_config, with_section("train", "nesterov = yes\nmomentum = 0"),
                       source="x.ini")
    assert message.startswith("x.ini: [train] nesterov") and "momentum" in message


def test_rule_broken_by_an_override_names_it():
    message = error_of(C.parse_config, MINIMAL, source="x.ini",
                       overrides=["train.warmup_epochs=20"])
    assert message.startswith("x.ini, --set train.warmup_epochs=20: [train] warmup_epochs")
    assert "epochs = 15" in message


# --- errors: overrides ----------------------------------------------------------------


@pytest.mark.parametrize("text", ["train.lr", "trainlr=0.1", "train.=0.1", ".lr=0.1", "=0.1",
                                  ""])
def test_malformed_override(text):
    message = error_of(C.parse_override, text)
    assert message.startswith(f"--set {text}: expected SECTION.KEY=VALUE")
    assert error_of(C.parse_config, MINIMAL, overrides=[text]) == message


def test_override_of_unknown_section_or_key():
    message = error_of(C.parse_override, "trian.lr=0.1")
    assert message.startswith("--set trian.lr=0.1: unknown section [trian]")
    assert "did you mean [train]?" in message
    message = error_of(C.parse_config, MINIMAL, overrides=["train.learning_rat=0.1"])
    assert message.startswith("--set train.learning_rat=0.1: unknown key 'learning_rat'")
    assert "valid keys in [train]:" in message
    message = error_of(C.parse_override, "train.init=he")
    assert "did you mean model.init?" in message


def test_override_with_bad_value_names_the_override():
    message = error_of(C.parse_config, MINIMAL, source="x.ini", overrides=["train.lr=fast"])
    assert message.startswith("--set train.lr=fast: expected a number > 0")
    assert "e.g. --set train.lr=0.05" in message
    message = error_of(C.parse_config, MINIMAL, overrides=["data.val_size=70000"])
    assert message.startswith("--set data.val_size=70000: expected an integer from 0 to 59999")


@pytest.mark.parametrize("override", ["run.dir=runs/a #b", "run.dir=;x", "data.dir=# x",
                                      "data.mirrors=http://a.example ;b",
                                      "model.layers=flatten ;x / dense 10"])
def test_override_that_could_not_be_written_back_is_refused(override):
    message = error_of(C.parse_config, MINIMAL, overrides=[override])
    assert message.startswith(f"--set {override}: expected") and "comment" in message


def test_override_with_newline_stays_one_line():
    message = error_of(C.parse_config, MINIMAL, overrides=["train.lr=1\n2"])
    assert message.startswith("--set train.lr=1\\n2: expected")


# --- layer list checks ----------------------------------------------------------------


def test_layer_error_from_check_layers_names_file_and_line(fake_model):
    text = "[model]\nlayers =\n    conv 6 5\n    relu\n    maxpool 0\n    dense 10\n"
    message = error_of(C.parse_config, text, source="configs/x.ini")
    assert message == ("configs/x.ini: [model] layers, line 3 'maxpool 0': "
                       "size must be >= 1, got 0")
    assert fake_model[-1] == (["conv 6 5", "relu", "maxpool 0", "dense 10"], (1, 28, 28))


def test_layer_error_in_an_override_names_the_override(fake_model):
    override = "model.layers=conv 6 5 / maxpool 0 / dense 10"
    message = error_of(C.parse_config, MINIMAL, source="x.ini", overrides=[override])
    assert message == f"--set {override}: line 2 'maxpool 0': size must be >= 1, got 0"


def test_layer_error_about_the_whole_list(fake_model):
    message = error_of(C.parse_config, "[model]\nlayers = whole\n", source="x.ini")
    assert message == "x.ini: [model] layers: the list as a whole is wrong"


def test_layers_are_checked_only_after_the_other_keys(fake_model):
    message = error_of(C.parse_config, "[model]\nlayers = maxpool 0\n[train]\nlr = x\n")
    assert "[train] lr" in message
    assert fake_model == []


def test_real_check_layers_error_is_wrapped():
    import cnntrain.nn.model  # noqa: F401  (a broken import must fail here, not skip)
    text = "[model]\nlayers =\n    conv 6 5\n    relu\n    maxpool 0\n    flatten\n    dense 10\n"
    message = error_of(C.parse_config, text, source="configs/x.ini")
    assert message.startswith("configs/x.ini: [model] layers, line 3 'maxpool 0': ")
    message = error_of(C.parse_config, "[model]\nlayers =\n    flatten\n    dense 9\n",
                       source="x.ini")
    assert message.startswith("x.ini: [model] layers, line 2 'dense 9': ")


def test_read_failure_other_than_missing(tmp_path, monkeypatch):
    # Root can read a chmod-0 file, so the refusal is simulated where the file is opened.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, MINIMAL)
    monkeypatch.setattr(C, "open", refuse, raising=False)
    message = error_of(C.load_config, path)
    assert message == f"{path}: cannot read the config file: Permission denied"
