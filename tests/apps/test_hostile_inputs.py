"""Issue #27's hostile inputs to `cnntrain predict` and `plot --maps --input`: special files,
headers that declare more than the file holds, a decompression bomb, empty stacks, names
that are not plain text. Each bad input gets its own one-line error, the others go on, and
nothing blocks or takes more memory than a picture within the cap needs.

The commands that could block or swell run in a child process with a time limit and a cap
on its address space (MEMORY_CAP)."""

import json
import os
import resource
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cnntrain.data import inputs
from cnntrain.data.mnist import read_idx
from cnntrain.errors import DataError, one_line_reason
from tests.data.test_preprocess import SEVEN, canvas
from tests.support.checkpoints import write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke
from tests.support.proctools import child_env

MEMORY_CAP = 1 << 30  # a picture at the cap needs about half of this; the 100 MP bomb 2.8 GB


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "best.npz"
    write_checkpoint(path)
    return path


def seven_png(path, shape=(60, 50)):
    Image.fromarray(canvas(shape, np.kron(SEVEN, np.ones((2, 2))), 10, 5)).save(path)
    return path


def capped_cnntrain(tmp_path, *args, timeout=120):
    """cnntrain ARGS in a child process under MEMORY_CAP; killed (and the test failed) if it
    has not ended within `timeout` seconds. Returns the CompletedProcess."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    try:
        return subprocess.run([sys.executable, "-m", "cnntrain", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                              env=child_env(tmp_path), preexec_fn=limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cnntrain {' '.join(map(str, args))} still running after {timeout} s")


def error_lines(stderr):
    lines = stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines), stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    return lines


def npy_declaring(path, shape, dtype="<f4", payload=b"\0" * 100):
    """A .npy file whose header declares `shape` but which holds only `payload`."""
    from numpy.lib import format as npy

    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.write(payload)
    return path


def idx_declaring(path, dims, payload=b"\0" * 100):
    path.write_bytes(b"\0\0\x08" + bytes([len(dims)]) + np.array(dims, ">u4").tobytes()
                     + payload)
    return path


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def white_png(path, width, height):
    """A real PNG of white paper, width x height, written row by row: a small file that
    decodes to width * height pixels (a decompression bomb when both are large)."""
    packer, row = zlib.compressobj(9), b"\0" + b"\xff" * width
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- special files


def test_a_fifo_given_to_predict_is_refused_at_once_and_the_others_go_on(tmp_path, checkpoint):
    os.mkfifo(tmp_path / "f.png")
    seven_png(tmp_path / "seven.png")
    result = capped_cnntrain(tmp_path, "predict", checkpoint, "f.png", "seven.png",
                             timeout=60)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: f.png: is a FIFO (named pipe), not a regular file; give a picture, .npy or "
        "IDX file"]
    assert result.stdout.startswith("seven.png: ") and result.stdout.count("\n") == 1


def test_a_fifo_inside_a_folder_is_refused_not_read(tmp_path, checkpoint):
    folder = tmp_path / "scans"
    folder.mkdir()
    seven_png(folder / "a.png")
    os.mkfifo(folder / "b.png")
    result = capped_cnntrain(tmp_path, "predict", checkpoint, "scans", timeout=60)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert line.startswith("error: scans/b.png: is a FIFO (named pipe), not a regular file")
    assert [row.split(": ")[0] for row in result.stdout.splitlines()] == ["scans/a.png"]


def test_plot_maps_refuses_a_fifo_at_once(tmp_path, checkpoint):
    os.mkfifo(tmp_path / "f.png")
    result = capped_cnntrain(tmp_path, "plot", "--maps", checkpoint, "--input", "f.png",
                             "-o", "maps.png", timeout=60)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: f.png: is a FIFO (named pipe), not a regular file; give a picture, .npy or "
        "IDX file"]
    assert not (tmp_path / "maps.png").exists()


def test_a_device_is_refused_as_not_a_regular_file(checkpoint):
    result = invoke("predict", checkpoint, os.devnull)
    assert_one_line_error(result, 1, f"{os.devnull}: is a character device, not a regular file")


def test_open_input_refuses_a_fifo_swapped_in_after_the_check(tmp_path, monkeypatch):
    """A regular file when stat looks, a FIFO when open does: the open does not block and the
    file is refused all the same."""
    os.mkfifo(tmp_path / "f.png")
    seven_png(tmp_path / "plain.png")
    real_stat = os.stat
    monkeypatch.setattr(inputs.os, "stat", lambda path, *a, **k: real_stat(tmp_path / "plain.png"))
    with pytest.raises(inputs.InputError, match=r"f.png: is a FIFO \(named pipe\), not a regular"):
        inputs.open_input(tmp_path / "f.png")


# --------------------------------------------------------------------------- empty path


def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, checkpoint,
                                                                   monkeypatch):
    seven_png(tmp_path / "seven.png")
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", checkpoint, "")
    assert_one_line_error(result, 1, "'': an empty file name")
    assert result.stdout == ""
    maps = invoke("plot", "--maps", checkpoint, "--input", "", "-o", tmp_path / "maps.png")
    assert_one_line_error(maps, 1, "'': an empty file name")
    assert not (tmp_path / "maps.png").exists()


# --------------------------------------------------------------------------- headers first


def test_npy_headers_declaring_more_than_the_file_holds_are_refused_and_the_others_go_on(
        tmp_path, checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    seven_png(folder / "a-seven.png")
    npy_declaring(folder / "b-flat.npy", (10 ** 12,))
    npy_declaring(folder / "c-stack.npy", (10 ** 9, 28, 28), "|u1")
    npy_declaring(folder / "d-wide.npy", (3, 10 ** 5, 10 ** 5), "|u1")
    npy_declaring(folder / "e-objects.npy", (2, 28, 28), "|O")
    np.save(folder / "f-empty.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(folder / "g-empty.npy", np.zeros((0,)))
    seven_png(folder / "h-seven.png")
    result = capped_cnntrain(tmp_path, "predict", checkpoint, "in")
    assert result.returncode == 1
    assert [row.split(": ")[0] for row in result.stdout.splitlines()] == [
        "in/a-seven.png", "in/h-seven.png"]
    errors = error_lines(result.stderr)
    assert len(errors) == 6, errors
    expected = [
        ("b-flat.npy", "expected numbers shaped (H, W), (N, H, W) or (N, 1, H, W), got float32 "
                       "(1000000000000,)"),
        ("c-stack.npy", "truncated: its header declares uint8 (1000000000, 28, 28), "
                        "784,000,000,000 bytes, but the file holds 100"),
        ("d-wide.npy", "over the limit of 16,777,216 pixels (4096x4096); scale it down"),
        ("e-objects.npy", "holds object, not numbers"),
        ("f-empty.npy", "holds no picture (shape (0, 28, 28))"),
        ("g-empty.npy", "expected numbers shaped"),
    ]
    for line, (name, fragment) in zip(errors, expected):
        assert line.startswith(f"error: in/{name}: ") and fragment in line, (line, fragment)


def test_an_empty_npy_of_pictures_is_an_error_line(tmp_path, checkpoint):
    np.save(tmp_path / "none.npy", np.zeros((0, 1, 28, 28), np.float32))
    result = invoke("predict", checkpoint, tmp_path / "none.npy")
    assert_one_line_error(result, 1, f"{tmp_path / 'none.npy'}: holds no picture")


def test_a_users_idx_file_is_never_told_to_re_download(tmp_path, checkpoint):
    idx_declaring(tmp_path / "huge-idx3-ubyte", (10 ** 9, 28, 28))
    idx_declaring(tmp_path / "none-idx3-ubyte", (0, 28, 28), b"")
    (tmp_path / "magic-idx3-ubyte").write_bytes(b"\1\0\x08\x03" + bytes(12))
    seven_png(tmp_path / "seven.png")
    result = capped_cnntrain(tmp_path, "predict", checkpoint, "huge-idx3-ubyte",
                             "none-idx3-ubyte", "magic-idx3-ubyte", "seven.png")
    assert result.returncode == 1
    assert result.stdout.startswith("seven.png: ") and result.stdout.count("\n") == 1
    huge, none, magic = error_lines(result.stderr)
    assert huge.startswith("error: huge-idx3-ubyte: payload is 100 bytes but dimensions "
                           "1000000000x28x28 need 784000000000; the file is truncated")
    assert none == ("error: none-idx3-ubyte: holds no picture (shape (0, 28, 28)); give a file "
                    "with at least one")
    assert magic.startswith("error: magic-idx3-ubyte: not an IDX file: bad magic number")
    for line in (huge, magic):
        assert "download" not in line and "check it is an intact IDX image file" in line


def test_the_data_cache_keeps_its_own_advice(tmp_path):
    """The same damage in the data cache's file: deleting it does fetch it again."""
    path = idx_declaring(tmp_path / "t10k-images-idx3-ubyte", (10 ** 9, 28, 28))
    with pytest.raises(DataError, match="truncated, delete it to re-download"):
        read_idx(path)


