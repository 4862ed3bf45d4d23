"""Pictures, end to end: tiny runs on synthetic MNIST, then `plot`, `plot --filters` and
`eval --errors`; each file must be a complete PNG of the documented pixel size."""

import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import pytest

from cnntrain.apps import plots
from cnntrain.errors import CnnTrainError, MissingExtra
from tests.support.clitools import assert_one_line_error, invoke, small_config, use_synthetic_mnist


def png_size(path):
    """(width, height) of a PNG, after checking it is whole: signature, IHDR first, every
    chunk's CRC, IEND last, and pixel data that inflates."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path} does not start with the PNG signature"
    pos, kinds, pixels = 8, [], b""
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"IDAT":
            pixels += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and pos == len(blob)
    width, height = struct.unpack(">II", blob[16:24])
    zlib.decompress(pixels)
    return width, height


def not_blank(path):
    from matplotlib.image import imread

    image = imread(str(path))
    return image[..., :3].std() > 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_mnist):
    """Tiny runs on synthetic MNIST: plain (2 epochs), shifted (augmented, 3 epochs) and weak
    (1 epoch at a tiny lr, so that it still gets digits wrong). The data environment stays in
    place for the module's tests, so eval can reload the test split."""
    tmp = tmp_path_factory.mktemp("plots")
    data_dir = synthetic_mnist.write(tmp / "mnist")
    with pytest.MonkeyPatch.context() as mp:
        use_synthetic_mnist(mp, synthetic_mnist, data_dir)
        folders = {}
        for name, translate, epochs, lr in (("plain", 0, 2, 0.05), ("shifted", 2, 3, 0.05),
                                            ("weak", 0, 1, 1e-5)):
            config = tmp / f"{name}.ini"
            config.write_text(small_config(augment={"translate": translate},
                                           train={"epochs": epochs, "lr": lr}))
            folders[name] = tmp / "runs" / name
            result = invoke("fit", "--config", config, "--out", folders[name], "-q")
            assert result.exit_code == 0, result.output
        yield {"tmp": tmp, **folders}


