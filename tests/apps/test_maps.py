"""`cnntrain plot --maps`: the activation maps are the layers' real outputs, and the picture
is a whole PNG of the documented size."""

import numpy as np
import pytest
from PIL import Image

from cnntrain.apps import maps
from cnntrain.apps.inference import Predictor
from cnntrain.nn import functional as fn
from tests.apps.test_plots import not_blank, png_size
from tests.data.test_preprocess import SEVEN, canvas
from tests.support.checkpoints import make_network, save_network, write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke


def test_maps_are_each_conv_and_pooling_layer_after_the_activation_behind_it():
    network, _ = make_network(["conv 3 5 pad=2", "relu", "maxpool 2", "conv 4 3", "meanpool 2",
                               "tanh", "flatten", "dense 10"])
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    logits, rows = maps.activation_maps(network, x)
    assert [title for title, _ in rows] == ["conv1 + relu1", "maxpool1", "conv2",
                                            "meanpool1 + tanh1"]
    np.testing.assert_array_equal(logits, network.forward(x, train=False))
    layers = dict(network.layers)
    conv1, _ = fn.conv_forward(x, layers["conv1"].params["W"], layers["conv1"].params["b"], 1, 2)
    np.testing.assert_allclose(rows[0][1], np.maximum(conv1, 0)[0], rtol=1e-6)
    pooled, _ = fn.maxpool2d(np.maximum(conv1, 0), 2, 2)
    np.testing.assert_allclose(rows[1][1], pooled[0], rtol=1e-6)
    conv2, _ = fn.conv_forward(pooled, layers["conv2"].params["W"], layers["conv2"].params["b"],
                              1, 0)
    np.testing.assert_allclose(rows[2][1], conv2[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[3][1], np.tanh(fn.meanpool2d(conv2, 2, 2))[0], rtol=1e-5,
                               atol=1e-6)
    assert [m.shape for _, m in rows] == [(3, 28, 28), (3, 14, 14), (4, 12, 12), (4, 6, 6)]


def test_a_row_is_taken_after_the_batchnorm_activation_and_dropout_behind_it():
    network, _ = make_network(["conv 3 5 pad=2", "batchnorm", "relu", "dropout 0.5", "maxpool 2",
                               "conv 4 3", "batchnorm", "maxpool 2", "batchnorm", "flatten",
                               "dense 16", "batchnorm", "dropout 0.2", "dense 10"])
    rng = np.random.default_rng(1)
    layers = dict(network.layers)
    for name in ("batchnorm1", "batchnorm2", "batchnorm3", "batchnorm4"):
        bn = layers[name]
        bn.params["gamma"][...] = rng.uniform(0.5, 2.0, bn.channels)
        bn.params["beta"][...] = rng.normal(0.0, 0.5, bn.channels)
        bn.buffers["running_mean"][...] = rng.normal(0.0, 0.5, bn.channels)
        bn.buffers["running_var"][...] = rng.uniform(0.25, 4.0, bn.channels)
    x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    logits, rows = maps.activation_maps(network, x)
    assert [title for title, _ in rows] == ["conv1 + batchnorm1 + relu1 + dropout1", "maxpool1",
                                            "conv2 + batchnorm2", "maxpool2 + batchnorm3"]
    np.testing.assert_array_equal(logits, network.forward(x, train=False))

    def bn(name, y):
        b = layers[name]
        return fn.batchnorm_inference(y, b.params["gamma"], b.params["beta"],
                                      b.buffers["running_mean"], b.buffers["running_var"])

    conv1, _ = fn.conv_forward(x, layers["conv1"].params["W"], layers["conv1"].params["b"], 1, 2)
    first = np.maximum(bn("batchnorm1", conv1), 0)  # dropout: the identity in evaluation
    np.testing.assert_allclose(rows[0][1], first[0], rtol=1e-5, atol=1e-6)
    pooled, _ = fn.maxpool2d(first, 2, 2)
    np.testing.assert_allclose(rows[1][1], pooled[0], rtol=1e-5, atol=1e-6)
    conv2, _ = fn.conv_forward(pooled, layers["conv2"].params["W"], layers["conv2"].params["b"])
    np.testing.assert_allclose(rows[2][1], bn("batchnorm2", conv2)[0], rtol=1e-5, atol=1e-5)
    # After pooling as after a convolution (batchnorm4, after the dense layer, makes no row).
    pooled2 = fn.maxpool2d(bn("batchnorm2", conv2), 2, 2)[0]
    np.testing.assert_allclose(rows[3][1], bn("batchnorm3", pooled2)[0], rtol=1e-5, atol=1e-5)


def test_plot_maps_of_a_network_with_batchnorm_and_dropout(tmp_path, real_mnist_dir):
    """Its checkpoint holds running statistics, which the picture's maps are computed with;
    the long titles get label lines of their own, and the band grows to hold them."""
    layers = ["conv 16 5 pad=2", "batchnorm", "relu", "dropout 0.5", "maxpool 2", "conv 8 3",
              "batchnorm", "flatten", "dense 16", "batchnorm", "dense 10"]
    network, cfg = make_network(layers)
    bn = dict(network.layers)["batchnorm1"]
    bn.buffers["running_mean"][...] = np.linspace(-0.5, 0.5, bn.channels)
    bn.buffers["running_var"][...] = np.linspace(0.5, 2.0, bn.channels)
    save_network(tmp_path / "bn.npz", network, cfg)
    result = invoke("plot", "--maps", tmp_path / "bn.npz", "--image", 0, "--data-dir",
                    real_mnist_dir, "-o", tmp_path / "maps.png")
    assert result.exit_code == 0, result.output
    predictor = Predictor.from_checkpoint(tmp_path / "bn.npz")
    loaded = dict(predictor.network.layers)["batchnorm1"].buffers["running_var"]
    np.testing.assert_array_equal(loaded, bn.buffers["running_var"])
    from cnntrain.data.mnist import read_idx
    field = read_idx(real_mnist_dir / "t10k-images-idx3-ubyte")[:1] / 255.0
    _, rows = maps.activation_maps(predictor.network, predictor.normalise(field))
    assert [title for title, _ in rows] == ["conv1 + batchnorm1 + relu1 + dropout1", "maxpool1",
                                            "conv2 + batchnorm2"]
    assert maps._label(rows[0][0]) == ("conv1", ["+ batchnorm1 + relu1", "+ dropout1"])
    assert maps._band_height(16, rows[0][0]) > maps._band_height(16, "conv1")
    assert png_size(tmp_path / "maps.png") == (maps.WIDTH, maps.maps_height(rows))
    assert not_blank(tmp_path / "maps.png")


def test_plot_maps_of_a_picture_file(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "best.npz"
    write_checkpoint(checkpoint)
    Image.fromarray(canvas((120, 90), np.kron(SEVEN, np.ones((5, 5))), 20, 30)).save(
        tmp_path / "seven.png")
    result = invoke("plot", "--maps", checkpoint, "--input", tmp_path / "seven.png",
                    "-o", tmp_path / "maps.png")
    assert result.exit_code == 0, result.output
    predictor = Predictor.from_checkpoint(checkpoint)
    from cnntrain.data.inputs import load_image
    from cnntrain.data.preprocess import to_mnist_field
    field = to_mnist_field(load_image(tmp_path / "seven.png"))
    probabilities = predictor.probabilities(field[None])[0]
    digit = int(probabilities.argmax())
    assert f"predicted {digit}, {100 * probabilities[digit]:.1f}%" in result.stdout
    _, rows = maps.activation_maps(predictor.network, predictor.normalise(field[None]))
    assert png_size(tmp_path / "maps.png") == (maps.WIDTH, maps.maps_height(rows))
    assert not_blank(tmp_path / "maps.png")


def test_plot_maps_of_an_mnist_test_image(tmp_path, real_mnist_dir):
    checkpoint = tmp_path / "m.npz"
    write_checkpoint(checkpoint)
    result = invoke("plot", "--maps", checkpoint, "--image", 3, "--data-dir", real_mnist_dir,
                    "-o", tmp_path / "maps.png")
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "maps.png")[0] == maps.WIDTH and not_blank(tmp_path / "maps.png")
    out_of_range = invoke("plot", "--maps", checkpoint, "--image", 10000, "--data-dir",
                          real_mnist_dir, "-o", tmp_path / "x.png")
    assert_one_line_error(out_of_range, 2, "--image 10000 is out of range", "0..9999")


@pytest.mark.parametrize("args, fragment", [
    (["--image", "2"], "go with --maps"),
    (["--maps", "{ckpt}", "{ckpt}"], "without run folders"),
    (["--maps", "{ckpt}", "--input", "{stack}", "--image", "5"], "holds 2 picture(s)"),
    (["--maps", "{dense}", "--input", "{stack}"], "no convolution or pooling layer"),
    (["--maps", "{ckpt}", "--input", "{blank}"], "no ink"),
    (["--maps", "{ckpt}", "--input", "{out}"], "is the input"),
])
def test_plot_maps_errors_are_one_line(tmp_path, args, fragment):
    write_checkpoint(tmp_path / "m.npz")
    write_checkpoint(tmp_path / "dense.npz", ["flatten", "dense 10"])
    np.save(tmp_path / "stack.npy", np.stack([canvas((28, 28), SEVEN, 2, 2)] * 2))
    np.save(tmp_path / "blank.npy", np.zeros((28, 28)))
    names = {"ckpt": tmp_path / "m.npz", "dense": tmp_path / "dense.npz",
             "stack": tmp_path / "stack.npy", "blank": tmp_path / "blank.npy",
             "out": tmp_path / "maps.png"}
    if "{out}" in args:  # the user's own picture, given as input and as output
        Image.fromarray(canvas((40, 40), SEVEN, 5, 5)).save(tmp_path / "maps.png")
    before = (tmp_path / "maps.png").read_bytes() if "{out}" in args else None
    args = [a.format(**names) for a in args]
    result = invoke("plot", *args, "-o", tmp_path / "maps.png")
    assert result.exit_code != 0
    assert_one_line_error(result, result.exit_code, fragment)
    if before is None:
        assert not (tmp_path / "maps.png").exists()
    else:
        assert (tmp_path / "maps.png").read_bytes() == before
