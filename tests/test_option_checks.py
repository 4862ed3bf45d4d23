"""Numbers that can only fail, pass everything or diverge are refused up front in one line
naming the option or key, the value and the fix: `gradcheck --tolerance nan` (which failed
every layer) and its kin, more --images than the split holds, a label smoothing that stops
favouring the true digit, an elastic distortion that leaves no digit; and the advice after a
divergence suggests a learning rate that can train, not a quarter of an absurd one
(1e300 -> 2.5e299)."""

import math
from pathlib import Path

import click
import numpy as np
import pytest

from cnntrain import config as C
from cnntrain.cli import cli
from cnntrain.runs.fit import divergence_advice
from tests.support.clitools import (
    assert_one_line_error,
    invoke,
    small_run_env,
)

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick.ini"


@pytest.fixture
def gradcheck_config(small_config_file):
    return small_config_file


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("value,problem", [
    ("nan", "is not a finite number"),
    ("inf", "is not a finite number"),
    ("-inf", "is not a finite number"),
    ("0", "would fail every layer"),
    ("-1e-6", "would fail every layer"),
    ("1", "would pass any gradient"),
    ("5", "would pass any gradient"),
])
def test_a_tolerance_that_cannot_judge_is_refused_before_any_check(gradcheck_config, value,
                                                                   problem):
    result = invoke("gradcheck", "--config", gradcheck_config, "--probes", 2,
                    "--tolerance", value)
    shown = f"{float(value):g}"
    assert_one_line_error(result, 2, f"--tolerance {shown} {problem}", "between 0 and 1",
                          "e.g. --tolerance 1e-06")
    assert result.stdout == ""  # no table: nothing was checked


def test_more_images_than_the_split_holds_is_refused(gradcheck_config):
    result = invoke("gradcheck", "--config", gradcheck_config, "--probes", 2,
                    "--images", 100000)
    assert_one_line_error(result, 2, "--images 100000", "holds 500 images", "at most 500")
    assert result.stdout == ""


def float_options():
    """(command, option) for every option of every command that takes a real number."""
    found = []
    for name, command in cli.commands.items():
        for param in command.params:
            kind = param.type
            if isinstance(param, click.Option) and (kind is click.FLOAT
                                                    or isinstance(kind, click.FloatRange)):
                found.append((name, param.opts[0]))
    return found


def test_the_commands_have_real_number_options_to_check():
    assert ("gradcheck", "--tolerance") in float_options()


@pytest.mark.parametrize("command,option", float_options())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_real_number_option_takes_a_non_finite_value(command, option, value):
    result = invoke(command, option, value)
    assert_one_line_error(result, 2, option, f"{float(value):g}")


# --------------------------------------------------------------------------- config keys


@pytest.mark.parametrize("value", ["0.9", "0.95"])
def test_a_label_smoothing_that_stops_favouring_the_true_digit_is_refused(value):
    with pytest.raises(C.ConfigError) as info:
        C.load_config(QUICK, [f"train.label_smoothing={value}"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--set train.label_smoothing={value}: expected a number in "
                              "[0, 0.9)")
    assert "e.g. --set train.label_smoothing=0.1" in message


def test_a_label_smoothing_just_below_the_bound_is_kept():
    cfg = C.load_config(QUICK, ["train.label_smoothing=0.89"])
    assert cfg.train.label_smoothing == 0.89


# --------------------------------------------------------------------------- divergence advice


class _Images:
    """What divergence_advice reads of a split: its images, and its length."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)


class _Splits:
    def __init__(self):
        # Normalised MNIST pixels lie within about -0.43..2.8: no blame on data.std.
        self.train = _Images(np.full((2, 1, 28, 28), 2.8, dtype=np.float32))


def advice_for(lr):
    cfg = C.load_config(QUICK, [f"train.lr={lr}"])
    return divergence_advice(cfg, _Splits())


def suggested_lr(advice):
    words = [w for w in advice.replace(")", " ").split() if w.startswith("train.lr=")]
    assert len(words) == 1, advice
    return float(words[0].split("=", 1)[1])


@pytest.mark.parametrize("lr", ["1e300", "1e9", "2"])
def test_an_absurd_learning_rate_gets_a_rate_that_trains_suggested(lr):
    advice = advice_for(lr)
    assert f"train.lr = {float(lr):g} is far above the 0.05 to 0.1" in advice
    suggestion = suggested_lr(advice)
    assert suggestion == 0.05  # the shipped configs' rate, not lr / 4
    C.load_config(QUICK, [f"train.lr={suggestion:g}"])  # a value the config takes


@pytest.mark.parametrize("lr,suggested", [(0.8, 0.2), (0.4, 0.1), (1.0, 0.25)])
def test_a_usual_learning_rate_still_gets_a_quarter_suggested(lr, suggested):
    advice = advice_for(lr)
    assert "far above" not in advice
    assert math.isclose(suggested_lr(advice), suggested)


def test_fit_at_lr_1e300_says_which_rate_to_try(tmp_path, monkeypatch, synthetic_mnist,
                                                synthetic_mnist_dir):
    env = small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    result = invoke("fit", "--config", env["config"], "-q", "--set", "train.lr=1e300")
    assert_one_line_error(result, 1, "diverged", "train.lr = 1e+300 is far above",
                          "(e.g. --set train.lr=0.05)")
    assert "2.5e+299" not in result.stderr


@pytest.mark.parametrize("overrides,limit", [
    (["augment.elastic_alpha=1e300"], 343),
    (["augment.elastic_alpha=400", "augment.elastic_sigma=4"], 343),
    (["augment.elastic_alpha=90", "augment.elastic_sigma=1"], 85),
])
def test_an_elastic_distortion_that_leaves_no_digit_is_refused(overrides, limit):
    """elastic_alpha = 1e300 made the first step's loss NaN and the advice blame the rate."""
    with pytest.raises(C.ConfigError) as info:
        C.load_config(QUICK, overrides)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{QUICK}, --set {overrides[0]}")
    assert "[augment] elastic_alpha" in message and "more than half the image" in message
    assert f"keep elastic_alpha at most {limit} at this sigma" in message
    edge = [f"augment.elastic_alpha={limit}"] + overrides[1:]
    assert C.load_config(QUICK, edge).augment.elastic_alpha == limit  # the limit itself is kept