def test_a_100_megapixel_png_is_refused_from_its_header_within_the_memory_cap(tmp_path,
                                                                             checkpoint):
    white_png(tmp_path / "bomb.png", 10_000, 10_000)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    seven_png(tmp_path / "seven.png")
    result = capped_cnntrain(tmp_path, "predict", checkpoint, "bomb.png", "seven.png")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: bomb.png: a 10000x10000 picture (100,000,000 pixels) is over the limit of "
        "16,777,216 pixels (4096x4096); scale it down first"]
    assert result.stdout.startswith("seven.png: ") and result.stdout.count("\n") == 1


def test_a_header_past_pillows_own_limit_is_refused_before_any_pixel(tmp_path):
    """20000x20000 is past Pillow's limit, which stops it in Image.open: the error line
    gives the reason and the cap, and nothing is decoded (the pixel data is garbage)."""
    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                                        + png_chunk(b"IDAT", b"garbage"))
    with pytest.raises(inputs.InputError) as caught:
        inputs.load_image(tmp_path / "huge.png")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'huge.png'}: too large to read safely (Image size "
                              "(400000000 pixels) exceeds limit")
    assert message.endswith("the limit is 16,777,216 pixels (4096x4096): scale it down first")


def test_a_picture_at_the_cap_is_read(tmp_path):
    """The cap refuses only what is over it: 4096x4096 is read, 4097x4096 is not."""
    white_png(tmp_path / "at.png", inputs.MAX_SIDE, inputs.MAX_SIDE)
    white_png(tmp_path / "over.png", inputs.MAX_SIDE + 1, inputs.MAX_SIDE)
    assert inputs.load_image(tmp_path / "at.png").shape == (inputs.MAX_SIDE, inputs.MAX_SIDE)
    with pytest.raises(inputs.InputError, match="a 4097x4096 picture"):
        inputs.load_image(tmp_path / "over.png")


