"""The Dropout and BatchNorm layers: both kernel paths, PyTorch parity in training and evaluation,
train/eval switching, their grammar, weight decay, and an exact resume of a run using them."""

import json
import os
import signal

import numpy as np
import pytest

from cnntrain.nn.dense import Dense
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import LayerLineError, build_network, check_layers
from cnntrain.nn.norm import BatchNorm, Dropout
from cnntrain.nn.optim import SGD
from cnntrain.runs.build import layer_seeds
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support.clitools import (
    assert_one_line_error,
    invoke,
    logged_metrics,
    small_config,
    use_synthetic_mnist,
)
from tests.support.gradcheck import numeric_gradient, relative_error
from tests.support.optional import import_or_unavailable

torch = import_or_unavailable("torch", "TORCH", "pip install torch==2.13.0")

KERNELS = ["fast", "reference"]


def batch_innermost(a):
    """The same logical (N, C, H, W) array stored (C, H, W, N), as the fast convolutions make it."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def shifted_batch(rng, shape):
    shift = rng.normal(0, 2, shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    return shift + rng.uniform(0.5, 3) * rng.standard_normal(shape)


# --------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (9, 5)])
def test_batchnorm_layer_matches_torch_in_training_then_evaluation(shape, kernels):
    """Five training steps (outputs, input and parameter gradients, running statistics with
    PyTorch's unbiased variance), then evaluation (outputs and input gradients), in float64."""
    rng = np.random.default_rng(0)
    layer = BatchNorm(shape[1], spatial=len(shape) == 4, dtype=np.float64, kernels=kernels)
    layer.params["gamma"][...] = rng.uniform(0.5, 2, shape[1])
    layer.params["beta"][...] = rng.normal(0, 1, shape[1])
    module = layer.torch_module(torch.nn).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.params["gamma"]))
        module.bias.copy_(torch.from_numpy(layer.params["beta"]))
    for step in range(5):
        x, G = shifted_batch(rng, shape), rng.standard_normal(shape)
        if len(shape) == 4 and step % 2:
            x, G = batch_innermost(x), batch_innermost(G)  # the layout the fast convs hand over
        y = layer.forward(x, train=True)
        dx = layer.backward(G)
        tx = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
        module.train()
        module.zero_grad()
        ty = module(tx)
        ty.backward(torch.from_numpy(np.ascontiguousarray(G)))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.grads["gamma"], module.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(layer.grads["beta"], module.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.buffers["running_mean"], module.running_mean.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], module.running_var.numpy(), rtol=1e-12)

    x = shifted_batch(rng, shape)
    module.eval()
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    np.testing.assert_allclose(layer.forward(x, train=False), ty.detach().numpy(), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("kernels", KERNELS)
def test_batchnorm_layer_finite_differences_including_gamma_and_beta(kernels):
    rng = np.random.default_rng(1)
    layer = BatchNorm(3, dtype=np.float64, kernels=kernels)
    layer.params["gamma"][...] = rng.uniform(0.5, 2, 3)
    layer.params["beta"][...] = rng.normal(0, 1, 3)
    x = shifted_batch(rng, (4, 3, 5, 4))
    G = rng.standard_normal(x.shape)
    layer.forward(x)
    dx = layer.backward(G)

    def objective():
        return float(np.sum(layer.forward(x, train=True) * G))

    assert relative_error(dx, numeric_gradient(objective, x)) < 1e-7
    for key in ("gamma", "beta"):
        assert relative_error(layer.grads[key], numeric_gradient(objective,
                                                                 layer.params[key])) < 1e-7


def test_batchnorm_train_and_eval_switching():
    """Training uses the batch's statistics and moves the running ones; evaluation uses the
    running ones, moves nothing, and scores each image on its own; back in training the
    batch statistics are used again."""
    rng = np.random.default_rng(2)
    layer = BatchNorm(3, dtype=np.float64)
    x = shifted_batch(rng, (8, 3, 4, 4))
    y = layer.forward(x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)  # normalised by the batch
    running = {k: v.copy() for k, v in layer.buffers.items()}
    assert not np.allclose(running["running_mean"], 0)

    y_eval = layer.forward(x, train=False)
    for key, value in running.items():
        np.testing.assert_array_equal(layer.buffers[key], value)  # evaluation moves nothing
    expected = (x - running["running_mean"][None, :, None, None]) / np.sqrt(
        running["running_var"][None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x[:1], train=False), y_eval[:1], rtol=1e-14)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones_like(x))  # evaluation keeps nothing to differentiate

    np.testing.assert_allclose(layer.forward(x, train=True), y, rtol=1e-12)  # batch stats again
    assert not np.allclose(layer.buffers["running_mean"], running["running_mean"])


