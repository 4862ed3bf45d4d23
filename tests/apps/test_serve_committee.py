"""`cnntrain serve` with several checkpoints: a committee behind the same page and API.

The members differ in architecture and in their [data] mean and std: the LeNet-5 trained on
real MNIST (digit_checkpoint) and a small multilayer perceptron with its initial weights. The
answers are checked against cnntrain.apps.committee's own, on real test digits."""

import json

import numpy as np
import pytest

from cnntrain.apps import serve
from cnntrain.apps.committee import COMBINE_RULES, DEFAULT_COMBINE, Committee, load_model
from cnntrain.apps.serveapi import predict_grey
from cnntrain.cli import cli
from cnntrain.data.preprocess import to_mnist_field
from tests.apps.test_serve import (
    BAD_JSON_BODIES,
    JSON,
    assert_logged_once_without_traceback,
    assert_refusal,
    grey_request,
    request,
)
from tests.support.checkpoints import write_checkpoint, write_five_class_checkpoint
from tests.support.clitools import assert_one_line_error, invoke
from tests.support.servetools import LogLines, RunningServer, as_paper_scan, mnist_test_digits

MLP = ["flatten", "dense 32", "tanh", "dense 10"]


def mlp_checkpoint(folder, seed=1):
    """folder/mlp/checkpoints/best.npz: an MLP with its initial weights, [data] mean and std
    unlike the LeNet's, so each member must apply its own normalisation."""
    path = folder / "mlp" / "checkpoints" / "best.npz"
    path.parent.mkdir(parents=True)
    write_checkpoint(path, MLP, seed=seed, history=[{"epoch": 1, "test_acc": 0.25}],
                     data={"val_size": 100, "mean": 0.5, "std": 0.25})
    return path


@pytest.fixture(scope="module")
def members(digit_checkpoint, tmp_path_factory):
    return [digit_checkpoint, mlp_checkpoint(tmp_path_factory.mktemp("committee"))]


@pytest.fixture(scope="module")
def running(members):
    with RunningServer(members, combine="vote") as server:
        yield server


@pytest.fixture(scope="module")
def pages(real_mnist_dir):
    """Twelve real test digits, enlarged and moved about on white paper."""
    images, _ = mnist_test_digits(real_mnist_dir, 12)
    return [as_paper_scan(digit, 2 + i % 3, (130, 140), (4 + 5 * (i % 3), 9 + 4 * (i % 4)))
            for i, digit in enumerate(images)]


def committee_expects(committee, page):
    field = to_mnist_field((np.asarray(page, dtype=np.float64) / 255.0).astype(np.float32))
    return field, committee.answer(field[None])


def test_api_model_names_the_members_and_the_rule(running, members):
    status, headers, body = request(running, "GET", "/api/model")
    assert status == 200 and headers["Content-Type"] == "application/json"
    summary = json.loads(body)
    assert [m["name"] for m in summary["members"]] == ["quick", "mlp"]
    assert summary["name"] == "committee of 2: quick, mlp"
    assert summary["combine"] == "vote" and summary["tta"] is False
    assert [m["path"] for m in summary["members"]] == [str(path) for path in members]
    assert summary["members"][1]["normalisation"] == {"mean": 0.5, "std": 0.25}
    assert summary["members"][0]["normalisation"] != summary["members"][1]["normalisation"]
    assert summary["parameters"] == sum(m.network.n_params for m in running.predictor.members)
    # "layers", as for one network: every member's, under its name.
    assert summary["layers"] == [f"{m['name']}: {line}" for m in summary["members"]
                                 for line in m["layers"]]
    assert len(summary["layers"]) == 12 + len(MLP)


