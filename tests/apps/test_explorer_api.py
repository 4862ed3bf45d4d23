"""The backprop explorer's API (issue #30) against a real DigitServer on a loopback port:
/api/explain's deltas and gradients equal PyTorch autograd on the network rebuilt from the
checkpoint (float32, every layer kind, both kernel paths) and central differences (float64);
/api/step takes the SGD step torch takes, raises the target's probability and never touches
the checkpoint or the served network; /api/reset starts again; bad requests get 4xx JSON; and
every shipped config's answer stays under MAX_EXPLAIN_BYTES."""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cnntrain.apps import explorer
from cnntrain.apps.inference import Predictor
from cnntrain.data.preprocess import to_mnist_field
from cnntrain.nn import functional
from tests.support.checkpoints import make_network, roughen, save_network, write_checkpoint
from tests.support.gradcheck import numeric_gradient, relative_error
from tests.support.optional import import_or_unavailable
from tests.support.servetools import RunningServer

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").glob("*.ini"))
# Every layer kind; batch norm after a convolution and after a dense layer.
EVERY_KIND = ["conv 4 3 pad=1", "batchnorm", "relu", "maxpool 2", "conv 6 3", "tanh",
              "meanpool 2", "flatten", "dense 24", "batchnorm", "sigmoid", "dropout 0.3",
              "dense 10"]
SMALL = ["conv 2 3 stride=2", "batchnorm", "tanh", "maxpool 2", "flatten", "dense 8",
         "batchnorm", "dropout 0.5", "sigmoid", "dense 10"]
# SMALL with mean pooling: a drawing's flat background ties max pooling's windows, where the
# loss has kinks that central differences cannot probe (test_explain covers max pooling's
# gradient on random fields, and the torch tests here on drawings).
SMOOTH = [line.replace("maxpool", "meanpool") for line in SMALL]
RTOL = 1e-4   # float32 (tests/nn/test_explain.py's tolerance); the 5 digits sent round at 5e-5


def drawn_digit(seed=0):
    """A 60x50 dark-on-white picture with two thick strokes, as a page would send it."""
    rng = np.random.default_rng(seed)
    page = np.full((60, 50), 255, dtype=np.int64)
    top = int(rng.integers(5, 12))
    page[top:top + 6, 8:42] = 0                               # a bar
    for row in range(top, 55):                                # a slanted stem
        column = 40 - (row - top) * 24 // 50
        page[row, column - 3:column + 3] = int(rng.integers(0, 60))
    return page


def image_body(seed=0, **extra):
    page = drawn_digit(seed)
    return {"width": page.shape[1], "height": page.shape[0],
            "pixels": page.ravel().tolist(), **extra}


def served_input(predictor, seed=0):
    """The field and the network input the server makes of image_body(seed)."""
    field = to_mnist_field((drawn_digit(seed) / 255.0).astype(np.float32))
    return field, predictor.normalise(field[None])


def post(server, path, body, raw=None):
    """POST -> (status, parsed JSON, body bytes)."""
    import requests

    data = raw if raw is not None else json.dumps(body).encode()
    response = requests.post(server.url + path.lstrip("/"), data=data, timeout=120,
                             headers={"Content-Type": "application/json"})
    return response.status_code, response.json(), response.content


def saved(path, layers, seed=0, **train):
    network, cfg = make_network(layers, seed=seed, train=train)
    roughen(network, np.random.default_rng(seed))
    save_network(path, network, cfg)
    return path


@pytest.fixture(scope="module", params=["fast", "reference"])
def every_kind(request, tmp_path_factory):
    path = saved(tmp_path_factory.mktemp("every") / "every.npz", EVERY_KIND,
                 kernels=request.param)
    with RunningServer(path) as server:
        yield server, path


def torch_modules(path):
    torch = import_or_unavailable("torch", "TORCH", "pip install torch==2.13.0")
    from tests.nn.test_explain import torch_twin

    return torch, torch_twin(Predictor.from_checkpoint(path).network)


def as_array(value):
    return np.array(value, dtype=np.float64)


def close(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max())


# ---- /api/explain


