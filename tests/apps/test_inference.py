"""Predictor: a checkpoint's network, its normalisation and what it says about itself."""

import json

import numpy as np
import pytest

from cnntrain.apps.inference import Predictor, load_predictor
from cnntrain.errors import CheckpointError
from tests.support.checkpoints import write_checkpoint


def fields(n, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28)).astype(np.float32)


def softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probabilities_apply_the_checkpoints_own_normalisation(tmp_path):
    path = tmp_path / "model.npz"
    network, _ = write_checkpoint(path, data={"val_size": 100, "mean": 0.25, "std": 0.5})
    predictor = Predictor.from_checkpoint(path)
    x = fields(7)
    expected = softmax64(network.forward(((x - 0.25) / 0.5)[:, None].astype(np.float32),
                                         train=False))
    probs = predictor.probabilities(x)
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # The default statistics would give other numbers: the normalisation really is applied.
    other = softmax64(network.forward(((x - 0.1307) / 0.3081)[:, None].astype(np.float32),
                                      train=False))
    assert np.abs(other - probs).max() > 1e-3
    # Evaluation mode: nothing is kept for a backward pass.
    assert all(layer._cache is None for _, layer in predictor.network.layers)


def test_probabilities_refuse_fields_of_the_wrong_shape(tmp_path):
    write_checkpoint(tmp_path / "m.npz")
    predictor = Predictor.from_checkpoint(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        predictor.probabilities(np.zeros((2, 20, 20)))
    one = predictor.probabilities(fields(1)[0])  # one field alone is a batch of one
    assert one.shape == (1, 10)


def test_summary_names_the_run_and_reads_its_accuracy(tmp_path):
    run = tmp_path / "runs" / "lenet-try"
    history = [{"epoch": 1, "test_acc": 0.91, "val_acc": 0.9},
               {"epoch": 2, "test_acc": 0.953, "val_acc": 0.95}]
    network, _ = write_checkpoint(run / "checkpoints" / "best.npz", history=history)
    summary = Predictor.from_checkpoint(run / "checkpoints" / "best.npz").summary()
    assert summary["name"] == "lenet-try"
    assert summary["epoch"] == 2 and summary["test_accuracy"] == 0.953
    assert summary["val_accuracy"] == 0.95
    expected_params = sum(p.size for p in network.params.values())
    assert summary["parameters"] == expected_params == (4 * 25 + 4) + (8 * 4 * 25 + 8) + \
        (8 * 5 * 5 * 32 + 32) + (32 * 10 + 10)
    assert len(summary["layers"]) == 10 and summary["layers"][0].startswith("conv1")
    assert summary["classes"] == [str(d) for d in range(10)]
    json.dumps(summary)  # ready for --json and a server


def test_summary_falls_back_to_the_runs_summary_json(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run / "checkpoints" / "last.npz",
                     history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    (run / "summary.json").write_text(json.dumps({"final": {"epoch": 3, "test_acc": 0.97},
                                                  "best": {"epoch": 2, "test_acc": 0.96}}))
    assert Predictor.from_checkpoint(run / "checkpoints" / "last.npz").test_accuracy() == 0.97
    lone = tmp_path / "copy.npz"
    write_checkpoint(lone)
    summary = Predictor.from_checkpoint(lone).summary()
    assert summary["name"] == "copy.npz" and summary["test_accuracy"] is None


@pytest.mark.parametrize("content, fragment", [(None, "no such checkpoint"),
                                               (b"hello", "not a .npz checkpoint"),
                                               (b"PK\x03\x04broken", "truncated")])
def test_bad_checkpoints_are_the_existing_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment) as caught:
        load_predictor(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_threads_sharing_a_predictor_get_their_own_answers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    write_checkpoint(tmp_path / "m.npz")
    predictor = Predictor.from_checkpoint(tmp_path / "m.npz")
    batches = [fields(n, seed) for seed, n in enumerate([1, 5, 200, 3, 130, 7, 64, 1] * 4)]
    alone = [predictor.probabilities(batch) for batch in batches]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(predictor.probabilities, batches))
    for one, other in zip(alone, together):
        np.testing.assert_array_equal(one, other)
