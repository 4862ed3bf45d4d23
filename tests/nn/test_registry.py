"""The layer registry: a layer class is the whole definition of a kind of layer.

The worked example of docs/layers.md (a leaky ReLU: one class plus its maths) is executed here as
written, and toy layers that need randomness and keep buffers are trained, checkpointed,
resumed and evaluated through the real CLI.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cnntrain.config import parse_config
from cnntrain.nn import fast, functional
from cnntrain.nn import layers as L
from cnntrain.nn.model import LayerLineError, build_network, check_layers, grammar_table
from cnntrain.nn.optim import SGD
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support.clitools import invoke, small_config, use_synthetic_mnist
from tests.support.gradcheck import numeric_gradient, relative_error

REPO = Path(__file__).resolve().parents[2]
# The page that documents the grammar and the worked example.
LAYERS_DOC = REPO / "docs" / "layers.md"


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that layers registered by a test go away with it."""
    monkeypatch.setattr(L, "REGISTRY", dict(L.REGISTRY))
    return L.REGISTRY


def readme_example_blocks():
    section = LAYERS_DOC.read_text().split("## Adding a layer", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


@pytest.fixture
def leaky_relu(registry, monkeypatch):
    """docs/layers.md's LeakyReLU, executed as written into the files it names."""
    blocks = readme_example_blocks()
    assert set(blocks) == {"cnntrain/nn/functional.py", "cnntrain/nn/fast.py",
                           "cnntrain/nn/layers.py"}
    for module in (functional, fast):
        definitions = {}
        exec(blocks[f"cnntrain/nn/{module.__name__.rsplit('.', 1)[1]}.py"], {**vars(module)},
             definitions)
        for name, value in definitions.items():
            monkeypatch.setattr(module, name, value, raising=False)
    namespace = {**vars(L)}
    exec(blocks["cnntrain/nn/layers.py"], namespace)
    return namespace["LeakyReLU"]


def test_readme_grammar_table_is_the_registrys():
    assert textwrap.indent(grammar_table(), "    ") in LAYERS_DOC.read_text()
    assert grammar_table().splitlines()[0].startswith("conv FILTERS KERNEL [stride=S] [pad=P]")
    assert len(grammar_table().splitlines()) == len(L.REGISTRY)


def test_the_readme_example_layer_is_one_class_plus_its_maths(leaky_relu, registry):
    assert registry["leakyrelu"] is leaky_relu
    assert "leakyrelu [slope=S]" in grammar_table()
    # The fast path runs the reference kernel it has no faster version of, bound by name.
    assert fast.leaky_relu is functional.leaky_relu
    rows = check_layers("conv 4 5 / leakyrelu slope=0.2 / maxpool 2 / flatten / dense 10")
    assert [r.output_shape for r in rows][:3] == [(4, 24, 24), (4, 24, 24), (4, 12, 12)]
    net = build_network("flatten / dense 16 / leakyrelu / dense 10", rng=np.random.default_rng(0))
    assert net.layers[2][0] == "leakyrelu1" and net.layers[2][1].slope == 0.01
    assert net.params["dense1.W"].std() == pytest.approx(np.sqrt(2 / 784),
                                                         rel=0.05)  # He: init_hint
    assert list(net.params) == ["dense1.W", "dense1.b", "dense2.W", "dense2.b"]
    cfg = parse_config("[model]\nlayers =\n    flatten\n    leakyrelu slope=0.5\n    dense 10\n")
    assert cfg.model.layers == ("flatten", "leakyrelu slope=0.5", "dense 10")


@pytest.mark.parametrize("line,message", [
    ("leakyrelu slope=2", "slope must be <= 1, got 2.0"),
    ("leakyrelu slope=-0.1", "slope must be >= 0, got -0.1"),
    ("leakyrelu slope=steep", "slope must be a number, got 'steep'"),
    ("leakyrelu 3", "expected 0 number(s), got 1; usage: leakyrelu [slope=S]"),
    ("leakyrelu alpha=0.1", "unknown option 'alpha' for leakyrelu (allowed: slope)"),
    ("leakyrelu slope=0.1 slope=0.2", "option 'slope' is given twice"),
    ("leakyrelo", "unknown layer 'leakyrelo' (did you mean 'leakyrelu'?)"),
])
def test_the_example_layers_mistakes_come_from_its_class(leaky_relu, line, message):
    with pytest.raises(LayerLineError) as caught:
        check_layers(f"flatten / {line} / dense 10")
    assert caught.value.line_no == 2 and message in caught.value.reason


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_the_example_layers_gradient_matches_finite_differences(leaky_relu, kernels):
    rng = np.random.default_rng(1)
    layer = leaky_relu(0.1, kernels=kernels)
    x = rng.standard_normal((3, 2, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0.1 * x))
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G)
    numeric = numeric_gradient(lambda: float(np.sum(layer.forward(x, train=False) * G)), x)
    assert relative_error(dx, numeric) < 1e-8
    x32 = x.astype(np.float32)
    assert layer.forward(x32).dtype == np.float32
    assert layer.backward(G.astype(np.float32)).dtype == np.float32


