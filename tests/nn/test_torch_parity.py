"""Parity with PyTorch autograd in float64: forward outputs, every gradient, SGD trajectories.

torch is a test-only extra. CI installs it and sets CNNTRAIN_REQUIRE_TORCH=1, so these tests
can never be skipped there; elsewhere they skip with a reason when torch is absent.
"""

import math

import numpy as np
import pytest

from cnntrain.nn.activations import ReLU, Sigmoid, Tanh
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.dense import Dense
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import build_network
from cnntrain.nn.optim import SGD, LRSchedule
from cnntrain.nn.pooling import MaxPool2D, MeanPool2D
from tests.support.optional import import_or_unavailable

torch = import_or_unavailable("torch", "TORCH", "pip install torch==2.13.0")
import torch.nn.functional as TF  # noqa: E402

RTOL = 1e-9


@pytest.fixture(params=["fast", "reference"])
def kernels(request):
    """Each test that takes it runs on both paths: the fast kernels and the textbook ones."""
    return request.param


def close(ours, theirs, rtol=RTOL):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


def t(a, grad=True):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("N,C,H,W,F,kernel,stride,pad", [
    (4, 3, 11, 9, 5, (3, 3), 1, 1), (3, 2, 12, 13, 4, (5, 3), 2, 2), (2, 6, 14, 14, 16, (5, 5), 1,
                                                                      0),
    (2, 1, 28, 28, 6, (5, 5), 1, 2), (3, 3, 10, 7, 2, (2, 2), 3, 1)])
def test_conv2d(N, C, H, W, F, kernel, stride, pad, kernels):
    rng = np.random.default_rng(0)
    layer = Conv2D(C, F, kernel, stride=stride, padding=pad, rng=rng, dtype=np.float64,
                   kernels=kernels)
    layer.params["b"][...] = rng.standard_normal(F)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G)
    tx, tW, tb = t(x), t(layer.params["W"]), t(layer.params["b"])
    ty = TF.conv2d(tx, tW, tb, stride=stride, padding=pad)
    ty.backward(t(G, grad=False))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.grads["W"], tW.grad)
    close(layer.grads["b"], tb.grad)


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (3, 1), (4, 3), (3, 3)])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pooling(kernel, stride, mode, kernels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 13, 10))
    layer = (MaxPool2D if mode == "max" else MeanPool2D)(kernel, stride, kernels=kernels)
    y = layer.forward(x)
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G)
    tx = t(x)
    pool = TF.max_pool2d if mode == "max" else TF.avg_pool2d
    ty = pool(tx, kernel, stride)
    ty.backward(t(G, grad=False))
    close(y, ty)
    close(dx, tx.grad)


def test_dense_and_activations(kernels):
    rng = np.random.default_rng(2)
    dense = Dense(7, 5, rng=rng, dtype=np.float64, kernels=kernels)
    dense.params["b"][...] = rng.standard_normal(5)
    x = rng.standard_normal((6, 7))
    G = rng.standard_normal((6, 5))
    y = dense.forward(x)
    dx = dense.backward(G)
    tx, tW, tb = t(x), t(dense.params["W"].T), t(dense.params["b"])
    ty = TF.linear(tx, tW, tb)
    ty.backward(t(G, grad=False))
    close(y, ty)
    close(dx, tx.grad)
    close(dense.grads["W"], tW.grad.T)
    close(dense.grads["b"], tb.grad)
    for ours, theirs in [(ReLU(kernels=kernels), torch.relu), (Tanh(kernels=kernels), torch.tanh),
                         (Sigmoid(kernels=kernels), torch.sigmoid)]:
        a = rng.standard_normal((4, 3, 5, 5)) * 3
        G = rng.standard_normal(a.shape)
        ta = t(a)
        out = ours.forward(a)
        grad = ours.backward(G)
        tout = theirs(ta)
        tout.backward(t(G, grad=False))
        close(out, tout)
        close(grad, ta.grad)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_softmax_cross_entropy(smoothing):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((8, 10)) * 5
    y = rng.integers(0, 10, 8)
    loss = SoftmaxCrossEntropy(smoothing)
    value = loss.forward(z, y)
    tz = t(z)
    tl = TF.cross_entropy(tz, torch.tensor(y), label_smoothing=smoothing)
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=RTOL)
    close(loss.backward(), tz.grad)


LENET5 = ["conv 6 5 pad=2", "relu", "maxpool 2", "conv 16 5", "relu", "maxpool 2", "flatten",
          "dense 120", "relu", "dense 84", "relu", "dense 10"]


