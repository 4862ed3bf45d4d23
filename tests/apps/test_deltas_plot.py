"""`cnntrain plot --deltas`: the figure draws explain's own numbers (max pooling's routed delta is
the delta the layer below gets, the kernel and weight gradients are the layer's), --target
changes them, the PNG is whole, of the documented size and written atomically, and misuse gets
one-line errors."""

import numpy as np
import pytest
from PIL import Image

from cnntrain.apps import deltas
from cnntrain.apps.inference import Predictor
from cnntrain.nn.explain import explain
from tests.apps.test_plots import not_blank, png_size
from tests.data.test_preprocess import SEVEN, canvas
from tests.support.checkpoints import make_network, save_network, write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke, use_synthetic_mnist

# Batch norm after a convolution and after a dense layer, max pooling, dropout and dense.
BN_POOL_DENSE = ["conv 10 3 pad=1", "batchnorm", "relu", "maxpool 2", "conv 4 3", "relu",
                 "maxpool 2", "flatten", "dense 12", "batchnorm", "dropout 0.5", "dense 10"]


@pytest.fixture
def data(monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    return synthetic_mnist_dir


@pytest.fixture
def bn_checkpoint(tmp_path):
    """A checkpoint of BN_POOL_DENSE whose batch norms are far from the identity, so that
    evaluation mode (running statistics) is what the figure shows."""
    network, cfg = make_network(BN_POOL_DENSE)
    rng = np.random.default_rng(4)
    for name, layer in network.layers:
        if name.startswith("batchnorm"):
            layer.params["gamma"][...] = rng.uniform(0.5, 2.0, layer.channels)
            layer.buffers["running_mean"][...] = rng.normal(0.0, 0.5, layer.channels)
            layer.buffers["running_var"][...] = rng.uniform(0.25, 4.0, layer.channels)
    path = tmp_path / "bn.npz"
    save_network(path, network, cfg)
    return path


def test_test_image_figure_is_a_whole_png_of_the_documented_size(tmp_path, data,
                                                                  bn_checkpoint):
    output = tmp_path / "out" / "deltas.png"
    output.parent.mkdir()
    output.write_bytes(b"an older picture")
    result = invoke("plot", "--deltas", bn_checkpoint, "--image", 5, "--target", 2,
                    "--data-dir", data, "-o", output)
    assert result.exit_code == 0, result.output
    # Atomic: the older file is replaced whole, and no temporary file is left beside it.
    assert [p.name for p in output.parent.iterdir()] == ["deltas.png"]
    predictor = Predictor.from_checkpoint(bn_checkpoint)
    from cnntrain.data.mnist import read_idx
    field = read_idx(data / "t10k-images-idx3-ubyte")[5] / np.float32(255)
    explained = explain(predictor.network, predictor.normalise(field[None]), 2)
    digit = int(np.argmax(explained["probabilities"]))
    assert f"(predicted {digit}, target 2, loss {explained['loss']:.4g})" in result.stdout
    bands = deltas.delta_bands(predictor.network, explained)
    assert [band.name for band in bands] == [name for name, _ in predictor.network.layers]
    assert png_size(output) == (deltas.WIDTH, deltas.deltas_height(bands))
    assert not_blank(output)


def test_rows_are_explains_numbers_on_symmetric_scales():
    network, _ = make_network(BN_POOL_DENSE)
    field = np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype(np.float32)
    explained = explain(network, field, 4)
    bands = {band.name: band for band in deltas.delta_bands(network, explained)}
    layers = {entry["name"]: entry for entry in explained["layers"]}

    # Max pooling's routed delta is the delta its input (relu1's output) gets.
    routed = bands["maxpool1"].rows[2]
    assert routed.kind == "maps" and len(routed.data) == deltas.MAX_CHANNELS
    np.testing.assert_allclose(routed.data, layers["relu1"]["delta"][:deltas.MAX_CHANNELS],
                               rtol=1e-6)
    assert "8 of 10 maps" in bands["conv1"].rows[0].caption

    delta = bands["conv2"].rows[1]
    bound = np.abs(layers["conv2"]["delta"]).max()
    assert delta.limits == pytest.approx((-bound, bound)) and delta.cmap == deltas.DIVERGING
    # conv2's kernel gradient: per output map a mosaic of its 10 input channels' kernels.
    kernels = bands["conv2"].rows[2]
    grad = layers["conv2"]["weight_grad"]
    assert kernels.kind == "kernels" and len(kernels.data) == 4
    np.testing.assert_allclose(kernels.data[1][4:7, 8:11], grad[1, 6])
    assert np.isnan(kernels.data[1][3]).all()  # the blank line between two lines of kernels

    matrix = bands["dense2"].rows[2]
    np.testing.assert_array_equal(matrix.data, layers["dense2"]["weight_grad"].T)
    assert any("running" in line for line in bands["batchnorm2"].equation)
    # A long layer description is wrapped, not run into the pictures.
    assert len(bands["batchnorm1"].about) > 2
    assert max(len(line) for band in bands.values() for line in band.about) \
        <= deltas.LABEL_CHARS + 2
    assert any("softmax(z) - onehot" in line for line in bands["dense2"].equation)
    last = bands["dense2"].rows[1]
    np.testing.assert_allclose(last.data, explained["probabilities"] - np.eye(10)[4])


def test_the_target_changes_the_deltas_and_defaults_to_the_prediction(tmp_path):
    network, cfg = make_network(BN_POOL_DENSE)
    save_network(tmp_path / "m.npz", network, cfg)
    predictor = Predictor.from_checkpoint(tmp_path / "m.npz")
    field = (canvas((28, 28), SEVEN, 4, 6) / 255.0).astype(np.float32)
    digit, target, predicted = deltas.plot_deltas(predictor, field, tmp_path / "a.png",
                                                  title="t")
    assert target == digit == int(predictor.predict(field[None])[0])
    other = (digit + 3) % 10
    _, target, moved = deltas.plot_deltas(predictor, field, tmp_path / "b.png", title="t",
                                          target=other)
    assert target == other
    p = predicted["probabilities"]
    assert predicted["loss"] == pytest.approx(-np.log(p[digit]), rel=1e-5)
    assert moved["loss"] == pytest.approx(-np.log(p[other]), rel=1e-5)
    np.testing.assert_allclose(moved["layers"][-1]["delta"], p - np.eye(10)[other], atol=1e-6)
    assert not np.allclose(moved["input_delta"], predicted["input_delta"])
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_a_picture_file(tmp_path, bn_checkpoint):
    Image.fromarray(canvas((120, 90), np.kron(SEVEN, np.ones((5, 5))), 20, 30)).save(
        tmp_path / "seven.png")
    result = invoke("plot", "--deltas", bn_checkpoint, "--input", tmp_path / "seven.png",
                    "-o", tmp_path / "deltas.png")
    assert result.exit_code == 0, result.output
    predictor = Predictor.from_checkpoint(bn_checkpoint)
    from cnntrain.data.inputs import load_image
    from cnntrain.data.preprocess import to_mnist_field
    field = to_mnist_field(load_image(tmp_path / "seven.png"))
    digit = int(predictor.predict(field[None])[0])
    assert f"(predicted {digit}, target {digit}, loss " in result.stdout
    explained = explain(predictor.network, predictor.normalise(field[None]), digit)
    height = deltas.deltas_height(deltas.delta_bands(predictor.network, explained))
    assert png_size(tmp_path / "deltas.png") == (deltas.WIDTH, height)
    assert not_blank(tmp_path / "deltas.png")


def test_a_network_without_maps_is_drawn_as_vectors(tmp_path):
    network, cfg = make_network(["flatten", "dense 16", "tanh", "dense 10"])
    save_network(tmp_path / "d.npz", network, cfg)
    predictor = Predictor.from_checkpoint(tmp_path / "d.npz")
    field = (canvas((28, 28), SEVEN, 4, 6) / 255.0).astype(np.float32)
    _, _, explained = deltas.plot_deltas(predictor, field, tmp_path / "d.png", title="t",
                                         target=1)
    bands = deltas.delta_bands(predictor.network, explained)
    assert {row.kind for band in bands for row in band.rows} == {"vector", "matrix"}
    assert png_size(tmp_path / "d.png") == (deltas.WIDTH, deltas.deltas_height(bands))


@pytest.mark.parametrize("args, fragments", [
    (["--target", "3"], ["--target goes with --deltas"]),
    (["--maps", "{ckpt}", "--target", "3"], ["--target goes with --deltas"]),
    (["--image", "2"], ["go with --maps or --deltas"]),
    (["--deltas", "{ckpt}", "--maps", "{ckpt}"], ["not both"]),
    (["--deltas", "{ckpt}", "{ckpt}"], ["--deltas CHECKPOINT alone", "without run folders"]),
    (["--deltas", "{ckpt}", "--filters", "{ckpt}"], ["--deltas CHECKPOINT alone"]),
    (["--deltas", "{ckpt}", "--input", "{stack}", "--target", "10"],
     ["--target 10 is out of range", "0..9"]),
    (["--deltas", "{ckpt}", "--image", "200"], ["--image 200 is out of range", "0..199"]),
    (["--deltas", "{ckpt}", "--input", "{stack}", "--image", "5"], ["holds 2 picture(s)"]),
    (["--deltas", "{ckpt}", "--input", "{out}"], ["is the input"]),
])
def test_misuse_is_a_one_line_error_and_writes_nothing(tmp_path, data, args, fragments):
    write_checkpoint(tmp_path / "m.npz", BN_POOL_DENSE)
    np.save(tmp_path / "stack.npy", np.stack([canvas((28, 28), SEVEN, 2, 2)] * 2))
    out = tmp_path / "deltas.png"
    Image.fromarray(canvas((40, 40), SEVEN, 5, 5)).save(out)  # the user's own picture
    before = out.read_bytes()
    names = {"ckpt": tmp_path / "m.npz", "stack": tmp_path / "stack.npy", "out": out}
    result = invoke("plot", *[a.format(**names) for a in args], "--data-dir", data, "-o", out)
    assert_one_line_error(result, 2, *fragments)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deltas.png", "m.npz", "stack.npy",
                                                          "synthetic-mnist"]


def test_a_negative_target_is_refused_by_the_option_parser(tmp_path):
    write_checkpoint(tmp_path / "m.npz", BN_POOL_DENSE)
    result = invoke("plot", "--deltas", tmp_path / "m.npz", "--target", "-1",
                    "-o", tmp_path / "d.png")
    assert result.exit_code == 2
    assert "Invalid value for '--target'" in result.stderr
    assert not (tmp_path / "d.png").exists()
