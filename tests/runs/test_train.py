"""The training loop: exact resume after an interruption, divergence, evaluation, shuffling."""

import os
import signal

import numpy as np
import pytest

from cnntrain.data.mnist import load_mnist
from cnntrain.errors import DivergedError
from cnntrain.nn.model import build_network
from cnntrain.nn.optim import SGD, LRSchedule
from cnntrain.runs.build import random_streams
from cnntrain.runs.checkpoint import save_checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from cnntrain.runs.fit import _snapshot
from cnntrain.runs.train import Interrupted, Trainer, TrainState, evaluate, steps_per_epoch
from tests.support.clitools import SMALL_LAYERS, without_timings

EPOCHS, BATCH = 3, 32


@pytest.fixture
def splits(synthetic_mnist, synthetic_mnist_dir):
    return load_mnist(synthetic_mnist_dir, val_size=100, rng=np.random.default_rng(0))


def make_trainer(splits, seed=0, lr=0.05, augment=None, clean_epochs=0):
    init_rng, _, train_rng = random_streams(seed)
    net = build_network(SMALL_LAYERS, rng=init_rng)
    opt = SGD(net.params, lr, momentum=0.9, weight_decay=5e-4)
    schedule = LRSchedule(lr, "cosine", epochs=EPOCHS,
                          steps_per_epoch=steps_per_epoch(len(splits.train), BATCH))
    return Trainer(net, opt, schedule, splits, epochs=EPOCHS, batch_size=BATCH,
                   eval_batch_size=64, rng=train_rng, augment=augment,
                   clean_epochs=clean_epochs)


def resume_through_checkpoint(stopped_trainer, state, tmp_path, fresh_trainer):
    """Save the stopped trainer's position as `cnntrain fit` does, load it into a fresh
    trainer and train that to the end: (the fresh trainer, its final state)."""
    path = tmp_path / "last.npz"
    save_checkpoint(path, _snapshot(stopped_trainer.network, stopped_trainer.optimizer, state,
                                    stopped_trainer.rng, "config"))
    ckpt = load_checkpoint(path)
    fresh_trainer.network.load_params(ckpt.params)
    fresh_trainer.optimizer.load_state_dict(ckpt.optimizer)
    fresh_trainer.rng.bit_generator.state = ckpt.meta["rng"]
    final = fresh_trainer.fit(TrainState.from_meta(ckpt.meta, ckpt.epoch_order), lambda m, s: None)
    return fresh_trainer, final


def interrupt_at(step):
    """An augment hook that presses Ctrl-C (a real SIGINT to this process) during a step."""
    calls = {"n": 0}

    def hook(x, rng):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGINT)
        return x

    return hook


@pytest.mark.parametrize("stop_step", [7, 16, 23])  # mid-epoch, the last step of epoch 1, epoch 2
def test_interrupted_then_resumed_run_ends_bit_identical(splits, tmp_path, stop_step):
    straight = make_trainer(splits)
    final = straight.fit(TrainState(), lambda m, s: None)

    first = make_trainer(splits, augment=interrupt_at(stop_step))
    with pytest.raises(Interrupted) as stopped:
        first.fit(TrainState(), lambda m, s: None)
    state = stopped.value.state
    assert state.step == stop_step  # the step that saw Ctrl-C finished; no later one started
    resumed, final_resumed = resume_through_checkpoint(first, state, tmp_path, make_trainer(splits))

    for name, value in straight.network.params.items():
        np.testing.assert_array_equal(resumed.network.params[name], value, err_msg=name)
    for name, v in straight.optimizer.velocity.items():
        np.testing.assert_array_equal(resumed.optimizer.velocity[name], v, err_msg=name)
    assert without_timings(final_resumed.history) == without_timings(final.history)


