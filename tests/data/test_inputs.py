"""Reading inputs (cnntrain.data.inputs): images through Pillow, .npy stacks, IDX files and
folders, each refused in one line when it cannot be read. The hostile cases (special files,
huge headers, decompression bombs) are in tests/apps/test_hostile_inputs.py."""

import sys

import numpy as np
import pytest

from cnntrain.data import inputs
from cnntrain.data.inputs import InputError
from cnntrain.data.preprocess import grey_levels, to_mnist_field
from cnntrain.errors import MissingExtra
from tests.data.test_preprocess import SEVEN, canvas


def test_load_image_reads_grey_colour_transparent_and_16_bit_pictures(tmp_path):
    from PIL import Image

    picture = canvas((50, 40), SEVEN, 10, 10)
    expected = to_mnist_field(picture)
    Image.fromarray(picture).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([picture] * 3, axis=-1)).convert("RGB").save(tmp_path / "rgb.bmp")
    # Black ink on a transparent background: shown on white paper, as a viewer would.
    rgba = np.zeros((50, 40, 4), np.uint8)
    rgba[..., 3] = 255 - picture
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "deep.tif")
    Image.fromarray(picture).save(tmp_path / "grey.pgm")
    Image.fromarray(picture).convert("P").save(tmp_path / "palette.gif")
    for name in ("grey.png", "rgb.bmp", "alpha.png", "deep.tif", "grey.pgm", "palette.gif"):
        grey = inputs.load_image(tmp_path / name)
        assert grey.shape == (50, 40) and grey.dtype == np.float32, name
        np.testing.assert_allclose(to_mnist_field(grey), expected, atol=1e-5, err_msg=name)


def test_read_input_reads_npy_stacks_and_idx_files(tmp_path):
    stack = np.stack([canvas((28, 28), SEVEN, 2, 3), canvas((28, 28), SEVEN, 10, 15)])
    np.save(tmp_path / "one.npy", stack[0])
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "channels.npy", stack[:, None].astype(np.float32) / 255)
    header = b"\0\0\x08\x03" + np.array([2, 28, 28], ">u4").tobytes()
    (tmp_path / "digits-idx3-ubyte").write_bytes(header + stack.tobytes())
    assert [label for label,
            _ in inputs.read_input(tmp_path / "one.npy")] == [str(tmp_path / "one.npy")]
    for name in ("stack.npy", "channels.npy", "digits-idx3-ubyte"):
        entries = inputs.read_input(tmp_path / name)
        assert [label for label, _ in entries] == [f"{tmp_path / name}[{i}]" for i in range(2)]
        for (_, grey), original in zip(entries, stack):
            np.testing.assert_allclose(grey_levels(grey), original / 255, atol=1e-6)


def test_unreadable_inputs_are_one_line_input_errors(tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "archive.npz", a=np.zeros(3))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0\0\x02")
    (tmp_path / "empty").mkdir()
    names = ["text.png", "trunc.png", "objects.npy", "archive.npz", "flat.npy", "bad-idx3-ubyte",
             "missing.png", "empty"]
    for name in names:
        with pytest.raises(InputError) as caught:
            inputs.read_input(tmp_path / name)
        message = str(caught.value)
        assert str(tmp_path / name) in message and "\n" not in message, message


def test_a_folder_stands_for_its_images_sorted_and_an_empty_one_is_reported(tmp_path):
    for name in ("b.png", "a.jpg", "c.npy", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    files = inputs.expand_inputs([tmp_path, tmp_path / "notes.txt", tmp_path / "empty"])
    assert [f.name for f in files] == ["a.jpg", "b.png", "c.npy", "notes.txt", "empty"]


def test_without_pillow_image_files_give_the_install_hint(tmp_path, monkeypatch):
    (tmp_path / "x.png").write_bytes(b"")
    # Pillow as if not installed: its modules already imported are hidden too
    for module in ("PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as caught:
        inputs.read_input(tmp_path / "x.png")
    assert str(caught.value) == "reading image files needs Pillow: pip install 'cnntrain[images]'"
    assert caught.value.exit_code == 2


def test_the_readers_and_preprocess_do_not_import_pillow_at_module_level():
    import subprocess
    code = ("import sys; import cnntrain.data.inputs, cnntrain.data.preprocess, "
            "cnntrain.apps.inference; sys.exit('PIL' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_picture_too_large_to_read_safely_is_an_input_error(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(canvas((40, 40), SEVEN, 5, 5)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels is then a "bomb"
    with pytest.raises(InputError, match="huge.png: too large to read safely"):
        inputs.read_input(tmp_path / "huge.png")
