"""The committee core (cnntrain.apps.committee): the two rules against hand-made examples, the
shifts and test-time augmentation, identical networks answering as one, and every refusal."""

import json
import os
import shutil

import numpy as np
import pytest

from cnntrain.apps.committee import (
    Committee,
    check_member,
    combine_mean,
    combine_vote,
    load_model,
    shift_fields,
    sweep_checkpoints,
    tta_probabilities,
)
from cnntrain.apps.inference import Predictor
from cnntrain.config import config_to_ini, parse_config
from cnntrain.errors import CnnTrainError
from cnntrain.nn.model import build_network
from cnntrain.runs.checkpoint import Checkpoint, save_checkpoint
from tests.support.checkpoints import make_network, save_network, save_same_weights
from tests.support.clitools import SMALL_LAYERS, small_config

# --------------------------------------------------------------------------- checkpoints


def run_checkpoint(root, name):
    return root / name / "checkpoints" / "last.npz"


def twins(tmp_path):
    """Paths of one network saved three ways: as trained (a), under a config with another
    [run] dir (b), and in float64 (c). None is a copy of another's bytes."""
    network, cfg = make_network()
    a, b, c = (run_checkpoint(tmp_path, name) for name in ("a", "b", "c"))
    save_network(a, network, cfg)
    save_same_weights(b, network, small_config(run={"dir": tmp_path / "elsewhere"}))
    save_same_weights(c, network, small_config(train={"dtype": "float64"}))
    return a, b, c


def non_finite_copy(good, path):
    """`good` with one weight made NaN, written as a plain .npz of the same members."""
    members = dict(np.load(good))
    name = next(key for key in members if key.startswith("param/"))
    members[name] = members[name].copy()
    members[name].flat[0] = np.nan
    with open(path, "wb") as f:
        np.savez(f, **members)
    return path


def five_output_checkpoint(path):
    """A checkpoint whose network ends in 5 scores: the config check would refuse to build
    one, so its stored config is written by hand."""
    _, cfg = make_network()
    layers = SMALL_LAYERS[:-1] + ["dense 5"]
    network = build_network(layers, rng=np.random.default_rng(0), dtype=np.float32)
    text = config_to_ini(cfg).replace("dense 10", "dense 5")
    assert "dense 5" in text
    save_checkpoint(path, Checkpoint(params=network.params, buffers=network.buffers,
                                     meta={"epoch": 0, "step": 0, "history": [],
                                           "config": text}))
    return path


def fields(n, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28))


# --------------------------------------------------------------------------- the two rules


def test_mean_and_vote_against_a_hand_made_example():
    # 3 members, 2 images, 3 classes.
    members = np.array([
        [[0.6, 0.3, 0.1], [0.5, 0.1, 0.4]],
        [[0.5, 0.4, 0.1], [0.1, 0.5, 0.4]],
        [[0.1, 0.8, 0.1], [0.3, 0.2, 0.5]],
    ])
    # Image 0: means (0.4, 0.5, 0.1), so the mean answers 1; two members of three say 0.
    # Image 1: one vote each, a tie broken by the means (0.3, 0.267, 0.433): 2.
    assert combine_mean(members).tolist() == [1, 2]
    assert combine_vote(members).tolist() == [0, 2]


def test_a_tie_is_broken_among_the_tied_digits_only():
    # 4 members, one image: digits 0 and 1 get two votes each, digit 2 none but the highest
    # mean (0.49). Means of the tied digits: 0 -> 0.26, 1 -> 0.255; the vote says 0.
    members = np.array([[[0.52, 0.0, 0.48]], [[0.52, 0.0, 0.48]],
                        [[0.0, 0.51, 0.49]], [[0.0, 0.51, 0.49]]])
    assert combine_mean(members).tolist() == [2]
    assert combine_vote(members).tolist() == [0]


def test_one_member_answers_alike_by_both_rules():
    probs = np.random.default_rng(1).dirichlet(np.ones(10), size=50)[None]
    assert combine_vote(probs).tolist() == combine_mean(probs).tolist() == \
        np.argmax(probs[0], axis=1).tolist()


# --------------------------------------------------------------------------- shifts and TTA


