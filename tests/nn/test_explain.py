"""cnntrain.nn.explain (issue #30): one image's outputs, deltas and parameter gradients, layer
by layer in evaluation mode, equal PyTorch autograd (float32) and central finite differences
(float64), and leave the network as it was."""

import numpy as np
import pytest

from cnntrain.nn import functional
from cnntrain.nn.explain import explain
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import build_network
from cnntrain.nn.optim import SGD
from tests.support.checkpoints import roughen
from tests.support.gradcheck import numeric_gradient, relative_error
from tests.support.optional import import_or_unavailable

torch = import_or_unavailable("torch", "TORCH", "pip install torch==2.13.0")

# Every layer kind, batch norm after a convolution and after a dense layer, and a relu directly
# before a maxpool, which the fast path runs in the other order.
EVERY_KIND = ["conv 4 3 pad=1", "batchnorm", "relu", "maxpool 2", "conv 6 3", "tanh",
              "meanpool 2", "flatten", "dense 24", "batchnorm", "sigmoid", "dropout 0.3",
              "dense 10"]
SMALL = ["conv 2 3 stride=2", "batchnorm", "tanh", "maxpool 2", "flatten", "dense 8",
         "batchnorm", "dropout 0.5", "sigmoid", "dense 10"]


@pytest.fixture(params=["fast", "reference"])
def kernels(request):
    return request.param


def trained_looking(layers, dtype, kernels, seed=0):
    """A network whose batch norms have non-trivial scales, offsets and running statistics,
    so that the evaluation-mode equation is exercised away from the identity."""
    rng = np.random.default_rng(seed)
    net = build_network(layers, rng=rng, dtype=dtype, kernels=kernels,
                        seeds=np.random.SeedSequence(seed))
    roughen(net, rng)
    return net


def torch_layout(layer, key, value):
    return value.T if layer.kind == "dense" and key == "W" else value


def torch_twin(net):
    """The network rebuilt from its layers' torch_module, with the same weights and running
    statistics, in evaluation mode, in float32."""
    modules = []
    for _, layer in net.layers:
        module = layer.torch_module(torch.nn).float()
        for (key, value), torch_name in zip(layer.params.items(), ("weight", "bias")):
            with torch.no_grad():
                getattr(module, torch_name).copy_(
                    torch.from_numpy(np.ascontiguousarray(torch_layout(layer, key, value))))
        for key, value in layer.buffers.items():
            with torch.no_grad():
                getattr(module, key).copy_(torch.from_numpy(value))
        modules.append(module.eval())
    return modules


def torch_explained(modules, field, target):
    """Every module's output and its grad, the parameters' grads and the input's grad."""
    x = torch.tensor(field.reshape(1, 1, 28, 28), requires_grad=True)
    outputs, h = [], x
    for module in modules:
        h = module(h)
        h.retain_grad()
        outputs.append(h)
    loss = torch.nn.functional.cross_entropy(h, torch.tensor([target]))
    loss.backward()
    return loss, outputs, x.grad


def close(ours, theirs, rtol):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