def test_curves_of_one_run(runs):
    out = runs["tmp"] / "one.png"
    result = invoke("plot", runs["plain"], "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    assert png_size(out) == (1200, 500) == plots.CURVES_SIZE
    assert not_blank(out)
    # Written atomically: nothing but the picture is left beside it.
    assert sorted(p.name for p in out.parent.glob(".one.png*")) == []
    # Readable as any new file would be, not private like the temporary file it was.
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_curves_of_two_runs_overlaid(runs):
    one, two = runs["tmp"] / "single.png", runs["tmp"] / "nested" / "both.png"
    assert invoke("plot", runs["plain"], "-o", one).exit_code == 0
    result = invoke("plot", runs["plain"], runs["shifted"], "-o", two)
    assert result.exit_code == 0, result.output
    assert png_size(two) == (1200, 500)
    assert two.read_bytes() != one.read_bytes()


def test_filters_of_a_checkpoint(runs):
    out = runs["tmp"] / "filters.png"
    result = invoke("plot", "--filters", runs["shifted"] / "checkpoints" / "best.npz", "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == (900, 700) == plots.FILTERS_SIZE
    assert not_blank(out)


def test_eval_draws_the_misclassified_digits(runs):
    out = runs["tmp"] / "errors.png"
    for run in ("weak", "plain"):
        result = invoke("eval", runs[run] / "checkpoints" / "last.npz", "--errors", out, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        wrong = report["n"] - round(report["accuracy"] * report["n"])
        rows = max(1, math.ceil(min(wrong, 100) / 10))
        assert png_size(out) == (1000, 80 + 100 * rows), (run, wrong)
        assert not_blank(out)
        if run == "weak":
            assert wrong > 100  # more than fit: the grid stops at 100 digits



@pytest.mark.parametrize("count,height", [(0, 180), (1, 180), (10, 180), (11, 280), (100, 1080),
                                          (250, 1080)])
def test_errors_picture_height_follows_the_digits_shown(tmp_path, count, height):
    rng = np.random.default_rng(0)
    errors = {"images": rng.random((count, 28, 28)), "labels": rng.integers(0, 10, count),
              "predictions": rng.integers(0, 10, count)}
    out = tmp_path / "e.png"
    plots.plot_errors(errors, out, title="synthetic")
    assert png_size(out) == (1000, height) == (plots.ERRORS_WIDTH, plots.errors_height(count))


def test_without_matplotlib_the_commands_say_how_to_install_it(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    hint = "plotting needs matplotlib: pip install 'cnntrain[plot]'"
    out = runs["tmp"] / "never.png"
    result = invoke("plot", runs["plain"], "-o", out)
    assert_one_line_error(result, 2, hint)
    assert result.stderr.strip() == f"error: {hint}"
    assert_one_line_error(invoke("plot", "--filters", runs["plain"] / "checkpoints" / "best.npz",
                                 "-o", out), 2, hint)
    # eval finds out before spending time on the evaluation.
    assert_one_line_error(invoke("eval", runs["plain"] / "checkpoints" / "best.npz",
                                 "--errors", out), 2, hint)
    assert not out.exists()


def test_a_folder_without_metrics_is_named(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.png"
    assert_one_line_error(invoke("plot", runs["plain"], empty, "-o", out), 2, str(empty),
                          "no metrics.jsonl")
    assert_one_line_error(invoke("plot", tmp_path / "missing", "-o", out), 2,
                          str(tmp_path / "missing"), "no such run folder")
    assert not out.exists()


def test_only_png_output(runs, tmp_path):
    assert_one_line_error(invoke("plot", runs["plain"], "-o", tmp_path / "x.jpg"), 2, ".png")
    assert_one_line_error(invoke("plot", "--filters", runs["plain"] / "checkpoints" / "last.npz",
                                 "-o", tmp_path / "x.svg"), 2, ".png")
    assert not list(tmp_path.iterdir())


def test_a_network_without_convolutions_has_no_kernels_to_draw(runs, tmp_path):
    config = runs["tmp"] / "dense.ini"
    config.write_text(small_config(layers=["flatten", "dense 32", "relu", "dense 10"],
                                   train={"epochs": 1}))
    folder = tmp_path / "dense"
    assert invoke("fit", "--config", config, "--out", folder, "-q").exit_code == 0
    assert_one_line_error(invoke("plot", "--filters", folder / "checkpoints" / "last.npz",
                                 "-o", tmp_path / "f.png"), 2, "no convolution layer")


def test_the_first_convolution_is_found_whatever_the_order():
    params = {"dense1.W": np.zeros((10, 4)), "conv2.W": np.zeros((8, 4, 5, 5)),
              "conv10.W": np.zeros((2, 8, 3, 3)), "conv1.b": np.zeros(4),
              "conv1.W": np.ones((4, 1, 5, 5))}
    name, weights = plots.first_conv_weights(params)
    assert name == "conv1.W" and weights.shape == (4, 1, 5, 5)
    assert plots.first_conv_weights({"dense1.W": np.zeros((10, 4))}) is None


def test_runs_are_labelled_by_folder_name_and_told_apart_when_names_clash(tmp_path):
    a, b, c = tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "lenet5"
    assert plots._run_labels([c]) == ["lenet5"]
    assert plots._run_labels([a, b, c]) == [str(a), str(b), "lenet5"]


def test_missing_matplotlib_is_a_usage_error_through_errors_require_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtra) as info:
        plots.plot_errors({"images": np.zeros((0, 28, 28)), "labels": [], "predictions": []},
                          "x.png")
    assert str(info.value) == "plotting needs matplotlib: pip install 'cnntrain[plot]'"
    assert info.value.exit_code == 2 and isinstance(info.value, CnnTrainError)


def test_accuracy_ticks_read_as_percentages_with_the_edges_named():
    assert plots._percent(0.995) == "99.5%" and plots._percent(0.9) == "90%"
    assert plots._percent(1 - plots.ACCURACY_EDGE) == "100%"
    assert plots._percent(plots.ACCURACY_EDGE) == "0%"
    low, high = plots._accuracy_limits([0.9, 0.99, 0.995])
    assert low < 0.9 and 0.995 < high < 1