def test_batchnorm_on_a_single_example_per_feature_is_refused_in_training_only():
    layer = BatchNorm(4, spatial=False, dtype=np.float64)
    layer.forward(np.ones((1, 4)), train=False)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.forward(np.ones((1, 4)), train=True)


def test_gamma_and_beta_are_not_decayed_unless_asked_and_running_stats_are_buffers():
    net = build_network(["conv 4 3", "batchnorm", "relu", "flatten", "dense 10",
                         "batchnorm decay=1"],
                        input_shape=(1, 6, 6), rng=np.random.default_rng(0))
    assert set(net.buffers) == {"batchnorm1.running_mean", "batchnorm1.running_var",
                                "batchnorm2.running_mean", "batchnorm2.running_var"}
    assert not set(net.buffers) & set(net.params)
    assert {"batchnorm1.gamma", "batchnorm1.beta"} & set(net.decayed()) == set()
    assert {"batchnorm2.gamma", "batchnorm2.beta"} <= set(net.decayed())
    assert "batchnorm2.beta" not in net.decayed(decay_biases=False)
    opt = SGD(net.params, 0.1, weight_decay=0.5, decayed=net.decayed())
    for grad in net.grads.values():
        grad[...] = 0
    opt.step(net.grads)  # zero gradients: only weight decay moves anything
    np.testing.assert_array_equal(net.params["batchnorm1.gamma"], 1)
    np.testing.assert_allclose(net.params["batchnorm2.gamma"], 1 - 0.1 * 0.5)


@pytest.mark.parametrize("line,message", [
    ("batchnorm momentum=1.5", "momentum must be <= 1"),
    ("batchnorm eps=0", "eps must be >="),
    ("batchnorm decay=2", "decay must be <= 1"),
    ("batchnorm 3", "usage: batchnorm [momentum=M] [eps=E] [decay=0|1]"),
    ("dropout", "usage: dropout P"),
    ("dropout 1", "p must be <= 0.99"),
    ("dropout -0.1", "p must be >= 0"),
    ("dropout half", "p must be a number"),
])
def test_grammar_errors_name_the_line_and_the_fix(line, message):
    with pytest.raises(LayerLineError, match="layer line 2") as err:
        check_layers(["conv 4 3", line, "flatten", "dense 10"])
    assert message in str(err.value)


def test_batchnorm_after_dense_and_after_conv_builds_the_right_torch_module():
    net = build_network(["conv 4 3", "batchnorm", "flatten", "dense 10",
                         "batchnorm eps=0.001 momentum=0.3"],
                        input_shape=(1, 6, 6))
    first, second = net.layers[1][1], net.layers[4][1]
    assert isinstance(first.torch_module(torch.nn), torch.nn.BatchNorm2d)
    module = second.torch_module(torch.nn)
    assert isinstance(module, torch.nn.BatchNorm1d)
    assert (module.num_features, module.eps, module.momentum) == (10, 0.001, 0.3)


# ------------------------------------------------------------------------------ dropout

@pytest.mark.parametrize("kernels", KERNELS)
def test_dropout_layer_train_and_eval(kernels):
    net = build_network(["flatten", "dropout 0.25", "dense 10"], input_shape=(1, 20, 20),
                        rng=np.random.default_rng(0), dtype=np.float64, kernels=kernels,
                        seeds=layer_seeds(0))
    layer = net.layers[1][1]
    x = np.random.default_rng(1).standard_normal((50, 400))
    assert layer.forward(x, train=False) is x  # evaluation: the identity
    y1, y2 = layer.forward(x), layer.forward(x)
    dropped = y1 == 0
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(y1[~dropped], x[~dropped] / 0.75, rtol=1e-15)
    assert not np.array_equal(y1 == 0, y2 == 0)  # a fresh mask for every training batch
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, (y2 != 0) / 0.75)

    again = build_network(["flatten", "dropout 0.25", "dense 10"], input_shape=(1, 20, 20),
                          dtype=np.float64, kernels=kernels, seeds=layer_seeds(0)).layers[1][1]
    np.testing.assert_array_equal(again.forward(x), y1)  # same seed, same masks
    other = build_network(["flatten", "dropout 0.25", "dense 10"], input_shape=(1, 20, 20),
                          dtype=np.float64, kernels=kernels, seeds=layer_seeds(1)).layers[1][1]
    assert not np.array_equal(other.forward(x), y1)


