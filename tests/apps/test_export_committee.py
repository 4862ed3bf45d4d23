"""`cnntrain export` with several checkpoints: one ONNX graph of the committee, whose
probabilities onnxruntime computes as cnntrain's committee does (the mean of the members'),
for members of different architecture, dtype and [data] mean and std."""

import json

import numpy as np
import onnx
import pytest

from cnntrain.apps import export
from cnntrain.apps.committee import load_model
from cnntrain.data.mnist import read_idx
from tests.apps.test_export import EXAMPLES, N_IMAGES, STEPS, onnx_outputs, trained_checkpoint
from tests.support.checkpoints import write_checkpoint, write_five_class_checkpoint
from tests.support.clitools import assert_one_line_error, invoke, small_config

# Three members unlike each other: a batch-norm CNN, a plain LeNet-like CNN in float64 and an
# MLP, each with its own normalisation.
MEMBERS = {
    "bn": small_config(EXAMPLES["batchnorm"], data={"val_size": 100, "mean": 0.2, "std": 0.4}),
    "lenet": small_config(data={"val_size": 100, "mean": 0.1307, "std": 0.3081},
                          train={"dtype": "float64", "seed": 5}),
    "mlp": small_config(["flatten", "dense 24", "sigmoid", "dense 10"],
                        data={"val_size": 100, "mean": 0.5, "std": 0.25}),
}


@pytest.fixture(scope="module")
def test_images(real_mnist_dir):
    """The first N_IMAGES real test images as [0, 1] fields, and training batches (as
    tests/apps/test_export.py's fixture of the same name)."""
    fields = read_idx(real_mnist_dir / "t10k-images-idx3-ubyte")[:N_IMAGES] / 255.0
    train = read_idx(real_mnist_dir / "train-images-idx3-ubyte")[:STEPS * 64] / 255.0
    labels = read_idx(real_mnist_dir / "train-labels-idx1-ubyte")[:STEPS * 64].astype(np.int64)
    return fields.astype(np.float32), train, labels


@pytest.fixture(scope="module")
def member_checkpoints(test_images, tmp_path_factory):
    """Each member trained a few steps on real digits, saved as runs/NAME/checkpoints/best.npz."""
    _, train, labels = test_images
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, text in MEMBERS.items():
        path = root / name / "checkpoints" / "best.npz"
        path.parent.mkdir(parents=True)
        trained_checkpoint(path, text, train, labels)
        paths[name] = path
    return paths


def assert_committee_parity(checkpoints, output, fields):
    result = invoke("export", *checkpoints, "-o", output)
    assert result.exit_code == 0, result.output
    assert "(mean of probabilities)" in result.stdout
    assert f"ONNX opset {export.OPSET}" in result.stdout
    logits, probabilities = onnx_outputs(output, fields)
    committee = load_model(checkpoints, combine="mean")
    expected = committee.probabilities(fields)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # logits = log(probabilities): softmax gives the probabilities back, argmax agrees.
    np.testing.assert_allclose(np.exp(logits), probabilities, rtol=1e-5, atol=1e-7)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(shifted / shifted.sum(axis=1, keepdims=True), probabilities,
                               atol=1e-6)
    assert (logits.argmax(axis=1) == committee.predict(fields)).mean() >= 0.999
    return committee, probabilities


def test_two_members_of_different_architecture_match_onnxruntime(member_checkpoints,
                                                                  test_images, tmp_path):
    fields = test_images[0]
    checkpoints = [member_checkpoints["bn"], member_checkpoints["mlp"]]
    committee, probabilities = assert_committee_parity(checkpoints, tmp_path / "c.onnx",
                                                       fields)
    # Not one member's answer: the graph really averages both.
    for member in committee.members:
        assert np.abs(member.probabilities(fields) - probabilities).max() > 1e-3


def test_three_members_one_in_float64_match_onnxruntime(member_checkpoints, test_images,
                                                        tmp_path):
    assert_committee_parity(list(member_checkpoints.values()), tmp_path / "c.onnx",
                            test_images[0])