def field_and_target(seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((28, 28)).astype(np.float32), int(rng.integers(0, 10))


def test_every_output_delta_and_gradient_equals_torch_autograd_in_float32(kernels):
    net = trained_looking(EVERY_KIND, np.float32, kernels)
    modules = torch_twin(net)
    field, target = field_and_target()
    result = explain(net, field, target)
    loss, outputs, input_grad = torch_explained(modules, field, target)

    rtol = 1e-4
    assert result["loss"] == pytest.approx(loss.item(), rel=rtol)
    close(result["probabilities"], torch.softmax(outputs[-1], 1)[0], rtol)
    close(result["input_delta"], input_grad[0, 0], rtol)
    assert [entry["name"] for entry in result["layers"]] == [name for name, _ in net.layers]
    for entry, (_, layer), module, output in zip(result["layers"], net.layers, modules, outputs):
        assert entry["kind"] == layer.kind
        close(entry["output"], output[0], rtol)
        close(entry["delta"], output.grad[0], rtol)
        torch_grads = [p.grad for p in module.parameters()]
        ours = [entry[key] for key in ("weight_grad", "bias_grad") if key in entry]
        assert len(ours) == len(torch_grads)
        for (key, _), grad, torch_grad in zip(layer.params.items(), ours, torch_grads):
            close(torch_layout(layer, key, grad), torch_grad, rtol)


def test_max_pooling_routes_point_at_each_windows_maximum(kernels):
    net = trained_looking(EVERY_KIND, np.float32, kernels)
    field, target = field_and_target()
    result = explain(net, field, target)
    index = [name for name, _ in net.layers].index("maxpool1")
    pooled, routes = result["layers"][index]["output"], result["layers"][index]["routes"]
    pooled_input = result["layers"][index - 1]["output"]
    C, out_h, out_w = pooled.shape
    assert routes.shape == (C, out_h, out_w, 2)
    channels = np.arange(C)[:, None, None]
    np.testing.assert_array_equal(pooled_input[channels, routes[..., 0], routes[..., 1]], pooled)
    rows = np.arange(out_h)[:, None] * 2
    assert np.all((routes[..., 0] >= rows) & (routes[..., 0] < rows + 2))


def test_input_delta_and_weight_gradients_equal_central_differences_in_float64(kernels):
    net = trained_looking(SMALL, np.float64, kernels, seed=3)
    rng = np.random.default_rng(4)
    field, target = rng.standard_normal((28, 28)), 7
    result = explain(net, field, target)
    x = field.reshape(1, 1, 28, 28).copy()

    def loss():
        logits = net.forward(x, train=False)
        return functional.cross_entropy(functional.log_softmax(logits), np.array([target]))

    assert result["loss"] == pytest.approx(loss(), rel=1e-12)
    numeric = numeric_gradient(loss, x)
    assert relative_error(result["input_delta"], numeric[0, 0]) < 1e-7
    by_name = {entry["name"]: entry for entry in result["layers"]}
    for name, key in [("conv1.W", "weight_grad"), ("conv1.b", "bias_grad"),
                      ("batchnorm1.gamma", "weight_grad"), ("batchnorm2.beta", "bias_grad"),
                      ("dense1.W", "weight_grad"), ("dense2.b", "bias_grad")]:
        param = net.params[name]
        indices = rng.choice(param.size, size=min(param.size, 6), replace=False)
        numeric = numeric_gradient(loss, param, indices=indices)
        analytic = by_name[name.split(".")[0]][key].reshape(-1)[indices]
        assert relative_error(analytic, numeric.reshape(-1)[indices]) < 1e-7, name


def test_explain_leaves_weights_buffers_gradients_and_generators_untouched(kernels):
    net = trained_looking(EVERY_KIND, np.float32, kernels)
    twin = trained_looking(EVERY_KIND, np.float32, kernels)
    for grad in net.grads.values():
        grad[...] = np.random.default_rng(5).standard_normal(grad.shape)
    held = {"params": net.params, "buffers": net.buffers, "grads": net.grads}
    before = {(what, name): value.copy() for what, arrays in held.items()
              for name, value in arrays.items()}
    states = net.random_state()
    field, target = field_and_target()
    explain(net, field, target)
    explain(net, field, (target + 1) % 10)
    for what, arrays in held.items():
        for name, value in arrays.items():
            np.testing.assert_array_equal(value, before[what, name], err_msg=f"{what} {name}")
    assert net.random_state() == states

    # And training goes on exactly as on a twin that was never explained.
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)
    for network in (net, twin):
        loss = SoftmaxCrossEntropy()
        loss.forward(network.forward(x), y)
        network.backward(loss.backward())
        SGD(network.params, lr=0.1, momentum=0.9).step(network.grads)
    for name in net.params:
        np.testing.assert_array_equal(net.params[name], twin.params[name], err_msg=name)
    for name in net.buffers:
        np.testing.assert_array_equal(net.buffers[name], twin.buffers[name], err_msg=name)


def test_dropout_and_batch_norm_act_as_in_evaluation():
    """Dropout passes output and delta through unchanged; batch norm (after dense1) scales the
    delta by gamma / sqrt(running_var + eps), which the training-mode equation would not."""
    net = trained_looking(SMALL, np.float64, "reference", seed=8)
    result = explain(net, np.random.default_rng(9).standard_normal((28, 28)), 2)
    entries = {entry["name"]: entry for entry in result["layers"]}
    np.testing.assert_array_equal(entries["dropout1"]["output"], entries["batchnorm2"]["output"])
    np.testing.assert_array_equal(entries["dropout1"]["delta"], entries["batchnorm2"]["delta"])
    layer = dict(net.layers)["batchnorm2"]
    scale = layer.params["gamma"] / np.sqrt(layer.buffers["running_var"] + layer.eps)
    np.testing.assert_allclose(entries["dense1"]["delta"], entries["batchnorm2"]["delta"] * scale,
                               rtol=1e-12)


@pytest.mark.parametrize("field_shape", [(28, 28), (1, 28, 28), (1, 1, 28, 28)])
def test_the_field_may_come_with_or_without_batch_and_channel_axes(field_shape):
    net = trained_looking(SMALL, np.float32, "fast")
    field, target = field_and_target()
    result = explain(net, field.reshape(field_shape), target)
    reference = explain(net, field, target)
    assert result["input_delta"].shape == (28, 28)
    np.testing.assert_array_equal(result["input_delta"], reference["input_delta"])


@pytest.mark.parametrize("field,target,message", [
    (np.zeros((28, 27)), 0, "shape"),
    (np.zeros((2, 1, 28, 28)), 0, "shape"),
    (np.full((28, 28), np.nan), 0, "finite"),
    (np.zeros((28, 28)), 10, "0 to 9"),
    (np.zeros((28, 28)), -1, "0 to 9"),
    (np.zeros((28, 28)), 2.0, "0 to 9"),
    (np.zeros((28, 28)), True, "0 to 9"),
])
def test_bad_field_or_target_is_refused(field, target, message):
    net = trained_looking(SMALL, np.float32, "fast")
    with pytest.raises(ValueError, match=message):
        explain(net, field, target)
