"""The path from a layer to its equation can be followed by reading (issue #28).

fast.py names every kernel a layer may call, its own or the reference one bound by name with
why; no kernel is looked up by a string; `cnntrain info` shows the order in which the layers
really run; and a training step is one short function: forward, loss, backward, update.
"""

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from cnntrain.errors import DivergedError
from cnntrain.nn import fast, functional
from cnntrain.nn import layers as L
from cnntrain.nn.activations import Activation, ReLU
from cnntrain.nn.losses import SoftmaxCrossEntropy
from cnntrain.nn.model import build_network
from cnntrain.nn.optim import SGD
from cnntrain.runs import train as train_module
from cnntrain.runs.train import train_step
from tests.support.clitools import invoke, small_config

PACKAGE = Path(L.__file__).resolve().parent


def reference_kernel_names():
    return {name for name, f in vars(functional).items()
            if inspect.isfunction(f) and f.__module__ == functional.__name__
            and not name.startswith("_")}


def fast_kernel_names():
    return {name for name, f in vars(fast).items()
            if inspect.isfunction(f) and not name.startswith("_")}


def fast_entries_missing():
    """What fast.py lacks or has in excess against functional.py, as the lines to write."""
    missing = sorted(reference_kernel_names() - fast_kernel_names())
    extra = sorted(fast_kernel_names() - reference_kernel_names())
    return ([f"cnntrain/nn/fast.py needs a faster {name} or the line "
             f"'{name} = functional.{name}  # why no faster one exists'" for name in missing]
            + [f"fast.{name} has no reference kernel in cnntrain/nn/functional.py"
               for name in extra])


def test_fast_names_every_reference_kernel():
    problems = fast_entries_missing()
    assert not problems, "\n".join(problems)


def test_a_new_reference_kernel_without_a_fast_entry_is_named_with_the_fix(monkeypatch):
    def swish(x):
        return x / (1 + np.exp(-x))

    swish.__module__ = functional.__name__
    monkeypatch.setattr(functional, "swish", swish, raising=False)
    assert fast_entries_missing() == [("cnntrain/nn/fast.py needs a faster swish or the line "
                                       "'swish = functional.swish  # why no faster one exists'")]


def test_fast_has_no_module_getattr():
    assert "__getattr__" not in vars(fast)
    with pytest.raises(AttributeError):
        fast.swish  # noqa: B018


def test_each_reference_kernel_fast_runs_is_bound_by_name_with_why():
    bound = {name for name in fast_kernel_names()
             if getattr(fast, name) is getattr(functional, name)}
    source = Path(fast.__file__).read_text()
    lines = set(re.findall(r"^(\w+) = functional\.(\w+)  # \S.*$", source, re.MULTILINE))
    assert {(name, name) for name in bound} <= lines
    # Every other kernel is fast.py's own.
    own = fast_kernel_names() - bound
    assert all(getattr(fast, name).__module__ == fast.__name__ for name in own)
    assert {"conv_forward", "maxpool2d", "dense_backward", "batchnorm"} <= own


@pytest.mark.parametrize("module", ["layers.py", "conv.py", "pooling.py", "dense.py",
                                    "activations.py", "flatten.py", "norm.py", "model.py",
                                    "losses.py", "fast.py"])
def test_no_lookup_by_string(module):
    tree = ast.parse((PACKAGE / module).read_text())
    calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "getattr"]
    assert not calls, f"cnntrain/{module} looks a name up by string at lines {calls}"


ACTIVATIONS = [cls for cls in L.REGISTRY.values() if issubclass(cls, Activation)]


@pytest.mark.parametrize("cls", ACTIVATIONS, ids=lambda cls: cls.kind)
def test_each_activation_names_its_kernels_on_both_paths(cls):
    forward, backward = cls.reference_kernels
    assert (forward.__module__, backward.__module__) == (functional.__name__,) * 2
    assert backward.__name__ == f"{forward.__name__}_backward"
    assert cls.fast_kernels == (getattr(fast, forward.__name__), getattr(fast, backward.__name__))
    for kernels, (f, f_backward) in (("fast", cls.fast_kernels),
                                     ("reference", cls.reference_kernels)):
        layer = cls(kernels=kernels)
        assert (layer._forward, layer._backward) == (f, f_backward)