def test_explain_equals_torch_autograd_on_the_checkpoints_network(every_kind):
    server, path = every_kind
    torch, modules = torch_modules(path)
    from tests.nn.test_explain import torch_explained, torch_layout

    field, x = served_input(server.predictor)
    target = 3
    status, answer, _ = post(server, "/api/explain", image_body(target=target))
    assert status == 200
    loss, outputs, input_grad = torch_explained(modules, x[0, 0], target)

    assert answer["loss"] == pytest.approx(loss.item(), rel=RTOL)
    close(as_array(answer["probabilities"]), torch.softmax(outputs[-1], 1)[0])
    close(as_array(answer["input_delta"]), input_grad[0, 0])
    np.testing.assert_allclose(as_array(answer["field"]), field, rtol=1e-4, atol=1e-6)
    assert answer["prediction"] == int(np.argmax(answer["probabilities"]))
    assert answer["target"] == target and answer["member"] == 0
    assert "running statistics" in answer["eval_mode"] and "identity" in answer["eval_mode"]
    network = server.predictor.network
    assert [entry["name"] for entry in answer["layers"]] == [name for name, _ in network.layers]
    kinds = {entry["kind"] for entry in answer["layers"]}
    assert kinds >= {"conv", "batchnorm", "relu", "maxpool", "tanh", "meanpool", "flatten",
                     "dense", "sigmoid", "dropout"}
    for entry, (_, layer), module, output in zip(answer["layers"], network.layers, modules,
                                                 outputs):
        close(as_array(entry["output"]), output[0])
        close(as_array(entry["delta"]), output.grad[0])
        torch_grads = [p.grad for p in module.parameters()]
        ours = [as_array(entry[key]) for key in ("weight_grad", "bias_grad") if key in entry]
        assert len(ours) == len(torch_grads), entry["name"]
        for (key, param), grad, torch_grad in zip(layer.params.items(), ours, torch_grads):
            assert grad.shape == param.shape
            close(torch_layout(layer, key, grad), torch_grad)


def test_maxpool_routes_point_at_each_windows_maximum(every_kind):
    server, _ = every_kind
    _, answer, _ = post(server, "/api/explain", image_body(seed=1, target=5))
    names = [entry["name"] for entry in answer["layers"]]
    index = names.index("maxpool1")
    pooled = as_array(answer["layers"][index]["output"])
    routes = np.array(answer["layers"][index]["routes"])
    below = as_array(answer["layers"][index - 1]["output"])
    assert routes.shape == pooled.shape + (2,)
    channels = np.arange(pooled.shape[0])[:, None, None]
    np.testing.assert_array_equal(below[channels, routes[..., 0], routes[..., 1]], pooled)


def test_explain_equals_central_differences_in_float64(tmp_path):
    path = saved(tmp_path / "small64.npz", SMOOTH, seed=3, dtype="float64")
    target = 7
    with RunningServer(path) as server:
        _, answer, _ = post(server, "/api/explain", image_body(seed=2, target=target))
    assert answer["digits"] == 12
    net = Predictor.from_checkpoint(path).network
    _, x = served_input(Predictor.from_checkpoint(path), seed=2)
    x = np.ascontiguousarray(x)

    def loss():
        logits = net.forward(x, train=False)
        return functional.cross_entropy(functional.log_softmax(logits), np.array([target]))

    assert answer["loss"] == pytest.approx(loss(), rel=1e-10)
    numeric, kinks = numeric_gradient(loss, x, kinks=1e-3)
    assert kinks == 0
    assert relative_error(as_array(answer["input_delta"]), numeric[0, 0]) < 1e-7
    by_name = {entry["name"]: entry for entry in answer["layers"]}
    rng = np.random.default_rng(4)
    for name, key in [("conv1.W", "weight_grad"), ("conv1.b", "bias_grad"),
                      ("batchnorm1.gamma", "weight_grad"), ("batchnorm2.beta", "bias_grad"),
                      ("dense1.W", "weight_grad"), ("dense2.b", "bias_grad")]:
        param = net.params[name]
        indices = rng.choice(param.size, size=min(param.size, 6), replace=False)
        numeric = numeric_gradient(loss, param, indices=indices)
        analytic = as_array(by_name[name.split(".")[0]][key]).reshape(-1)[indices]
        assert relative_error(analytic, numeric.reshape(-1)[indices]) < 1e-7, name


def test_explain_answers_concurrent_requests_as_it_answers_one(every_kind):
    server, _ = every_kind
    bodies = [image_body(seed=k % 3, target=k % 10) for k in range(12)]
    alone = [post(server, "/api/explain", body)[2] for body in bodies[:3]]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda body: post(server, "/api/explain", body)[2], bodies))
    for k, body in enumerate(together):
        if k < 3:
            assert body == alone[k]
        assert json.loads(body)["target"] == k % 10


# ---- /api/step and /api/reset