def test_api_predict_gives_the_committee_answer_and_each_members(running, pages):
    committee = running.predictor
    disagreements = 0
    for page in pages:
        status, _, body = request(running, "POST", "/api/predict", json_body=grey_request(page))
        assert status == 200, body
        answer = json.loads(body)
        field, expected = committee_expects(committee, page)
        assert answer["prediction"] == int(expected["predictions"][0])
        np.testing.assert_allclose(answer["probabilities"], expected["probabilities"][0],
                                   atol=1e-6)
        np.testing.assert_allclose(answer["field"], field, atol=1e-4)
        assert [m["name"] for m in answer["members"]] == ["quick", "mlp"]
        for k, member in enumerate(answer["members"]):
            assert member["prediction"] == int(expected["member_predictions"][k, 0])
            np.testing.assert_allclose(member["probabilities"], expected["members"][k, 0],
                                       atol=1e-6)
        # Each member's own answer is its network's alone, with its own normalisation.
        alone = committee.members[1].probabilities(field[None])[0]
        np.testing.assert_allclose(answer["members"][1]["probabilities"], alone, atol=1e-6)
        disagreements += answer["members"][0]["prediction"] != answer["members"][1]["prediction"]
    # The untrained MLP cannot read digits: the members' answers really are their own.
    assert disagreements >= 3, disagreements


class FixedMember:
    """A member answering the same probabilities for every field."""

    def __init__(self, probabilities):
        self.row = np.asarray(probabilities, dtype=np.float64)
        self.path = None

    def probabilities(self, fields):
        return np.tile(self.row, (len(fields), 1))

    def summary(self):
        return {"name": "fixed", "epoch": None, "test_accuracy": None, "parameters": 0,
                "layers": [], "classes": [str(d) for d in range(10)]}


def test_the_answer_follows_the_rule_where_vote_and_mean_differ():
    """Two members say 1 (0.6 against 0.4 for 2), one says 2 for sure: the vote answers 1,
    the mean 2 (0.6 against 0.4). The answer is the rule's, the probabilities the mean."""
    sure_of_two = np.eye(10)[2]
    leaning_one = 0.6 * np.eye(10)[1] + 0.4 * np.eye(10)[2]
    grey = np.zeros((40, 40), dtype=np.float32)
    grey[8:32, 18:22] = 1.0
    answers = {}
    for combine in COMBINE_RULES:
        committee = Committee([FixedMember(leaning_one), FixedMember(leaning_one),
                               FixedMember(sure_of_two)], combine=combine,
                              names=["a", "b", "c"])
        answers[combine] = predict_grey(committee, grey)
        np.testing.assert_allclose(answers[combine]["probabilities"][1:3], [0.4, 0.6],
                                   atol=1e-6)
        assert [m["prediction"] for m in answers[combine]["members"]] == [1, 1, 2]
    assert answers["vote"]["prediction"] == 1 and answers["mean"]["prediction"] == 2


def test_one_checkpoint_answers_as_before_without_members(digit_checkpoint, pages):
    with RunningServer(digit_checkpoint) as server:
        status, _, body = request(server, "POST", "/api/predict",
                                  json_body=grey_request(pages[0]))
        assert status == 200 and set(json.loads(body)) == {"prediction", "probabilities",
                                                            "field"}
        assert "members" not in json.loads(request(server, "GET", "/api/model")[2])


def test_tta_committee_answers_with_shifted_fields(members, pages):
    with RunningServer(members, combine="mean", tta=True) as server:
        summary = json.loads(request(server, "GET", "/api/model")[2])
        assert summary["combine"] == "mean" and summary["tta"] is True
        status, _, body = request(server, "POST", "/api/predict",
                                  json_body=grey_request(pages[1]))
        assert status == 200, body
        _, expected = committee_expects(load_model(members, combine="mean", tta=True),
                                        pages[1])
        _, plain = committee_expects(load_model(members, combine="mean"), pages[1])
        answer = json.loads(body)
        np.testing.assert_allclose(answer["probabilities"], expected["probabilities"][0],
                                   atol=1e-6)
        assert answer["prediction"] == int(expected["predictions"][0])
        # TTA changes the numbers: the test tells a TTA committee from a plain one.
        assert np.abs(expected["probabilities"] - plain["probabilities"]).max() > 1e-4