def test_a_kind_cannot_be_registered_twice(registry):
    class Other(L.Layer):
        kind = "relu"

    with pytest.raises(ValueError, match="already ReLU"):
        L.register(Other)


# The grammar table's order (docs/layers.md), which the error messages naming the known layers
# follow too.
GRAMMAR_ORDER = ["conv", "maxpool", "meanpool", "dense", "relu", "tanh", "sigmoid", "flatten",
                 "dropout", "batchnorm"]

REGISTRY_PROBE = """
import importlib, inspect, json, pkgutil, sys
importlib.import_module(sys.argv[1])
from cnntrain.nn import layers
first = list(layers.REGISTRY)
import cnntrain.nn
for module in pkgutil.iter_modules(cnntrain.nn.__path__):
    importlib.import_module(f"cnntrain.nn.{module.name}")
kinds = sorted({cls.kind for name, module in sys.modules.items()
                if name.startswith("cnntrain.nn.")
                for cls in vars(module).values()
                if inspect.isclass(cls) and issubclass(cls, layers.Layer) and cls.kind})
print(json.dumps([first, list(layers.REGISTRY), kinds]))
"""


@pytest.mark.parametrize("first", ["cnntrain.nn.model", "cnntrain.nn.norm", "cnntrain.nn.layers",
                                   "cnntrain.nn.functional", "cnntrain.apps.export"])
