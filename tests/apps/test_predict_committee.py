"""`cnntrain predict` with several checkpoints: the committee's answer per picture, each
member's in --json, --combine and --tta, and which arguments are checkpoints."""

import json

import numpy as np
import pytest

from cnntrain.apps.committee import DEFAULT_COMBINE, load_model
from cnntrain.apps.inference import Predictor
from tests.apps.test_committee import run_checkpoint, twins
from tests.support.checkpoints import write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke


@pytest.fixture
def stack(tmp_path):
    """A .npy stack of 6 random 28x28 fields (used with --raw: no preprocessing)."""
    fields = np.random.default_rng(5).random((6, 28, 28)).astype(np.float32)
    path = tmp_path / "stack.npy"
    np.save(path, fields)
    return path, fields


@pytest.fixture
def pair(tmp_path):
    """Two networks of other initial weights, in run folders named seed-1 and seed-2."""
    paths = [run_checkpoint(tmp_path, f"seed-{seed}") for seed in (1, 2)]
    for seed, path in zip((1, 2), paths):
        write_checkpoint(path, seed=seed)
    return paths


def predict_json(*args):
    result = invoke("predict", *args, "--json", "--raw")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_two_checkpoints_print_the_committees_answer(pair, stack):
    path, fields = stack
    committee = load_model(pair, combine=DEFAULT_COMBINE)
    said = committee.answer(fields)
    records = predict_json(*pair, path, "--top", "10")
    assert [r["input"] for r in records] == [f"{path}[{n}]" for n in range(6)]
    for n, record in enumerate(records):
        digit = int(said["predictions"][n])
        assert record["digit"] == digit
        assert record["probability"] == pytest.approx(said["probabilities"][n, digit])
        top = {entry["digit"]: entry["probability"] for entry in record["top"]}
        np.testing.assert_allclose([top[d] for d in range(10)], said["probabilities"][n])
        assert [(m["name"], m["digit"]) for m in record["members"]] == [
            ("seed-1", int(said["member_predictions"][0, n])),
            ("seed-2", int(said["member_predictions"][1, n]))]
        for k, member in enumerate(record["members"]):
            assert member["probability"] == pytest.approx(
                said["members"][k, n, member["digit"]])


def test_the_text_line_gives_the_rules_digit_and_its_mean_probability(pair, stack):
    path, fields = stack
    for combine in ("mean", "vote"):
        said = load_model(pair, combine=combine).answer(fields)
        result = invoke("predict", *pair, path, "--raw", "--combine", combine)
        assert result.exit_code == 0, result.output
        for n, line in enumerate(result.stdout.splitlines()):
            digit = int(said["predictions"][n])
            assert line.startswith(f"{path}[{n}]: {digit} "
                                   f"({100 * said['probabilities'][n, digit]:.2f}%)   top 3: ")


def test_identical_networks_answer_as_one(tmp_path, stack):
    path, fields = stack
    a, b, c = twins(tmp_path)
    alone = invoke("predict", a, path, "--raw")
    assert alone.exit_code == 0
    together = invoke("predict", a, b, c, path, "--raw")
    assert together.stdout == alone.stdout
    single = predict_json(a, path)
    assert "members" not in single[0]
    probs = Predictor.from_checkpoint(a).probabilities(fields)
    assert [r["digit"] for r in single] == np.argmax(probs, axis=1).tolist()


def test_tta_with_one_checkpoint_averages_the_shifts(tmp_path, stack):
    path, fields = stack
    a, _, _ = twins(tmp_path)
    records = predict_json(a, path, "--tta", "--top", "10")
    expected = load_model([a], tta=True).probabilities(fields)
    plain = Predictor.from_checkpoint(a).probabilities(fields)
    assert np.abs(expected - plain).max() > 1e-6  # the shifts change the answer
    for record, row in zip(records, expected):
        top = {entry["digit"]: entry["probability"] for entry in record["top"]}
        np.testing.assert_allclose([top[d] for d in range(10)], row)
        assert [m["name"] for m in record["members"]] == ["a"]


def test_the_checkpoints_are_the_leading_npz_arguments(tmp_path, pair, stack):
    path, _ = stack
    result = invoke("predict", *pair)
    assert result.exit_code == 2 and "give at least one INPUT" in result.stderr
    # A first argument not ending in .npz is still the checkpoint, as before committees.
    renamed = tmp_path / "model.ckpt"
    renamed.write_bytes(pair[0].read_bytes())
    assert invoke("predict", renamed, path, "--raw").exit_code == 0
    # A checkpoint given twice is refused in one line, before any input is read.
    assert_one_line_error(invoke("predict", pair[0], pair[0], path), 1, str(pair[0]),
                          "given twice")
