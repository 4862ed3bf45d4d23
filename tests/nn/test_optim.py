"""SGD's update rule, weight decay as an L2 term of the objective, and the schedules."""

import math

import numpy as np
import pytest

from cnntrain.nn.optim import SGD, LRSchedule
from tests.support.gradcheck import numeric_gradient, relative_error


def params_and_grads():
    rng = np.random.default_rng(0)
    params = {"fc.W": rng.standard_normal((3, 2)), "fc.b": rng.standard_normal(2)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(3)]
    return params, grads


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("decay_biases", [True, False])
def test_sgd_follows_pytorchs_rule_written_out(nesterov, decay_biases):
    params, grads = params_and_grads()
    lr, mu, wd = 0.1, 0.9, 0.01
    expected = {k: v.copy() for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    decayed = ["fc.W", "fc.b"] if decay_biases else ["fc.W"]
    opt = SGD(params, lr, momentum=mu, weight_decay=wd, nesterov=nesterov, decayed=decayed)
    for g in grads:
        opt.step(g)
        for k in expected:
            decay = wd if (decay_biases or k == "fc.W") else 0.0
            d = g[k] + decay * expected[k]
            velocity[k] = mu * velocity[k] + d
            expected[k] = expected[k] - lr * (d + mu * velocity[k] if nesterov else velocity[k])
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-14)
        np.testing.assert_allclose(opt.velocity[k], velocity[k], rtol=1e-14)


def test_plain_sgd_and_untouched_grads():
    params, grads = params_and_grads()
    start = params["fc.W"].copy()
    g_before = grads[0]["fc.W"].copy()
    SGD(params, 0.5).step(grads[0])
    np.testing.assert_allclose(params["fc.W"], start - 0.5 * g_before)
    np.testing.assert_array_equal(grads[0]["fc.W"], g_before)


def test_weight_decay_is_the_gradient_of_the_penalty():
    params, _ = params_and_grads()
    opt = SGD(params, 0.1, weight_decay=0.3, decayed=["fc.W"])
    assert opt.penalty() == pytest.approx(0.15 * np.sum(params["fc.W"] ** 2))
    # With zero data gradient, one step moves W by exactly lr * d(penalty)/dW.
    numeric = numeric_gradient(opt.penalty, params["fc.W"])
    before = params["fc.W"].copy()
    opt.step({k: np.zeros_like(v) for k, v in params.items()})
    assert relative_error((before - params["fc.W"]) / 0.1, numeric) < 1e-8
    assert relative_error(0.3 * before, numeric) < 1e-8


def test_optimizer_state_round_trip_by_name():
    params, grads = params_and_grads()
    opt = SGD(params, 0.1, momentum=0.9)
    opt.step(grads[0])
    state = opt.state_dict()
    assert set(state) == {"fc.W.v", "fc.b.v"}
    fresh = SGD({k: v.copy() for k, v in params.items()}, 0.1, momentum=0.9)
    fresh.load_state_dict(state)
    opt.step(grads[1])
    fresh.step(grads[1])
    np.testing.assert_array_equal(fresh.params["fc.W"], params["fc.W"])
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"fc.W.v": state["fc.W.v"]})


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(lr=0.1, momentum=1.0), dict(lr=0.1,
                                                                                 weight_decay=-1),
                                    dict(lr=0.1, nesterov=True)])
def test_sgd_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SGD({"w": np.zeros(2)}, **kwargs)


def test_schedules():
    const = LRSchedule(0.1, "constant", epochs=3, steps_per_epoch=10)
    assert [const(s) for s in (0, 15, 29)] == [0.1, 0.1, 0.1]
    step = LRSchedule(1.0, "step", epochs=10, steps_per_epoch=4, step_epochs=3, gamma=0.5)
    assert [step(s) for s in (0, 11, 12, 23, 24, 39)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    cos = LRSchedule(0.05, "cosine", epochs=15, steps_per_epoch=100)
    for epoch in range(15):
        expected = 0.05 * (1 + math.cos(math.pi * epoch / 15)) / 2
        assert cos(epoch * 100) == pytest.approx(expected) == cos(epoch * 100 + 99)


def test_linear_warmup_then_schedule():
    sched = LRSchedule(0.2, "cosine", epochs=10, steps_per_epoch=10, warmup_epochs=0.5)
    assert sched.warmup_steps == 5
    assert [sched(s) for s in range(5)] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2])
    assert sched(5) == 0.2 and sched(10) == pytest.approx(0.1 * (1 + math.cos(math.pi / 10)))


def test_only_what_the_layers_declare_is_decayed():
    """Biases are decayed unless decay_biases is off; a layer's buffers never reach SGD, and a
    parameter declared decay=None is left alone even by a large weight decay."""
    from cnntrain.nn import layers as L
    from cnntrain.nn.dense import Dense
    from cnntrain.nn.model import Network

    class Scaled(L.Layer):  # a parameter that weight decay must not touch
        def __init__(self):
            super().__init__()
            self.add_param("scale", np.ones(3), decay=None)
            self.add_buffer("count", np.zeros(1))

    rng = np.random.default_rng(0)
    net = Network([("dense", Dense(2, 3, rng=rng, dtype=np.float64)), ("s", Scaled())],
                  input_shape=(2,))
    assert net.decayed() == ["dense.W", "dense.b"]
    assert net.decayed(decay_biases=False) == ["dense.W"]
    assert set(net.params) == {"dense.W", "dense.b", "s.scale"} and list(net.buffers) == ["s.count"]
    opt = SGD(net.params, 0.1, weight_decay=0.5, decayed=net.decayed(decay_biases=False))
    before = {k: v.copy() for k, v in net.params.items()}
    opt.step({k: np.zeros_like(v) for k, v in net.params.items()})
    np.testing.assert_allclose(net.params["dense.W"], before["dense.W"] * (1 - 0.1 * 0.5))
    np.testing.assert_array_equal(net.params["dense.b"], before["dense.b"])
    np.testing.assert_array_equal(net.params["s.scale"], before["s.scale"])
    with pytest.raises(ValueError, match="unknown parameters"):
        SGD(net.params, 0.1, decayed=["s.count"])