@pytest.mark.parametrize("name, body, status, fragment", BAD_JSON_BODIES[:6],
                         ids=[case[0] for case in BAD_JSON_BODIES[:6]])
def test_bad_requests_are_still_refused_in_one_line(running, name, body, status, fragment):
    mark = running.log.mark()
    assert_refusal(*request(running, "POST", "/api/predict", body=body, headers=JSON),
                   status, fragment)
    assert_logged_once_without_traceback(running, mark, status)


def test_a_blank_drawing_and_a_wrong_route_are_4xx(running):
    blank = np.full((50, 50), 255, dtype=np.uint8)
    status, headers, body = request(running, "POST", "/api/predict",
                                    json_body=grey_request(255 - blank))
    assert_refusal(status, headers, body, 422, "ink")
    assert_refusal(*request(running, "GET", "/api/predict"), 405, "POST your image")


# --------------------------------------------------------------------------- the command


def test_the_startup_line_names_the_committee(members, monkeypatch):
    served = []

    def serve_once(server, echo=print):
        served.append(server.predictor)
        server.server_close()
        echo("stopped")

    monkeypatch.setattr(serve, "serve_until_stopped", serve_once)
    result = invoke("serve", *members, "--port", 0, "--combine", "mean", "--tta")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("serving committee of 2: quick, mlp (combine mean, tta) at "
                            "http://127.0.0.1:"), first
    assert isinstance(served[0], Committee) and served[0].combine == "mean" and served[0].tta
    result = invoke("serve", *members, "--port", 0)
    assert result.stdout.startswith("serving committee of 2: quick, mlp (combine vote) at ")
    assert served[1].combine == DEFAULT_COMBINE


@pytest.mark.parametrize("command", ["eval", "predict", "serve"])
def test_the_commands_offer_the_committee_rules(command):
    """The CLI spells the rules out (it must not import numpy to start): they must be the
    committee's; the default is left to DEFAULT_COMBINE (checked above for serve)."""
    combine = next(p for p in cli.commands[command].params if p.name == "combine")
    assert tuple(combine.type.choices) == COMBINE_RULES and combine.default is None


def test_serve_help_names_several_checkpoints():
    assert "CHECKPOINT..." in invoke("serve", "--help").stdout


def test_refusals_at_startup_are_one_line_errors(members, tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "serve_until_stopped", lambda server, echo=print: None)
    lenet, mlp = members
    result = invoke("serve", lenet, mlp, lenet, "--port", 0)
    assert_one_line_error(result, 1, str(lenet), "given twice")
    copy = tmp_path / "copy.npz"
    copy.write_bytes(mlp.read_bytes())
    result = invoke("serve", lenet, mlp, copy, "--port", 0)
    assert_one_line_error(result, 1, str(copy), "byte-identical copy", "given twice")
    unfit = tmp_path / "five.npz"
    write_five_class_checkpoint(unfit)
    result = invoke("serve", lenet, unfit, "--port", 0)
    assert_one_line_error(result, 2, str(unfit), "must output 10 class scores")
    result = invoke("serve", lenet, tmp_path / "missing.npz", "--port", 0)
    assert_one_line_error(result, 1, "missing.npz", "no such checkpoint file")
    result = invoke("serve", lenet, mlp, "--combine", "median")
    assert result.exit_code == 2 and "'median' is not one of 'mean', 'vote'" in result.stderr


def test_a_server_can_hold_a_committee_directly(members):
    committee = load_model(members, combine="vote")
    server = serve.DigitServer(committee, "127.0.0.1", 0, log=LogLines())
    try:
        assert json.loads(server.summary_json)["members"][0]["name"] == "quick"
    finally:
        server.server_close()