def torch_lenet(net):
    """The reference LeNet-5 of ../shared/bench/torch_lenet.py, with our initial weights."""
    tp = {}
    for name, value in net.params.items():
        tp[name] = t(value.T if name.startswith("dense") and name.endswith(".W") else value)

    def forward(x):
        h = TF.max_pool2d(TF.relu(TF.conv2d(x, tp["conv1.W"], tp["conv1.b"], padding=2)), 2)
        h = TF.max_pool2d(TF.relu(TF.conv2d(h, tp["conv2.W"], tp["conv2.b"])), 2)
        h = TF.relu(TF.linear(h.flatten(1), tp["dense1.W"], tp["dense1.b"]))
        h = TF.relu(TF.linear(h, tp["dense2.W"], tp["dense2.b"]))
        return TF.linear(h, tp["dense3.W"], tp["dense3.b"])

    return tp, forward


def ours_as_torch_layout(name, value):
    return value.T if name.startswith("dense") and name.endswith(".W") else value


def test_whole_lenet5_forward_and_every_gradient(kernels):
    rng = np.random.default_rng(4)
    net = build_network(LENET5, rng=rng, dtype=np.float64, kernels=kernels)
    x = rng.standard_normal((5, 1, 28, 28))
    y = rng.integers(0, 10, 5)
    loss = SoftmaxCrossEntropy()
    value = loss.forward(net.forward(x), y)
    dx = net.backward(loss.backward(), input_grad=True)

    tp, forward = torch_lenet(net)
    tx = t(x)
    tl = TF.cross_entropy(forward(tx), torch.tensor(y))
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=RTOL)
    close(dx, tx.grad)
    for name in net.params:
        close(ours_as_torch_layout(name, net.grads[name]), tp[name].grad)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lenet5_parameters_after_sgd_steps_with_momentum_and_weight_decay(nesterov, kernels):
    rng = np.random.default_rng(5)
    net = build_network(LENET5, rng=rng, dtype=np.float64, kernels=kernels)
    tp, forward = torch_lenet(net)
    opt = SGD(net.params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    topt = torch.optim.SGD(list(tp.values()), lr=0.05, momentum=0.9, weight_decay=5e-4,
                           nesterov=nesterov)
    loss = SoftmaxCrossEntropy()
    for _ in range(5):
        x = rng.standard_normal((8, 1, 28, 28))
        y = rng.integers(0, 10, 8)
        loss.forward(net.forward(x), y)
        net.backward(loss.backward())
        opt.step(net.grads)
        topt.zero_grad()
        TF.cross_entropy(forward(t(x, grad=False)), torch.tensor(y)).backward()
        topt.step()
    for name in net.params:
        close(ours_as_torch_layout(name, net.params[name]), tp[name])


@pytest.mark.parametrize("layers", [
    LENET5,
    ["conv 6 5 pad=2", "tanh", "meanpool 2", "conv 16 3x5 stride=2 pad=1", "sigmoid",
     "maxpool 3 stride=2", "flatten", "dense 10"],
])
def test_each_layer_names_its_torch_equivalent(layers):
    """The PyTorch model benchmarks/bench.py compares against is built from the layers'
    torch_module; with our weights copied in, it computes our outputs."""
    rng = np.random.default_rng(6)
    net = build_network(layers, rng=rng, dtype=np.float64)
    model = torch.nn.Sequential(*(layer.torch_module(torch.nn) for _, layer in net.layers)).double()
    torch_params = dict(model.named_parameters())
    for index, (name, layer) in enumerate(net.layers):
        for key, torch_key in (("W", "weight"), ("b", "bias")):
            if key in layer.params:
                value = ours_as_torch_layout(f"{name}.{key}", layer.params[key])
                with torch.no_grad():
                    torch_params[f"{index}.{torch_key}"].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    assert sum(p.numel() for p in model.parameters()) == net.n_params
    x = rng.standard_normal((3, 1, 28, 28))
    close(net.forward(x, train=False), model(t(x, grad=False)))


def test_cosine_and_step_schedules_match_pytorchs_schedulers():
    w = torch.zeros(1, requires_grad=True)
    for kind, make in [("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 15)),
                       ("step", lambda o: torch.optim.lr_scheduler.StepLR(o, 4, gamma=0.3))]:
        topt = torch.optim.SGD([w], lr=0.05)
        sched = make(topt)
        ours = LRSchedule(0.05, kind, epochs=15, steps_per_epoch=7, step_epochs=4, gamma=0.3)
        for epoch in range(15):
            assert ours(epoch * 7 + 3) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12,
                                                        abs=1e-15)
            topt.step()
            sched.step()
    assert not math.isnan(ours(0))
