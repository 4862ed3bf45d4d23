"""ONNX export: onnxruntime gives cnntrain's logits on real test images, for the shipped
architectures and for every layer kind registered in cnntrain.nn.layers.REGISTRY."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from cnntrain.apps import export
from cnntrain.apps.inference import Predictor
from cnntrain.data.mnist import read_idx
from cnntrain.nn import layers as L
from cnntrain.nn import model
from cnntrain.nn.dense import Dense
from cnntrain.nn.layers import Layer
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.norm import BatchNorm
from cnntrain.nn.pooling import MaxPool2D
from cnntrain.runs.build import build_optimizer
from tests.support.checkpoints import make_network, save_network, write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke, small_config

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 1000
STEPS = 5  # a few SGD steps move the weights off their initial values; parity, not accuracy


def layer_kinds():
    """Every layer kind the layer grammar knows: the registry of layer classes. A kind it gains
    must get an example below and an entry in export.EXPORTERS, or these tests fail."""
    return sorted(L.REGISTRY)


# One small network per layer kind, each holding that kind (several hold more than one).
EXAMPLES = {
    "conv": ["conv 3 3 stride=2 pad=1", "relu", "conv 4 2x3", "flatten", "dense 10"],
    "maxpool": ["conv 3 5", "maxpool 3 stride=2", "relu", "flatten", "dense 10"],
    "meanpool": ["conv 3 3", "tanh", "meanpool 3", "flatten", "dense 10"],
    "dense": ["flatten", "dense 16", "relu", "dense 10"],
    "relu": ["conv 2 3", "relu", "maxpool 2", "flatten", "dense 10"],
    "tanh": ["conv 2 3", "tanh", "meanpool 2", "flatten", "dense 10", "tanh"],
    "sigmoid": ["conv 2 5 pad=2", "sigmoid", "maxpool 2", "flatten", "dense 12", "sigmoid",
                "dense 10"],
    "flatten": ["flatten", "dense 10"],
    "dropout": ["conv 3 3", "relu", "dropout 0.3", "maxpool 2", "flatten", "dense 16", "relu",
                "dropout 0.5", "dense 10"],
    # After a convolution (per channel of (N, C, H, W)) and after a dense layer (per feature of
    # (N, C)), one of them with its own eps, which the graph must carry.
    "batchnorm": ["conv 4 3", "batchnorm", "relu", "maxpool 2", "flatten", "dense 16",
                  "batchnorm eps=0.01 momentum=0.3", "tanh", "dense 10"],
}


@pytest.fixture(scope="module")
def test_images(real_mnist_dir):
    """The first 1,000 real test images as [0, 1] fields, and training batches."""
    fields = read_idx(real_mnist_dir / "t10k-images-idx3-ubyte")[:N_IMAGES] / 255.0
    train = read_idx(real_mnist_dir / "train-images-idx3-ubyte")[:STEPS * 64] / 255.0
    labels = read_idx(real_mnist_dir / "train-labels-idx1-ubyte")[:STEPS * 64].astype(np.int64)
    return fields.astype(np.float32), train, labels


def trained_checkpoint(path, config_text, train, labels):
    """The config's initial network after STEPS SGD steps on real digits, saved to path.

    A few steps barely move batch norm's gamma and beta off 1 and 0, so they, and the running
    statistics, are then set to values of their own, unlike each other and unlike the batch
    statistics of training: an export that used the batch's statistics, or dropped gamma,
    beta or a running statistic, gives other logits."""
    network, cfg = make_network(config_text=config_text)
    optimizer, loss = build_optimizer(cfg, network), SoftmaxCrossEntropy()
    x = ((train - cfg.data.mean) / cfg.data.std)[:, None].astype(network.dtype)
    for step in range(STEPS):
        batch = slice(64 * step, 64 * (step + 1))
        loss.forward(network.forward(x[batch]), labels[batch])
        network.backward(loss.backward())
        optimizer.step(network.grads)
    rng = np.random.default_rng(7)
    for _, layer in network.layers:
        if isinstance(layer, BatchNorm):
            n = layer.channels
            layer.params["gamma"][...] *= rng.uniform(0.5, 2.0, n)
            layer.params["beta"][...] += rng.normal(0.0, 0.5, n)
            layer.buffers["running_mean"][...] += rng.normal(0.0, 0.5, n)
            layer.buffers["running_var"][...] *= rng.uniform(0.25, 4.0, n)
    save_network(path, network, cfg)
    return network


def onnx_outputs(path, fields):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run([export.LOGITS, export.PROBABILITIES],
                                        {export.INPUT: fields[:, None].astype(np.float32)})
    return logits, probabilities


def assert_parity(checkpoint, output, fields):
    result = invoke("export", checkpoint, "-o", output)
    assert result.exit_code == 0, result.output
    assert f"ONNX opset {export.OPSET}" in result.stdout
    logits, probabilities = onnx_outputs(output, fields)
    predictor = Predictor.from_checkpoint(checkpoint)
    expected = np.asarray(predictor.logits(fields), dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(probabilities, predictor.probabilities(fields), atol=1e-5)
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.999


@pytest.mark.parametrize("config", ["lenet5.ini", "lenet5-classic.ini"])
def test_shipped_architectures_match_onnxruntime_on_real_images(config, test_images, tmp_path):
    fields, train, labels = test_images
    text = (REPO / "configs" / config).read_text()
    trained_checkpoint(tmp_path / "model.npz", text, train, labels)
    assert_parity(tmp_path / "model.npz", tmp_path / "model.onnx", fields)


def uncovered_layer_kinds():
    """Registered layer kinds without an exporter, without an example network, whose example
    holds no layer of that kind, or whose example builds a layer export.EXPORTERS cannot
    translate."""
    uncovered = []
    for kind in layer_kinds():
        cls = L.REGISTRY[kind]
        if cls not in export.EXPORTERS:
            uncovered.append(f"{kind} ({cls.__name__}) has no exporter entry")
        if kind not in EXAMPLES:
            uncovered.append(f"{kind} (no example network in tests/apps/test_export.py)")
            continue
        network = model.build_network(EXAMPLES[kind], rng=np.random.default_rng(0))
        if not any(type(layer) is cls for _, layer in network.layers):
            uncovered.append(f"{kind}: its example network holds no {cls.__name__}")
        uncovered += [f"{kind}: {name} ({type(layer).__name__}) has no exporter entry"
                      for name, layer in network.layers if export.exporter_for(layer) is None]
    return uncovered


def test_every_layer_kind_has_an_example_and_an_exporter():
    assert uncovered_layer_kinds() == []


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that a kind registered by a test goes away with it."""
    monkeypatch.setattr(L, "REGISTRY", dict(L.REGISTRY))
    return L.REGISTRY