def test_dropout_without_a_generator_runs_inference_but_refuses_to_train():
    assert [row.name for row in check_layers(["flatten", "dropout 0.5", "dense 10"])] == [
        "flatten1", "dropout1", "dense1"]
    layer = Dropout(0.5)
    x = np.ones((2, 3), dtype=np.float32)
    assert layer.forward(x, train=False) is x
    with pytest.raises(RuntimeError, match="needs a random generator"):
        layer.forward(x, train=True)


def test_dropout_matches_torch_given_its_mask():
    """torch draws its own masks, so compare the maths: torch.nn.Dropout's kept values are
    x / (1 - p), and its gradient is the same mask; ours, given the mask torch drew."""
    rng = np.random.default_rng(3)
    layer = Dropout(0.4)
    layer.rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 30))
    torch.manual_seed(0)
    tx = torch.tensor(x, requires_grad=True)
    ty = layer.torch_module(torch.nn).train()(tx)
    G = rng.standard_normal(x.shape)
    ty.backward(torch.from_numpy(G))
    torch_mask = ty.detach().numpy() / x  # 0 or 1 / (1 - p)
    np.testing.assert_allclose(layer.kernels.dropout(x, torch_mask), ty.detach().numpy(),
                               rtol=1e-15)
    np.testing.assert_allclose(layer.kernels.dropout_backward(G, torch_mask), tx.grad.numpy(),
                               rtol=1e-12)
    assert set(np.round(np.unique(torch_mask), 12)) == {0.0, round(1 / 0.6, 12)}


# -------------------------------------------------------------------- exact resume of a run

LAYERS = ["conv 4 5 pad=2", "batchnorm", "relu", "maxpool 2", "conv 8 3", "batchnorm", "relu",
          "maxpool 2", "flatten", "dense 32", "batchnorm", "relu", "dropout 0.3", "dense 10"]


@pytest.fixture
def interrupt_in_dropout(monkeypatch):
    """Ctrl-C (a real SIGINT) during the STOP["at"]-th training forward of the dropout layer."""
    stop = {"at": None, "calls": 0}
    forward = Dropout.forward

    def counting_forward(self, x, train=True):
        if train:
            stop["calls"] += 1
            if stop["calls"] == stop["at"]:
                os.kill(os.getpid(), signal.SIGINT)
        return forward(self, x, train)

    monkeypatch.setattr(Dropout, "forward", counting_forward)
    return stop