def test_a_step_is_torchs_sgd_step_and_never_touches_the_checkpoint_or_served_network(
        every_kind):
    server, path = every_kind
    torch, modules = torch_modules(path)
    from tests.nn.test_explain import torch_explained

    checkpoint_bytes = hashlib.sha256(path.read_bytes()).hexdigest()
    _, predicted, _ = post(server, "/api/predict", image_body())
    _, x = served_input(server.predictor)
    before = as_array(post(server, "/api/explain", image_body(target=0))[1]["probabilities"])
    target = int(np.argmin(before))
    lr = 0.05
    status, step, _ = post(server, "/api/step", image_body(target=target, lr=lr))
    assert status == 200
    assert step["session"]["steps"] == 1 and step["session"]["dropped"] is False
    assert step["after"][target] > step["before"][target]
    np.testing.assert_allclose(step["before"], before, rtol=RTOL)

    _, _, _ = torch_explained(modules, x[0, 0], target)
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param -= lr * param.grad
        after = torch.softmax(torch.nn.Sequential(*modules)(torch.tensor(x)), 1)[0]
    close(as_array(step["after"]), after)

    # The session's copy is what explain shows with the session, and it goes on from there.
    session = step["session"]["id"]
    _, seen, _ = post(server, "/api/explain", image_body(target=target, session=session))
    np.testing.assert_allclose(seen["probabilities"], step["after"], rtol=RTOL)
    assert seen["session"] == {"id": session, "steps": 1, "dropped": False}
    _, again, _ = post(server, "/api/step", image_body(target=target, lr=lr, session=session))
    assert again["session"]["id"] == session and again["session"]["steps"] == 2
    np.testing.assert_allclose(again["before"], step["after"], rtol=RTOL)
    assert again["after"][target] > again["before"][target]

    # Neither the checkpoint file nor the served network moved.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint_bytes
    assert post(server, "/api/predict", image_body())[1] == predicted
    _, plain, _ = post(server, "/api/explain", image_body(target=0))
    np.testing.assert_array_equal(plain["probabilities"], before)
    assert plain["session"] == {"id": None, "steps": 0, "dropped": False}

    # Reset drops the copy: the session is gone and a new step starts from the checkpoint.
    _, reset, _ = post(server, "/api/reset", {"session": session})
    assert reset["session"] == {"id": None, "steps": 0, "dropped": False}
    _, gone, _ = post(server, "/api/explain", image_body(target=target, session=session))
    assert gone["session"]["dropped"] is True
    np.testing.assert_array_equal(gone["probabilities"], plain["probabilities"])
    _, fresh, _ = post(server, "/api/step", image_body(target=target, lr=lr))
    np.testing.assert_allclose(fresh["before"], before, rtol=RTOL)
    assert fresh["session"]["steps"] == 1 and fresh["session"]["id"] != session
    _, twice, _ = post(server, "/api/reset", {"session": session})
    assert twice["session"]["dropped"] is True


def test_a_dropped_session_is_said_so_and_a_step_starts_a_fresh_copy(tmp_path):
    path = saved(tmp_path / "small.npz", SMALL)
    with RunningServer(path) as server:
        server.server.explorer.sessions = explorer.SessionStore(max_sessions=1)
        first = post(server, "/api/step", image_body(target=1, lr=0.5))[1]["session"]
        second = post(server, "/api/step", image_body(target=1, lr=0.5))[1]["session"]
        assert first["id"] != second["id"] and len(server.server.explorer.sessions) == 1
        _, answer, _ = post(server, "/api/step", image_body(target=1, lr=0.5,
                                                            session=first["id"]))
        assert answer["session"]["dropped"] is True and answer["session"]["steps"] == 1
        assert answer["session"]["id"] not in (first["id"], second["id"])
        _, explained, _ = post(server, "/api/explain", image_body(target=1,
                                                                  session=second["id"]))
        assert explained["session"] == {"id": None, "steps": 0, "dropped": True}


# ---- bad requests


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    path = saved(tmp_path_factory.mktemp("small") / "small.npz", SMALL)
    with RunningServer(path, max_body_bytes=200_000) as server:
        yield server


@pytest.mark.parametrize("path,extra,status,key", [
    ("/api/explain", {}, 400, "'target'"),
    ("/api/explain", {"target": None}, 400, "'target'"),
    ("/api/explain", {"target": 10}, 400, "'target'"),
    ("/api/explain", {"target": -1}, 400, "'target'"),
    ("/api/explain", {"target": True}, 400, "'target'"),
    ("/api/explain", {"target": 2.0}, 400, "'target'"),
    ("/api/explain", {"target": "2"}, 400, "'target'"),
    ("/api/explain", {"target": 2, "member": 1}, 400, "'member'"),
    ("/api/explain", {"target": 2, "member": -1}, 400, "'member'"),
    ("/api/explain", {"target": 2, "member": False}, 400, "'member'"),
    ("/api/explain", {"target": 2, "session": 5}, 400, "'session'"),
    ("/api/explain", {"target": 2, "session": "../x"}, 400, "'session'"),
    ("/api/explain", {"target": 2, "lr": 0.1}, 400, "'lr'"),
    ("/api/explain", {"target": 2, "colour": 1}, 400, "'colour'"),
    ("/api/explain", {"target": 2, "weight_grads": 0}, 400, "'weight_grads'"),
    ("/api/step", {"target": 2, "lr": 0.1, "weight_grads": False}, 400, "'weight_grads'"),
    ("/api/step", {"target": 2}, 400, "'lr'"),
    ("/api/step", {"target": 2, "lr": 0}, 400, "'lr'"),
    ("/api/step", {"target": 2, "lr": -0.1}, 400, "'lr'"),
    ("/api/step", {"target": 2, "lr": 10.5}, 400, "'lr'"),
    ("/api/step", {"target": 2, "lr": True}, 400, "'lr'"),
    ("/api/step", {"target": 2, "lr": "0.1"}, 400, "'lr'"),
    ("/api/step", {"lr": 0.1}, 400, "'target'"),
    ("/api/step", {"target": 12, "lr": 0.1}, 400, "'target'"),
    ("/api/step", {"target": 2, "lr": 0.1, "member": 3}, 400, "'member'"),
])
def test_bad_fields_get_a_400_naming_the_key(small_server, path, extra, status, key):
    code, answer, _ = post(small_server, path, image_body(**extra))
    assert code == status
    assert key in answer["error"] and "\n" not in answer["error"]