def test_a_new_layer_kind_without_exporter_fails_the_coverage_check(registry, monkeypatch):
    @L.register
    class Swish(Layer):
        kind = "swish"

        def forward(self, x, train=True):
            return x / (1 + np.exp(-x))

    assert uncovered_layer_kinds() == ["swish (Swish) has no exporter entry",
                                       "swish (no example network in tests/apps/test_export.py)"]
    monkeypatch.setitem(EXAMPLES, "swish", ["flatten", "dense 10"])
    assert uncovered_layer_kinds() == ["swish (Swish) has no exporter entry",
                                       "swish: its example network holds no Swish"]
    monkeypatch.setitem(EXAMPLES, "swish", ["flatten", "swish", "dense 10"])
    assert uncovered_layer_kinds() == ["swish (Swish) has no exporter entry",
                                       "swish: swish1 (Swish) has no exporter entry"]
    monkeypatch.setitem(export.EXPORTERS, Swish, export._elementwise("Identity"))
    assert uncovered_layer_kinds() == []
    # An example that builds another kind without a translation is caught too.
    monkeypatch.delitem(export.EXPORTERS, Dense)
    assert "swish: dense1 (Dense) has no exporter entry" in uncovered_layer_kinds()
    # And the registry is the one the test reads its kinds from: the real one knows no swish.
    monkeypatch.undo()
    assert "swish" not in L.REGISTRY and uncovered_layer_kinds() == []