def test_an_activation_refuses_a_kernels_module_it_has_no_kernels_for():
    with pytest.raises(ValueError, match="ReLU runs on cnntrain.nn.fast or cnntrain.nn.functional"):
        ReLU(kernels=np)


# --- cnntrain info shows the order the layers run in ----------------------------------------

def info(tmp_path, layers, *overrides):
    config = tmp_path / "net.ini"
    config.write_text(small_config(layers))
    result = invoke("info", "--config", config, *[a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    return result.output


def test_info_shows_the_fast_paths_order_and_why(tmp_path):
    output = info(tmp_path, ["conv 4 5 pad=2", "relu", "maxpool 2", "conv 8 3", "relu",
                             "maxpool 3", "flatten", "dense 10"])
    lines = output.splitlines()
    assert lines[-2] == ("runs as: conv1 > maxpool1 > relu1 > conv2 > maxpool2 > relu2 > "
                         "flatten1 > dense1")
    assert lines[-1] == ("  why: a relu directly before a maxpool runs after it on the fast "
                         "kernels: max(relu(x)) == relu(max(x)), and pooling first makes the "
                         "ReLU 4x or 9x cheaper")


def test_info_is_silent_about_order_when_the_layers_run_as_listed(tmp_path):
    pooled = ["conv 4 5 pad=2", "relu", "maxpool 2", "flatten", "dense 10"]
    assert "runs as" not in info(tmp_path, pooled, "train.kernels=reference")
    assert "runs as" not in info(tmp_path, ["conv 4 5 pad=2", "tanh", "maxpool 2", "flatten",
                                            "dense 10"])


# --- one training step: forward, loss, backward, update -------------------------------------

def step_parts(seed=0):
    net = build_network("conv 2 3 / relu / maxpool 2 / flatten / dense 10",
                        rng=np.random.default_rng(seed))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    return net, SGD(net.params, 0.1, momentum=0.9), SoftmaxCrossEntropy(0.1), x, y


def test_train_step_is_forward_loss_backward_update():
    net, opt, loss_fn, x, y = step_parts()
    loss, logits = train_step(net, loss_fn, opt, x, y, lr=0.05)

    twin, twin_opt, twin_loss, _, _ = step_parts()
    twin_opt.lr = 0.05
    twin_logits = twin.forward(x)
    assert loss == twin_loss.forward(twin_logits, y)
    twin.backward(twin_loss.backward())
    twin_opt.step(twin.grads)
    np.testing.assert_array_equal(logits, twin_logits)
    for name, value in net.params.items():
        np.testing.assert_array_equal(value, twin.params[name], err_msg=name)
    assert opt.lr == 0.05


def test_a_step_whose_loss_is_not_finite_changes_no_weight():
    net, opt, loss_fn, x, y = step_parts()
    net.params["dense1.W"][0, 0] = np.inf
    before = {name: value.copy() for name, value in net.params.items()}
    with np.errstate(all="ignore"), pytest.raises(DivergedError, match="the loss is nan"):
        train_step(net, loss_fn, opt, x, y, lr=0.05)
    for name, value in net.params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_the_trainer_takes_every_step_through_train_step(tmp_path, monkeypatch, synthetic_mnist,
                                                         synthetic_mnist_dir):
    from tests.support.clitools import use_synthetic_mnist
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    steps = []

    def counted(*args, **kwargs):
        steps.append(args[5] if len(args) > 5 else kwargs["lr"])
        return train_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", counted)
    config = tmp_path / "small.ini"
    config.write_text(small_config(train={"epochs": 1}))
    result = invoke("fit", "--config", config, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert len(steps) == 16  # small_config: 500 training images, 16 steps of 32