def test_members_keep_their_own_names_weights_and_normalisation(tmp_path):
    a, b = tmp_path / "a" / "checkpoints" / "last.npz", tmp_path / "b" / "checkpoints" / "last.npz"
    for path in (a, b):
        path.parent.mkdir(parents=True)
    history = [{"epoch": 1, "test_acc": 0.5}]
    net_a, _ = write_checkpoint(a, history=history,
                                data={"val_size": 100, "mean": 0.25, "std": 0.5})
    net_b, _ = write_checkpoint(b, ["flatten", "dense 16", "relu", "dense 10"], seed=4,
                                data={"val_size": 100, "mean": 0.1, "std": 0.3})
    assert invoke("export", a, b, "-o", tmp_path / "ab.onnx").exit_code == 0
    saved = onnx.load(str(tmp_path / "ab.onnx"))
    nodes = [n.name for n in saved.graph.node]
    assert len(set(nodes)) == len(nodes)
    assert all(n.startswith(("member0.", "member1.", "committee.")) for n in nodes), nodes
    assert [n.op_type for n in saved.graph.node][-2:] == ["Mean", "Log"]
    weights = {w.name: onnx.numpy_helper.to_array(w) for w in saved.graph.initializer}
    assert weights["member0.normalise.mean"] == np.float32(0.25)
    assert weights["member1.normalise.std"] == np.float32(0.3)
    for prefix, network in (("member0.", net_a), ("member1.", net_b)):
        for key, value in network.params.items():
            np.testing.assert_array_equal(weights[prefix + key], value.astype(np.float32))
    assert [i.name for i in saved.graph.input] == ["image"]
    assert [o.name for o in saved.graph.output] == ["logits", "probabilities"]
    props = {p.key: p.value for p in saved.metadata_props}
    assert props["combine"] == "mean" and props["name"] == "committee of 2: a, b"
    members = json.loads(props["members"])
    assert [(m["name"], m["prefix"]) for m in members] == [("a", "member0."), ("b", "member1.")]
    assert [m["source_checkpoint"] for m in members] == [str(a), str(b)]
    assert json.loads(props["normalisation"]) == {
        "members": [{"mean": 0.25, "std": 0.5}, {"mean": 0.1, "std": 0.3}],
        "inside_graph": True}
    assert json.loads(props["member_epochs"]) == [1, 0]
    assert json.loads(props["member_test_accuracies"]) == [0.5, None]
    assert json.loads(props["classes"]) == [str(d) for d in range(10)]
    assert "mean of the members' softmax probabilities" in saved.doc_string


def test_one_checkpoint_still_exports_its_lone_graph(tmp_path):
    write_checkpoint(tmp_path / "m.npz")
    result = invoke("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0 and "mean of probabilities" not in result.stdout
    saved = onnx.load(str(tmp_path / "m.onnx"))
    assert [n.name for n in saved.graph.node][:2] == ["normalise.sub", "normalise.div"]
    assert [n.op_type for n in saved.graph.node][-1] == "Softmax"
    assert "combine" not in {p.key for p in saved.metadata_props}


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_checkpoint(a)
    write_checkpoint(b, seed=2)
    out = tmp_path / "c.onnx"
    assert_one_line_error(invoke("export", a, b, a, "-o", out), 1, str(a), "given twice")
    (tmp_path / "copy.npz").write_bytes(b.read_bytes())
    assert_one_line_error(invoke("export", a, b, tmp_path / "copy.npz", "-o", out), 1,
                          "copy.npz", "byte-identical copy")
    write_five_class_checkpoint(tmp_path / "five.npz")
    assert_one_line_error(invoke("export", a, tmp_path / "five.npz", "-o", out), 2,
                          "five.npz", "must output 10 class scores")
    assert_one_line_error(invoke("export", a, b, "-o", b), 2, "is the input",
                          "choose another output file")
    assert not out.exists()
    result = invoke("export", a, b, "--tta", "-o", out)
    assert result.exit_code == 2 and "No such option" in result.stderr and "--tta" in result.stderr


def test_help_says_the_graph_averages(tmp_path):
    text = " ".join(invoke("export", "--help").stdout.split())
    assert "mean of the members' probabilities" in text and "'logits' its log" in text
    assert "a vote is not expressible as simply" in text
