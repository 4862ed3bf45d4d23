"""`cnntrain predict` through the CLI: outputs, failures that do not stop the others, --raw."""

import json

import numpy as np
import pytest
from PIL import Image

from cnntrain.apps.inference import Predictor
from cnntrain.data.preprocess import to_mnist_field
from tests.data.test_preprocess import SEVEN, canvas
from tests.support.checkpoints import write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "best.npz"
    write_checkpoint(path)
    return path


@pytest.fixture
def pictures(tmp_path):
    """A folder of two good pictures, plus files next to it: a blank one, a broken one, a
    stack of three 28x28 fields, one of them empty."""
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(canvas((60, 50), np.kron(SEVEN, np.ones((2, 2))), 10, 5)).save(folder / "a.png")
    Image.fromarray(canvas((90, 40), SEVEN, 50, 20, dark_on_light=False)).save(
        folder / "b.jpg", quality=95)
    (folder / "readme.txt").write_text("not a picture, and not read: not an image name")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    stack = np.stack([to_mnist_field(canvas((28, 28), SEVEN, 3, 4)), np.zeros((28, 28)),
                      to_mnist_field(canvas((40, 40), SEVEN, 20, 2))]).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    return folder


def expected_digits(checkpoint, paths):
    from cnntrain.data.inputs import load_image
    fields = np.stack([to_mnist_field(load_image(p)) for p in paths])
    return Predictor.from_checkpoint(checkpoint).probabilities(fields)


def test_every_picture_gets_a_line_and_failures_do_not_stop_the_others(checkpoint, pictures):
    tmp = pictures.parent
    result = invoke("predict", checkpoint, pictures, tmp / "blank.png", tmp / "broken.png",
                    tmp / "missing.png", tmp / "stack.npy")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    labels = [line.split(": ")[0] for line in lines]
    assert labels == [str(pictures / "a.png"), str(pictures / "b.jpg"), f"{tmp / 'stack.npy'}[0]",
                      f"{tmp / 'stack.npy'}[2]"]
    probs = expected_digits(checkpoint, [pictures / "a.png", pictures / "b.jpg"])
    for line, row in zip(lines, probs):
        digit = int(np.argmax(row))
        assert line.split(": ")[1].startswith(f"{digit} ({100 * row[digit]:.2f}%)"), line
        assert f"top 3: {digit} " in line
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all(e.startswith("error: ") for e in errors)
    assert "blank.png: no ink" in errors[0]
    assert "broken.png" in errors[1] and "missing.png: no such file" in errors[2]
    assert "stack.npy[1]: no ink" in errors[3]
    assert "Traceback" not in result.output


def test_json_gives_one_object_per_input_with_the_top_k(checkpoint, pictures):
    result = invoke("predict", checkpoint, pictures, pictures.parent / "blank.png", "--json",
                    "--top", 4)
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["input"] for o in objects] == [str(pictures / "a.png"), str(pictures / "b.jpg"),
                                             str(pictures.parent / "blank.png")]
    probs = expected_digits(checkpoint, [pictures / "a.png", pictures / "b.jpg"])
    for obj, row in zip(objects, probs):
        order = np.argsort(-row, kind="stable")[:4]
        assert [t["digit"] for t in obj["top"]] == order.tolist()
        assert obj["digit"] == order[0]
        assert obj["probability"] == pytest.approx(row[order[0]], rel=1e-6)
    assert "no ink" in objects[2]["error"]


def test_all_good_exits_0(checkpoint, pictures):
    result = invoke("predict", checkpoint, pictures / "a.png", "--top", 1)
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.count("\n") == 1 and "top 1: " in result.stdout


def test_raw_takes_28x28_fields_as_they_are(checkpoint, tmp_path):
    fields = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    np.save(tmp_path / "fields.npy", fields)
    np.save(tmp_path / "big.npy", np.zeros((40, 40), np.uint8))
    result = invoke("predict", checkpoint, tmp_path / "fields.npy", tmp_path / "big.npy",
                    "--raw", "--json", "--top", 1)
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    probs = Predictor.from_checkpoint(checkpoint).probabilities(fields)
    assert [o["digit"] for o in objects[:2]] == probs.argmax(axis=1).tolist()
    assert "is 40x40; --raw takes 28x28" in objects[2]["error"]


def test_a_bad_checkpoint_is_one_line(tmp_path, pictures):
    (tmp_path / "bad.npz").write_text("nope")
    assert_one_line_error(invoke("predict", tmp_path / "bad.npz", pictures), 1, "bad.npz",
                          "not a .npz checkpoint")