def test_every_layer_kind_is_registered_in_grammar_order_whatever_is_imported_first(first):
    """The kinds live one module per concept; whichever module a fresh interpreter imports
    first, the registry already holds every layer class of cnntrain/nn, in the grammar's order."""
    result = subprocess.run([sys.executable, "-c", REGISTRY_PROBE, first], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    registered_first, registered_after_all, defined = json.loads(result.stdout)
    assert registered_first == GRAMMAR_ORDER
    assert registered_after_all == GRAMMAR_ORDER
    assert defined == sorted(GRAMMAR_ORDER)


# --- randomness and buffers -----------------------------------------------------------------

STOP = {"at": None, "calls": 0}  # Noise presses Ctrl-C in its STOP["at"]-th training forward


class Noise(L.Layer):
    """Multiplies by random 0/1 masks in training (dropout's pattern); identity in inference."""

    kind = "noise"
    about = "test layer: random masks"
    needs_rng = True

    def forward(self, x, train=True):
        if not train:
            return x
        STOP["calls"] += 1
        if STOP["calls"] == STOP["at"]:
            os.kill(os.getpid(), signal.SIGINT)
        mask = (self._generator().random(x.shape) < 0.8).astype(x.dtype)
        self._keep(train, mask)
        return x * mask

    def backward(self, dout, input_grad=True):
        (mask,) = self._kept()
        return dout * mask


class Centre(L.Layer):
    """Subtracts the batch mean in training and a running mean (a buffer) in inference."""

    kind = "centre"
    about = "test layer: a running mean"

    def __init__(self, *, kernels="fast"):
        super().__init__(kernels=kernels)
        self.add_buffer("mean", np.zeros(1))
        self.add_buffer("batches", np.zeros(1, dtype=np.int64))

    def forward(self, x, train=True):
        if not train:
            return x - x.dtype.type(self.buffers["mean"][0])
        mean = x.mean()
        self.buffers["mean"] *= 0.9
        self.buffers["mean"] += 0.1 * mean
        self.buffers["batches"] += 1
        self._keep(train, None)
        return x - mean

    def backward(self, dout, input_grad=True):
        self._kept()
        return dout - dout.mean()


@pytest.fixture
def toy_layers(registry):
    L.register(Noise)
    L.register(Centre)
    STOP.update(at=None, calls=0)
    yield
    STOP.update(at=None, calls=0)


TOY = ["conv 4 5 pad=2", "relu", "maxpool 2", "flatten", "centre", "dense 32", "relu", "noise",
       "dense 10"]


def test_each_random_layer_gets_its_own_seeded_generator(toy_layers):
    from cnntrain.runs.build import layer_seeds

    lines = "flatten / noise / dense 10 / noise"
    a = build_network(lines, seeds=layer_seeds(0))
    b = build_network(lines, seeds=layer_seeds(0))
    c = build_network(lines, seeds=layer_seeds(1))
    draws = {name: [net.random_layers[name].rng.random() for net in (a, b, c)]
             for name in ("noise1", "noise2")}
    assert draws["noise1"][0] == draws["noise1"][1] != draws["noise1"][2]
    assert draws["noise1"][0] != draws["noise2"][0]  # independent streams per layer
    unseeded = build_network(lines)
    with pytest.raises(RuntimeError, match="needs a random generator"):
        unseeded.forward(np.ones((2, 1, 28, 28), np.float32))
    assert unseeded.forward(np.ones((2, 1, 28, 28), np.float32), train=False).shape == (2, 10)


def test_buffers_are_neither_trained_nor_decayed(toy_layers):
    net = build_network(TOY, rng=np.random.default_rng(0))
    assert list(net.buffers) == ["centre1.mean", "centre1.batches"]
    assert not set(net.buffers) & set(net.params)
    opt = SGD(net.params, 0.1, weight_decay=0.5, decayed=net.decayed())
    assert set(opt.velocity) == set(net.params)


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir, toy_layers):
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "toy.ini"
    config.write_text(small_config(TOY, train={"epochs": 3, "batch_size": 32}))
    return config


def test_random_and_buffered_layers_resume_bit_identical(env, tmp_path):
    straight = tmp_path / "straight"
    assert invoke("fit", "--config", env, "-q", "--out", straight).exit_code == 0
    STOP.update(at=23, calls=0)  # mid-epoch 2 (16 steps per epoch)
    stopped = tmp_path / "stopped"
    result = invoke("fit", "--config", env, "-q", "--out", stopped)
    assert result.exit_code == 130, result.output
    saved = load_checkpoint(stopped / "checkpoints" / "last.npz")
    assert saved.meta["step"] == 23 and saved.buffers["centre1.batches"][0] == 23
    assert set(saved.meta["layer_rngs"]) == {"noise1"}
    STOP.update(at=None)
    resumed = invoke("fit", "--resume", stopped / "checkpoints" / "last.npz", "-q")
    assert resumed.exit_code == 0, resumed.output

    a = load_checkpoint(straight / "checkpoints" / "last.npz")
    b = load_checkpoint(stopped / "checkpoints" / "last.npz")
    assert set(a.buffers) == {"centre1.mean",
                              "centre1.batches"} and a.buffers["centre1.batches"][0] == 48
    for kind in ("params", "buffers", "optimizer"):
        for name, value in getattr(a, kind).items():
            np.testing.assert_array_equal(getattr(b, kind)[name], value, err_msg=name)
    assert a.meta["layer_rngs"] == b.meta["layer_rngs"]
    assert a.meta["layer_rngs"]["noise1"] != saved.meta["layer_rngs"]["noise1"]

    # eval rebuilds the network, buffers included, from the checkpoint alone.
    report = json.loads(invoke("eval", straight / "checkpoints" / "last.npz", "--json").stdout)
    summary = json.loads((straight / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["final"]["test_acc"], abs=1e-12)
    assert report["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-6)