@pytest.mark.parametrize("path,raw,status,words", [
    ("/api/explain", b"{not json", 400, "not valid JSON"),
    ("/api/step", b"[1, 2]", 400, "JSON object"),
    ("/api/step", b'{"target": 1, "lr": 1e999, "width": 1, "height": 1, "pixels": [0]}', 400,
     "'lr'"),
    ("/api/explain", b'{"target": 1, "width": 4000, "height": 4000, "pixels": []}', 413,
     "limit"),
    ("/api/explain", b'{"target": 1, "width": 28, "height": 28, "pixels": [' + b"255," * 783
     + b"255]}", 422, "ink"),
    ("/api/explain", b'{"target": 1}', 400, "width"),
    ("/api/reset", b"{}", 400, "'session'"),
    ("/api/reset", b'{"session": 3}', 400, "'session'"),
    ("/api/reset", b'{"session": "abc", "target": 1}', 400, "'target'"),
    ("/api/reset", b'{"session": "abc", "png": ""}', 400, "'png'"),
    ("/api/step", b" " * 300_000, 413, "limit"),
])
def test_bad_bodies_get_4xx_json(small_server, path, raw, status, words):
    code, answer, _ = post(small_server, path, None, raw=raw)
    assert code == status
    assert words.lower() in answer["error"].lower()


def test_explorer_routes_answer_get_with_405(small_server):
    import requests

    for path in explorer.ROUTES:
        response = requests.get(small_server.url + path.lstrip("/"), timeout=30)
        assert response.status_code == 405 and "POST" in response.json()["error"]


# ---- size


@pytest.mark.parametrize("config", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_every_shipped_configs_answer_stays_under_the_stated_bound(config, tmp_path):
    network, _ = write_checkpoint(tmp_path / "model.npz", config_text=config.read_text())
    with RunningServer(tmp_path / "model.npz") as server:
        status, answer, body = post(server, "/api/explain", image_body(target=4))
        _, lean, lean_body = post(server, "/api/explain",
                                  image_body(target=4, weight_grads=False))
    assert status == 200
    assert len(body) <= explorer.explain_bound(network) <= explorer.MAX_EXPLAIN_BYTES
    for entry, (_, layer) in zip(answer["layers"], network.layers):
        if layer.params:
            assert as_array(entry["weight_grad"]).shape == next(iter(layer.params.values())).shape
    # Without the parameter gradients the rest of the answer is the same.
    assert len(lean_body) < len(body)
    for entry, full in zip(lean["layers"], answer["layers"]):
        assert "weight_grad" not in entry and "bias_grad" not in entry
        assert entry == {key: value for key, value in full.items() if "grad" not in key}


# ---- the answer's numbers


def test_numbers_carry_the_stated_significant_digits_and_arrays_their_shape():
    body = explorer.encode({"digits": 5, "x": np.array([[1.23456789, -0.000123456789]],
                                                      dtype=np.float32),
                            "routes": np.array([[[3, 4]]]), "loss": np.float64(2.718281828),
                            "bad": np.array([np.inf, np.nan]), "empty": np.zeros((0,))})
    assert body == (b'{"digits":5,"x":[[1.2346,-0.00012346]],"routes":[[[3,4]]],'
                    b'"loss":2.7183,"bad":[null,null],"empty":[]}')
    wide = explorer.encode({"digits": 12, "x": np.array([np.pi])})
    assert json.loads(wide)["x"] == [float(f"{np.pi:.12g}")]


def test_a_png_image_is_explained_as_its_pixels_are(small_server):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(drawn_digit(3).astype(np.uint8)).save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    _, from_png, _ = post(small_server, "/api/explain", {"png": png, "target": 8})
    _, from_pixels, _ = post(small_server, "/api/explain", image_body(seed=3, target=8))
    assert from_png == from_pixels