def test_training_learns_and_reshuffles_every_epoch(splits):
    first_batches = []

    def record(x, rng):
        if len(first_batches) < EPOCHS and trainer_steps["n"] % trainer.steps_per_epoch == 0:
            first_batches.append(x.copy())
        trainer_steps["n"] += 1
        return x

    trainer_steps = {"n": 0}
    trainer = make_trainer(splits, augment=record)
    epochs = []
    trainer.fit(TrainState(), lambda m, s: epochs.append(m))
    assert [m["epoch"] for m in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_acc"] > 0.5  # ten classes: chance is 0.1
    assert len(first_batches) == 3
    assert not np.array_equal(first_batches[0], first_batches[1])
    assert not np.array_equal(first_batches[1], first_batches[2])


def test_clean_epochs_see_undistorted_images_and_resume_exactly(splits, tmp_path):
    """clean_epochs=1 of 3: the last epoch trains on the images as they are, and a run
    stopped in a distorted epoch resumes into the same clean one."""
    def noisy(calls, stop_at=None):
        def hook(x, rng):  # draws from the training generator, as the real distortions do
            calls.append(len(calls))
            if len(calls) == stop_at:
                os.kill(os.getpid(), signal.SIGINT)
            return x + rng.normal(0, 2.0, size=x.shape).astype(x.dtype)
        return hook

    calls, seen_by_clean_epoch = [], []
    straight = make_trainer(splits, augment=noisy(calls), clean_epochs=1)
    straight_net_forward = straight.network.forward

    def spy(x, train=True):
        if train and len(calls) == 2 * straight.steps_per_epoch:  # epoch 3 has begun
            seen_by_clean_epoch.append(x)
        return straight_net_forward(x, train=train)

    straight.network.forward = spy
    final = straight.fit(TrainState(), lambda m, s: None)
    steps = straight.steps_per_epoch
    assert len(calls) == 2 * steps  # no distortion in epoch 3
    # The last step of epoch 2 also lands here, after its distortion: skip it.
    clean = seen_by_clean_epoch[1:]
    assert len(clean) == steps
    train_images = splits.train.images.reshape(len(splits.train.images), -1)
    rows = {row.tobytes() for row in train_images}
    assert all(img.tobytes() in rows for x in clean for img in x.reshape(len(x), -1))

    always = make_trainer(splits, augment=noisy([]))
    always.fit(TrainState(), lambda m, s: None)
    assert not np.array_equal(always.network.params["dense2.W"],
                              straight.network.params["dense2.W"])

    first = make_trainer(splits, augment=noisy([], stop_at=steps + 3), clean_epochs=1)
    with pytest.raises(Interrupted) as stopped:
        first.fit(TrainState(), lambda m, s: None)
    resumed, _ = resume_through_checkpoint(first, stopped.value.state, tmp_path,
                                           make_trainer(splits, augment=noisy([]), clean_epochs=1))
    for name, value in straight.network.params.items():
        np.testing.assert_array_equal(resumed.network.params[name], value, err_msg=name)
    assert final.history[-1]["train_loss"] < final.history[0]["train_loss"]


def test_same_seed_same_run_other_seed_other_run(splits):
    a, b, c = (make_trainer(splits, seed=seed) for seed in (1, 1, 2))
    for t in (a, b, c):
        t.epochs = 1
        t.fit(TrainState(), lambda m, s: None)
    np.testing.assert_array_equal(a.network.params["dense2.W"], b.network.params["dense2.W"])
    assert not np.array_equal(a.network.params["dense2.W"], c.network.params["dense2.W"])


def test_a_non_finite_loss_stops_at_once(splits):
    # What to change is the run's advice (tests/runs/test_faults.py); the trainer says where.
    trainer = make_trainer(splits, lr=1e8)
    ends = []
    diverged = r"diverged at epoch 1, step \d+: the loss is (nan|inf)$"
    with pytest.raises(DivergedError, match=diverged):
        trainer.fit(TrainState(), lambda m, s: ends.append(m))
    assert ends == []


def test_evaluate_counts_by_hand(splits):
    trainer = make_trainer(splits)
    net = trainer.network
    x, y = splits.test.images, splits.test.labels
    result = evaluate(net, x, y, batch_size=37)  # a batch size that leaves a remainder
    predictions = np.concatenate([net.forward(x[i:i + 50], train=False).argmax(1)
                                  for i in range(0, len(y), 50)])
    assert result["n"] == len(y)
    assert result["accuracy"] == pytest.approx(np.mean(predictions == y))
    for true in range(10):
        for guess in range(10):
            assert result["confusion"][true, guess] == np.sum((y == true) & (predictions == guess))