def test_a_run_with_dropout_and_batchnorm_resumes_bit_identical(
        tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir, interrupt_in_dropout):
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    config = tmp_path / "norm.ini"
    config.write_text(small_config(LAYERS, train={"epochs": 3, "batch_size": 32,
                                                  "weight_decay": 5e-4}))
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke("fit", "--config", config, "-q", "--out", straight).exit_code == 0
    interrupt_in_dropout.update(at=23, calls=0)  # mid-epoch 2 (16 steps per epoch)
    result = invoke("fit", "--config", config, "-q", "--out", stopped)
    assert result.exit_code == 130, result.output
    saved = load_checkpoint(stopped / "checkpoints" / "last.npz")
    assert saved.meta["step"] == 23
    assert set(saved.meta["layer_rngs"]) == {"dropout1"}
    assert len(saved.buffers) == 6
    interrupt_in_dropout.update(at=None)
    assert invoke("fit", "--resume", stopped / "checkpoints" / "last.npz", "-q").exit_code == 0

    a = load_checkpoint(straight / "checkpoints" / "last.npz")
    b = load_checkpoint(stopped / "checkpoints" / "last.npz")
    for kind in ("params", "buffers", "optimizer"):
        assert set(getattr(a, kind)) == set(getattr(b, kind))
        for name, value in getattr(a, kind).items():
            np.testing.assert_array_equal(getattr(b, kind)[name], value, err_msg=name)
    assert a.meta["layer_rngs"] == b.meta["layer_rngs"]
    assert not np.array_equal(a.buffers["batchnorm1.running_var"],
                              saved.buffers["batchnorm1.running_var"])
    metrics = [logged_metrics(run) for run in (straight, stopped)]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3

    # eval rebuilds the network, running statistics included, from the checkpoint alone.
    report = json.loads(invoke("eval", straight / "checkpoints" / "last.npz", "--json").stdout)
    summary = json.loads((straight / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["final"]["test_acc"], abs=1e-12)
    assert report["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-6)


# ------------------------------------------------------- a whole network against PyTorch

class _GivenMask:
    """Stands in for torch.nn.Dropout: multiplies by the mask our layer drew (torch would
    draw its own)."""

    def __init__(self):
        self.mask = None

    def __call__(self, x):
        return x * torch.from_numpy(self.mask) if self.mask is not None else x


@pytest.mark.parametrize("kernels", KERNELS)
def test_a_network_with_batchnorm_and_dropout_trains_as_pytorchs(kernels):
    """Five SGD steps (momentum, weight decay on conv and dense only, as the layers declare),
    then evaluation: parameters, running statistics and outputs as PyTorch's, float64."""
    lines = ["conv 4 5 pad=2", "batchnorm", "relu", "maxpool 2", "flatten", "dense 20",
             "batchnorm momentum=0.2", "relu", "dropout 0.3", "dense 10"]
    rng = np.random.default_rng(7)
    net = build_network(lines, input_shape=(1, 12, 12), rng=rng, dtype=np.float64,
                        kernels=kernels, seeds=layer_seeds(7))
    modules = [layer.torch_module(torch.nn).double() for _, layer in net.layers]
    given = _GivenMask()
    modules[8] = given
    decayed, undecayed = [], []
    for (name, layer), module in zip(net.layers, modules):
        for key, value in layer.params.items():
            torch_key = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}[key]
            param = getattr(module, torch_key)
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.ascontiguousarray(
                    value.T if isinstance(layer, Dense) and key == "W" else value)))
            (decayed if f"{name}.{key}" in net.decayed() else undecayed).append(param)
    assert len(undecayed) == 4  # the two batch norms' gamma and beta

    def torch_forward(x):
        for module in modules:
            x = module(x)
        return x

    opt = SGD(net.params, 0.05, momentum=0.9, weight_decay=5e-3, decayed=net.decayed())
    topt = torch.optim.SGD([{"params": decayed, "weight_decay": 5e-3},
                            {"params": undecayed, "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    loss = SoftmaxCrossEntropy()
    for module in modules[:8]:
        module.train()
    for _ in range(5):
        x, y = rng.standard_normal((8, 1, 12, 12)), rng.integers(0, 10, 8)
        loss.forward(net.forward(x), y)
        given.mask = net.layers[8][1]._cache[0]  # the mask our dropout drew for this batch
        net.backward(loss.backward())
        opt.step(net.grads)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(torch_forward(torch.from_numpy(x)),
                                          torch.from_numpy(y)).backward()
        topt.step()
    for (name, layer), module in zip(net.layers, modules):
        for key, value in layer.params.items():
            torch_key = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}[key]
            theirs = getattr(module, torch_key).detach().numpy()
            ours = value.T if isinstance(layer, Dense) and key == "W" else value
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12, err_msg=f"{name}.{key}")
        for key in layer.buffers:
            np.testing.assert_allclose(layer.buffers[key], getattr(module, key).numpy(), rtol=1e-10,
                                       err_msg=f"{name}.{key}")
    for module in modules[:8]:
        module.eval()
    given.mask = None
    x = rng.standard_normal((6, 1, 12, 12))
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x, train=False),
                                   torch_forward(torch.from_numpy(x)).numpy(),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sets,held", [(["train.batch_size=1"], 1), (["train.batch_size=499"], 1)])
def test_a_batch_too_small_for_batch_norm_is_a_config_error_before_training(
        tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir, sets, held):
    """500 training images: batch 499 leaves a last batch of 1, which batch norm after a dense
    layer cannot normalise; said before any training, as a one-line error."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    config = tmp_path / "norm.ini"
    config.write_text(small_config(LAYERS))
    args = [arg for s in sets for arg in ("--set", s)]
    result = invoke("fit", "--config", config, "-q", "--out", tmp_path / "run", *args)
    assert_one_line_error(result, 2, "layer batchnorm3 ('batchnorm') needs at least 2 images",
                          f"a batch holds {held}", "[train] batch_size")
    assert not (tmp_path / "run").exists()


def test_batch_norm_after_a_convolution_takes_a_last_batch_of_one_image(
        tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    """Over (N, H, W), one image still gives H*W values per channel."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    config = tmp_path / "conv.ini"
    config.write_text(small_config(LAYERS[:9] + ["dense 10"],
                                   train={"epochs": 1, "batch_size": 499}))
    result = invoke("fit", "--config", config, "-q", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
