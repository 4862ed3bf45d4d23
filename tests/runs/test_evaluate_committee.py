"""`cnntrain eval` of several checkpoints (cnntrain.runs.evaluate_committee) on synthetic MNIST:
the scores against hand-made and single-network ones, the members' split, --json, --errors,
--tta, --committee SWEEP_DIR and the refusals."""

import json
import math
import os

import numpy as np
import pytest

from cnntrain.apps import plots
from cnntrain.apps.committee import DEFAULT_COMBINE
from cnntrain.runs.evaluate_committee import cross_entropy, score_committee
from tests.apps.test_committee import (
    five_output_checkpoint,
    make_run,
    non_finite_copy,
    run_checkpoint,
    twins,
)
from tests.support.checkpoints import make_network, save_network, write_checkpoint
from tests.support.clitools import assert_one_line_error, invoke, use_synthetic_mnist


@pytest.fixture
def env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    return tmp_path


def eval_json(*args):
    result = invoke("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the scores


def test_score_committee_against_a_hand_made_example():
    # 3 members, 3 images of 3 classes; labels 0, 2, 1.
    members = np.array([
        [[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]],
        [[0.5, 0.4, 0.1], [0.1, 0.5, 0.4], [0.3, 0.6, 0.1]],
        [[0.1, 0.8, 0.1], [0.3, 0.2, 0.5], [0.1, 0.1, 0.8]],
    ])
    labels = np.array([0, 2, 1])
    vote = score_committee(members, labels, "vote")
    # Vote: image 0 -> 0 (two of three), image 1 -> tie, the means (.3, .267, .433) say 2,
    # image 2 -> 1 (two of three): all right.
    assert vote["predictions"].tolist() == [0, 2, 1] and vote["accuracy"] == 1.0
    # Mean: image 0's means (.4, .5, .1) say 1: one mistake.
    mean = score_committee(members, labels, "mean")
    assert mean["predictions"].tolist() == [1, 2, 1]
    assert mean["accuracy"] == pytest.approx(2 / 3)
    assert mean["confusion"][0] == [0, 1, 0] and mean["per_class"] == [0.0, 1.0, 1.0]
    # The loss is that of the mean probabilities: -(log .4 + log 1.3/3 + log 1.4/3) / 3.
    expected = -(math.log(0.4) + math.log(1.3 / 3) + math.log(1.4 / 3)) / 3
    assert vote["loss"] == pytest.approx(expected) and mean["loss"] == pytest.approx(expected)
    # Each member on its own: members 0 and 1 get images 0 and 2 right, member 2 only image 1.
    assert [m["accuracy"] for m in vote["members"]] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert vote["members"][2]["loss"] == pytest.approx(
        -(math.log(0.1) + math.log(0.5) + math.log(0.1)) / 3)
    assert vote["member_predictions"].tolist() == [[0, 0, 1], [0, 1, 1], [1, 2, 2]]


def test_a_probability_rounded_to_zero_gives_a_finite_loss():
    assert math.isfinite(cross_entropy(np.array([[1.0, 0.0]]), np.array([1])))


def test_a_committee_of_identical_networks_scores_as_each_member(env):
    a, b, c = twins(env)
    alone = eval_json(a)
    for combine in ("mean", "vote"):
        report = eval_json(a, b, c, "--combine", combine)
        assert report["n"] == alone["n"] == 200
        assert report["accuracy"] == alone["accuracy"]
        assert report["confusion"] == alone["confusion"]
        assert report["per_class"] == alone["per_class"]
        assert report["loss"] == pytest.approx(alone["loss"], rel=1e-5)
        for member in report["members"]:
            assert member["accuracy"] == alone["accuracy"]
            assert member["loss"] == pytest.approx(alone["loss"], rel=1e-5)


def test_json_holds_every_member_and_the_committee(env):
    network, cfg = make_network(seed=1)
    other, other_cfg = make_network(seed=2, data={"val_size": 100, "mean": 0.2, "std": 0.4})
    a, b = run_checkpoint(env, "seed-1"), run_checkpoint(env, "seed-2")
    save_network(a, network, cfg)
    save_network(b, other, other_cfg)
    report = eval_json(a, b, "--split", "val", "--tta")
    assert set(report) == {"members", "accuracy", "loss", "per_class", "confusion", "combine",
                           "tta", "split", "n"}
    assert report["combine"] == DEFAULT_COMBINE and report["tta"] is True
    assert report["split"] == "val" and report["n"] == 100
    assert [(m["name"], m["checkpoint"]) for m in report["members"]] == [
        ("seed-1", str(a)), ("seed-2", str(b))]
    assert all(set(m) == {"name", "checkpoint", "accuracy", "loss"} for m in report["members"])
    assert np.array(report["confusion"]).sum() == 100
    # Each member scored alone with --tta is the member line of the committee.
    solo = eval_json(b, "--split", "val", "--tta")
    assert [m["name"] for m in solo["members"]] == ["seed-2"]
    assert solo["members"][0]["accuracy"] == report["members"][1]["accuracy"]
    assert solo["members"][0]["loss"] == pytest.approx(report["members"][1]["loss"])


def test_tables_show_each_member_then_the_committee(env):
    a, b, _ = twins(env)
    result = invoke("eval", a, b, "--combine", "mean")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "committee of 2 (mean), test split, 200 images"
    assert lines[1].split()[:2] == ["a", "accuracy"] and lines[2].split()[:2] == ["b", "accuracy"]
    assert lines[3].startswith("committee accuracy ")
    assert lines[4].startswith("per-class accuracy: 0: ")
    assert lines[5].startswith("confusion matrix") and len(lines) == 6 + 1 + 10


def test_one_checkpoint_without_tta_prints_as_before(env):
    a, _, _ = twins(env)
    lines = invoke("eval", a).stdout.splitlines()
    assert lines[0].startswith(f"{a} (") and lines[1].startswith("accuracy ")


def test_errors_draws_the_committees_mistakes_with_every_members_answer(env):
    a, b, _ = twins(env)
    report = eval_json(a, b)
    png = env / "errors.png"
    result = invoke("eval", a, b, "--errors", png)
    assert result.exit_code == 0, result.output
    from PIL import Image

    wrong = report["n"] - int(np.trace(np.array(report["confusion"])))
    assert wrong > 0
    with Image.open(png) as image:
        assert image.size == (plots.ERRORS_WIDTH, plots.errors_height(wrong))


# --------------------------------------------------------------------------- refusals


def test_members_scored_on_other_images_are_refused(env):
    a, _, _ = twins(env)
    fewer = run_checkpoint(env, "fewer")
    write_checkpoint(fewer, data={"val_size": 100, "test_size": 50})
    assert_one_line_error(invoke("eval", a, fewer), 2, str(a), str(fewer), "data.test_size",
                          "different test images")
    # Their validation images are the same (same seed, same val_size): --split val works.
    assert eval_json(a, fewer, "--split", "val")["n"] == 100
    wider = run_checkpoint(env, "wider")
    write_checkpoint(wider, data={"val_size": 150})
    assert_one_line_error(invoke("eval", a, wider, "--split", "val"), 2, str(wider),
                          "data.val_size")
    reseeded = run_checkpoint(env, "reseeded")
    write_checkpoint(reseeded, train={"seed": 9})
    assert_one_line_error(invoke("eval", a, reseeded, "--split", "val"), 2, "train.seed")
    assert eval_json(a, reseeded)["n"] == 200  # the whole test set whatever the seed


def test_every_load_refusal_is_one_line_naming_the_checkpoint(env):
    a, b, _ = twins(env)
    link = env / "link.npz"
    os.symlink(a, link)
    copy = env / "copy.npz"
    copy.write_bytes(a.read_bytes())
    garbage = env / "garbage.npz"
    garbage.write_bytes(b"nothing")
    nan = non_finite_copy(b, env / "nan.npz")
    five = five_output_checkpoint(env / "five.npz")
    # A config error (the five outputs are refused by the stored config's check) exits 2.
    for bad, fragment, code in ((a, "given twice", 1), (link, "the same file", 1),
                                (copy, "byte-identical copy", 1),
                                (garbage, "not a .npz checkpoint", 1),
                                (nan, "NaN or infinite", 1), (five, "10 class scores", 2)):
        assert_one_line_error(invoke("eval", a, bad), code, str(bad), fragment)


# --------------------------------------------------------------------------- sweeps


def test_committee_of_a_sweep_leaves_out_the_unfinished_run(env):
    sweep = env / "sweep"
    for seed, state in ((0, "finished"), (1, "resumable"), (2, "finished")):
        run = make_run(sweep, f"seed-{seed}", state)
        write_checkpoint(run / "checkpoints" / "last.npz", seed=seed)
    result = invoke("eval", "--committee", sweep, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [m["name"] for m in report["members"]] == ["seed-0", "seed-2"]
    assert result.stderr.strip() == (f"left out of the committee: {sweep / 'seed-1'} "
                                     "(resumable, not finished)")
    # Explicit checkpoints come first, then the sweep's.
    extra = run_checkpoint(env, "extra")
    write_checkpoint(extra, seed=7)
    report = eval_json(extra, "--committee", sweep)
    assert [m["checkpoint"] for m in report["members"]] == [
        str(extra), str(sweep / "seed-0" / "checkpoints" / "last.npz"),
        str(sweep / "seed-2" / "checkpoints" / "last.npz")]


def test_a_sweep_with_one_finished_run_is_a_one_line_error(env):
    sweep = env / "sweep"
    make_run(sweep, "seed-0", "finished")
    make_run(sweep, "seed-1", "resumable")
    assert_one_line_error(invoke("eval", "--committee", sweep), 1, str(sweep),
                          "1 finished run(s)", "seed-1 (resumable)")


def test_eval_without_any_checkpoint_is_a_usage_error(env):
    result = invoke("eval")
    assert result.exit_code == 2 and "give a checkpoint" in result.stderr