# --------------------------------------------------------------------------- names


def test_a_name_with_a_newline_keeps_its_result_on_one_line(tmp_path, checkpoint):
    odd = seven_png(tmp_path / "two\nlines.png")
    broken = tmp_path / "it's\tbroken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    plain = seven_png(tmp_path / "plain name.png")
    result = invoke("predict", checkpoint, odd, broken, plain)
    assert result.exit_code == 1
    rows = result.stdout.splitlines()
    assert len(rows) == 2
    assert rows[0].startswith(f"'{tmp_path}/two\\nlines.png': ")
    assert rows[1].startswith(f"{tmp_path}/plain name.png: ")
    [error] = error_lines(result.stderr)
    assert error.startswith(f"error: '{tmp_path}/it\\'s\\tbroken.png': not an image cnntrain "
                            "reads (PNG, JPEG")
    as_json = invoke("predict", checkpoint, odd, "--json")
    [obj] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert obj["input"] == f"'{tmp_path}/two\\nlines.png'"


@pytest.mark.parametrize("name, shown", [
    ("plain.png", "plain.png"),
    ("with space.png", "with space.png"),
    ("new\nline.png", "'new\\nline.png'"),
    ("quote'.png", "'quote\\'.png'"),
    ('double".png', "'double\".png'"),
    ("back\\slash.png", "'back\\\\slash.png'"),
    ("esc\x1b[31m.png", "'esc\\x1b[31m.png'"),
    (os.fsdecode(b"bytes\xff.png"), "'bytes\\xff.png'"),
    ("", "''"),
])
def test_display_name_quotes_exactly_the_names_that_need_it(name, shown):
    assert inputs.display_name(name) == shown
    assert "\n" not in inputs.display_name(name)