def test_shift_fields_moves_the_picture_and_lets_background_in():
    field = (np.arange(12).reshape(1, 3, 4) + 1).astype(float)
    assert shift_fields(field, 0, 0).tolist() == field.tolist()
    assert shift_fields(field, 1, 0)[0].tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert shift_fields(field, 0, 1)[0].tolist() == [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    assert shift_fields(field, -1, -2)[0].tolist() == [[7, 8, 0, 0], [11, 12, 0, 0], [0, 0, 0, 0]]
    assert not shift_fields(field, 3, 0).any() and not shift_fields(field, 0, -4).any()
    assert field[0, 0, 0] == 1  # the input is left as it was


class PixelReader:
    """A hand-made predictor: its class c is sure when the ink is at PLACES[c] (rows, columns),
    class 9 when it is anywhere else; the rows of its answer sum to 1."""

    PLACES = ((4, 7), (6, 7), (5, 6), (5, 8), (5, 7))
    path = None

    def probabilities(self, fields):
        fields = np.asarray(fields)
        out = np.zeros((len(fields), 10))
        for c, (r, col) in enumerate(self.PLACES):
            out[:, c] = fields[:, r, col]
        out[:, 9] = 1 - out.sum(axis=1)
        return out


def test_tta_averages_a_predictor_over_the_field_and_its_four_shifts():
    field = np.zeros((1, 28, 28))
    field[0, 5, 7] = 1.0
    # The ink at (5, 7) moves up to (4, 7), down to (6, 7), left to (5, 6), right to (5, 8):
    # each of classes 0..4 is sure for one of the five fields.
    expected = [[0.2] * 5 + [0.0] * 5]
    np.testing.assert_allclose(tta_probabilities(PixelReader(), field), expected, atol=1e-12)
    committee = Committee([PixelReader()], tta=True, names=["hand-made"])
    np.testing.assert_allclose(committee.probabilities(field), expected, atol=1e-12)
    without = Committee([PixelReader()], tta=False, names=["hand-made"])
    assert without.probabilities(field)[0, 4] == 1.0


# --------------------------------------------------------------------------- identical networks


def test_a_committee_of_identical_networks_equals_each_member(tmp_path):
    a, b, c = twins(tmp_path)
    assert len({p.read_bytes() for p in (a, b, c)}) == 3  # three files, not copies
    x = fields(64)
    alone = Predictor.from_checkpoint(a)
    for combine in ("mean", "vote"):
        same = load_model([a, b], combine=combine)
        assert isinstance(same, Committee) and list(same.names) == ["a", "b"]
        np.testing.assert_array_equal(same.probabilities(x), alone.probabilities(x))
        assert same.predict(x).tolist() == alone.predict(x).tolist()
        # float64 weights compute in another precision: the same answers, to rounding.
        mixed = load_model([a, c], combine=combine)
        np.testing.assert_allclose(mixed.probabilities(x), alone.probabilities(x), atol=1e-6)
        assert mixed.predict(x).tolist() == alone.predict(x).tolist()
        said = mixed.answer(x)
        assert said["members"].shape == (2, 64, 10)
        assert said["member_predictions"].tolist() == [alone.predict(x).tolist()] * 2


def test_the_summary_names_every_member(tmp_path):
    a, b, _ = twins(tmp_path)
    summary = load_model([a, b], combine="vote", tta=True).summary()
    assert [m["name"] for m in summary["members"]] == ["a", "b"]
    assert [m["path"] for m in summary["members"]] == [str(a), str(b)]
    assert summary["combine"] == "vote" and summary["tta"] is True
    json.dumps(summary)


def test_one_checkpoint_without_tta_is_a_plain_predictor(tmp_path):
    a, _, _ = twins(tmp_path)
    assert isinstance(load_model([a]), Predictor)
    assert isinstance(load_model([a], tta=True), Committee)


# --------------------------------------------------------------------------- refusals


def refused(paths, *fragments):
    with pytest.raises(CnnTrainError) as caught:
        load_model(paths)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


def test_a_checkpoint_given_twice_is_refused(tmp_path):
    a, b, _ = twins(tmp_path)
    refused([a, b, a], a, "given twice")
    link = tmp_path / "link.npz"
    os.symlink(a, link)
    refused([a, link], link, "the same file")
    copy = tmp_path / "copy.npz"
    shutil.copyfile(a, copy)
    refused([a, copy], copy, "byte-identical copy", a)


def test_unreadable_and_non_finite_checkpoints_are_refused_by_name(tmp_path):
    a, b, _ = twins(tmp_path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a checkpoint")
    refused([a, garbage], garbage, "not a .npz checkpoint")
    refused([a, tmp_path / "missing.npz"], tmp_path / "missing.npz", "no such checkpoint")
    nan = non_finite_copy(b, tmp_path / "nan.npz")
    refused([a, nan], nan, "NaN or infinite")


def test_a_network_that_does_not_answer_ten_digits_is_refused(tmp_path):
    a, _, _ = twins(tmp_path)
    five = five_output_checkpoint(tmp_path / "five.npz")
    refused([a, five], five, "10 class scores")


class _Shaped:
    def __init__(self, input_shape, outputs):
        self.input_shape = input_shape
        self.outputs = outputs

    def summary(self):
        class Row:
            output_shape = self.outputs
        return [Row()]


class _Stub:
    def __init__(self, input_shape, outputs=(10,)):
        self.network = _Shaped(input_shape, outputs)


def test_check_member_refuses_another_input_or_output_shape():
    check_member("fine.npz", _Stub((1, 28, 28)))
    with pytest.raises(CnnTrainError, match=r"wide\.npz: its network reads \(1, 32, 32\)"):
        check_member("wide.npz", _Stub((1, 32, 32)))
    with pytest.raises(CnnTrainError, match=r"five\.npz: its network outputs \(5,\)"):
        check_member("five.npz", _Stub((1, 28, 28), (5,)))


def test_an_unknown_rule_is_refused():
    with pytest.raises(CnnTrainError, match="--combine must be one of mean, vote"):
        Committee([PixelReader()], combine="median", names=["x"])


# --------------------------------------------------------------------------- sweeps


def make_run(sweep, name, state):
    """A run folder of a sweep: finished (summary.json), resumable (last.npz only) or not
    started (overrides.txt only)."""
    run = sweep / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "overrides.txt").write_text("train.seed=0\n")
    if state == "not started":
        return run
    (run / ".cnntrain-run").write_text(json.dumps({"run_id": name}))
    (run / "checkpoints" / "last.npz").write_bytes(b"weights")
    if state == "finished":
        (run / "summary.json").write_text("{}")
    return run


def test_sweep_checkpoints_takes_the_finished_runs_in_name_order(tmp_path):
    sweep = tmp_path / "sweep"
    for name, state in (("seed-2", "finished"), ("seed-0", "finished"), ("seed-1", "resumable"),
                        ("seed-3", "not started")):
        make_run(sweep, name, state)
    (sweep / "sweep.log").write_text("not a run")
    (sweep / "notes").mkdir()
    finished, left_out = sweep_checkpoints(sweep)
    assert finished == [sweep / "seed-0" / "checkpoints" / "last.npz",
                        sweep / "seed-2" / "checkpoints" / "last.npz"]
    assert [(run.name, state) for run, state in left_out] == [("seed-1", "resumable"),
                                                              ("seed-3", "empty")]


def test_a_sweep_with_fewer_than_two_finished_runs_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep, "seed-0", "finished")
    make_run(sweep, "seed-1", "resumable")
    with pytest.raises(CnnTrainError) as caught:
        sweep_checkpoints(sweep)
    message = str(caught.value)
    assert "1 finished run(s)" in message and "seed-1 (resumable)" in message
    assert "\n" not in message
    with pytest.raises(CnnTrainError, match="not a folder"):
        sweep_checkpoints(tmp_path / "nowhere")


def test_parse_config_of_the_twins_differs_only_where_meant(tmp_path):
    # The twins' configs really differ (so the files are not copies by accident).
    a, b, c = twins(tmp_path)
    cfgs = [Predictor.from_checkpoint(p).config for p in (a, b, c)]
    assert cfgs[0].run.dir != cfgs[1].run.dir
    assert (cfgs[0].train.dtype, cfgs[2].train.dtype) == ("float32", "float64")
    assert parse_config(config_to_ini(cfgs[0]), source="x").model.layers == cfgs[2].model.layers