@pytest.mark.parametrize("kind", layer_kinds())
def test_every_layer_kind_matches_onnxruntime_on_real_images(kind, test_images, tmp_path):
    assert kind in EXAMPLES, f"layer kind '{kind}' has no example network"
    fields, train, labels = test_images
    text = small_config(EXAMPLES[kind], data={"val_size": 100, "mean": 0.2, "std": 0.4})
    trained_checkpoint(tmp_path / "model.npz", text, train, labels)
    assert_parity(tmp_path / "model.npz", tmp_path / "model.onnx", fields)


def test_float64_networks_export_as_float32(test_images, tmp_path):
    fields, train, labels = test_images
    text = small_config(train={"dtype": "float64", "seed": 1})
    trained_checkpoint(tmp_path / "model.npz", text, train, labels)
    assert_parity(tmp_path / "model.npz", tmp_path / "model.onnx", fields)


def test_metadata_holds_classes_normalisation_and_source(tmp_path):
    history = [{"epoch": 1, "test_acc": 0.5}]
    write_checkpoint(tmp_path / "m.npz", history=history,
                     data={"val_size": 100, "mean": 0.25, "std": 0.5})
    assert invoke("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx").exit_code == 0
    saved = onnx.load(str(tmp_path / "m.onnx"))
    assert [(o.domain, o.version) for o in saved.opset_import] == [("", export.OPSET)]
    props = {p.key: p.value for p in saved.metadata_props}
    assert json.loads(props["classes"]) == [str(d) for d in range(10)]
    assert json.loads(props["normalisation"]) == {"mean": 0.25, "std": 0.5, "inside_graph": True}
    assert props["source_checkpoint"] == str(tmp_path / "m.npz") and props["epoch"] == "1"
    assert props["test_accuracy"] == "0.5"
    assert [i.name for i in saved.graph.input] == ["image"]
    assert [o.name for o in saved.graph.output] == ["logits", "probabilities"]
    assert [n.op_type for n in saved.graph.node][:2] == ["Sub", "Div"]


def test_a_layer_without_translation_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "m.npz")
    monkeypatch.delitem(export.EXPORTERS, MaxPool2D)
    result = invoke("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, 1, "m.npz", "cannot export layer maxpool1 (MaxPool2D)")
    assert not (tmp_path / "m.onnx").exists()

    class Mystery(Layer):
        pass

    network = model.build_network(["flatten", "dense 10"])
    network.layers.insert(1, ("mystery1", Mystery()))
    with pytest.raises(export.UnsupportedLayer, match=r"layer mystery1 \(Mystery\)"):
        export.build_onnx(network, mean=0.0, std=1.0)


def test_without_onnx_the_error_names_the_extra(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "m.npz")
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = invoke("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, 2, "pip install 'cnntrain[onnx]'")
    assert result.stderr.strip() == "error: exporting needs onnx: pip install 'cnntrain[onnx]'"


def test_export_keeps_an_existing_file_when_it_fails(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "m.npz")
    (tmp_path / "m.onnx").write_bytes(b"the user's older model")
    monkeypatch.delitem(export.EXPORTERS, Dense)
    assert invoke("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx").exit_code == 1
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's older model"


def test_export_never_writes_over_its_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    result = invoke("export", tmp_path / "m.npz", "-o", tmp_path / "." / "m.npz")
    assert_one_line_error(result, 2, "is the input", "choose another output file")
    assert (tmp_path / "m.npz").read_bytes() == before


def test_batchnorm_and_dropout_become_evaluation_mode_nodes():
    network = model.build_network(EXAMPLES["batchnorm"],
                                  rng=np.random.default_rng(0))
    nodes = {n.name: n for n in export.build_onnx(network, mean=0.0, std=1.0).graph.node}
    for name, eps in (("batchnorm1", 1e-5), ("batchnorm2", 0.01)):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[name].attribute}
        assert nodes[name].op_type == "BatchNormalization"
        assert attributes.get("training_mode", 0) == 0
        assert attributes["epsilon"] == pytest.approx(eps, rel=1e-6)
        assert list(nodes[name].input[1:]) == [f"{name}.{key}" for key in
                                               ("gamma", "beta", "running_mean", "running_var")]
    dropout = model.build_network(EXAMPLES["dropout"], rng=np.random.default_rng(0))
    ops = {n.name: n.op_type for n in export.build_onnx(dropout, mean=0.0, std=1.0).graph.node}
    assert ops["dropout1"] == ops["dropout2"] == "Identity"