def test_one_line_reason_drops_object_reprs():
    exc = OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e50>")
    assert one_line_reason(exc) == "cannot identify image file"
    assert one_line_reason(SyntaxError("x <_io.BufferedReader name=5> y")) == "x y"
    assert one_line_reason(ValueError("two\nlines")) == "two lines"
    assert one_line_reason(ValueError("")) == "ValueError"
    assert one_line_reason(ValueError("x" * 200)) == "x" * 117 + "..."


# --------------------------------------------------------------------------- maps = predict


def test_plot_maps_reads_a_folder_as_predict_does(tmp_path, checkpoint):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(canvas((90, 40), SEVEN, 50, 20, dark_on_light=False)).save(
        folder / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an input")
    predicted = invoke("predict", checkpoint, folder, "--json", "--top", 1)
    [obj] = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert obj["input"] == str(folder / "b.jpg")
    maps = invoke("plot", "--maps", checkpoint, "--input", folder, "-o", tmp_path / "maps.png")
    assert maps.exit_code == 0, maps.output
    assert f"predicted {obj['digit']}, {100 * obj['probability']:.1f}%" in maps.stdout
    assert (tmp_path / "maps.png").exists()


def test_plot_maps_refuses_a_folder_of_several_inputs_naming_them(tmp_path, checkpoint):
    folder = tmp_path / "two"
    folder.mkdir()
    seven_png(folder / "a.png")
    seven_png(folder / "b.png")
    result = invoke("plot", "--maps", checkpoint, "--input", folder, "-o", tmp_path / "m.png")
    assert_one_line_error(result, 1, f"{folder}: a folder of 2 input files; --input takes one",
                          str(folder / "a.png"), "cnntrain predict")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("plot", "--maps", checkpoint, "--input", empty, "-o", tmp_path / "m.png")
    assert_one_line_error(result, 1, f"{empty}: a folder with no image, .npy or IDX file")
    assert not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------- large stacks


def test_a_stack_is_predicted_by_chunks_in_order_with_its_bad_pictures_named(
        tmp_path, checkpoint, monkeypatch):
    """Chunks bound the memory of a large stack; the lines come out as one batch would give
    them, a blank picture in the middle of a chunk named by its index."""
    from cnntrain.apps import predict
    from cnntrain.apps.inference import Predictor
    from cnntrain.data.preprocess import to_mnist_field

    rng = np.random.default_rng(5)
    fields = [to_mnist_field(canvas((40, 40), SEVEN, int(rng.integers(0, 20)),
                                    int(rng.integers(0, 25)))) for _ in range(23)]
    fields[9] = np.zeros((28, 28), np.float32)
    np.save(tmp_path / "stack.npy", np.stack(fields))
    monkeypatch.setattr(predict, "CHUNK", 4)
    result = invoke("predict", checkpoint, tmp_path / "stack.npy", "--json", "--top", 1)
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["input"] for o in objects] == [f"{tmp_path / 'stack.npy'}[{i}]" for i in range(23)]
    assert "no ink" in objects[9]["error"]
    good = [f for i, f in enumerate(fields) if i != 9]
    digits = Predictor.from_checkpoint(checkpoint).probabilities(np.stack(good)).argmax(axis=1)
    assert [o["digit"] for i, o in enumerate(objects) if i != 9] == digits.tolist()
