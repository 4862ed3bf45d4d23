"""A run: a config turned into data, network, optimizer and trainer, and the folder it fills.

This is the one module that reads a Config; everything it builds takes plain arguments.

The run folder's layout, lock and write order are cnntrain.runfolder's.
"""

import contextlib
import dataclasses
import errno
import math
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cnntrain.checkpoint import Checkpoint, Layout, Need, load_checkpoint
from cnntrain.config import SCHEMA, config_to_ini, load_config, parse_config
from cnntrain.constants import MNIST_TRAIN_IMAGES
from cnntrain.download import fetch_mnist
from cnntrain.errors import CnnTrainError, ConfigError, DivergedError
from cnntrain.logs import best_epoch, epoch_line
from cnntrain.mnist import load_mnist
from cnntrain.model import build_network
from cnntrain.optim import SGD, LRSchedule
from cnntrain.runfolder import (CHECKPOINTS, FolderNotWritable, RunFolder, RunWriteError,
                                continue_command, describe_position, run_dir_of_checkpoint)
from cnntrain.stopsignals import signal_name, stop_on_signals
from cnntrain.train import Interrupted, Trainer, TrainState, evaluate, steps_per_epoch


def random_streams(seed):
    """Three generators from one seed: weights, data split, training (shuffles, augmentation).

    Separate streams keep the split independent of the network's size, so `eval` can rebuild
    the validation split from the seed alone, and a resumed run finds its split unchanged.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def layer_seeds(seed):
    """The seed's fourth child stream (after random_streams' three), from which each layer
    that needs randomness gets a stream of its own (model.layer_generator)."""
    return np.random.SeedSequence(seed, spawn_key=(3,))


def prepare_data(cfg, data_rng, *, data_dir=None, mirrors=(), progress=True):
    """Download (if needed), verify and load MNIST as the config asks."""
    folder, _ = fetch_mnist(data_dir, mirrors, config_dir=cfg.data.dir or None,
                            config_mirrors=cfg.data.mirrors, progress=progress)
    return load_mnist(folder, val_size=cfg.data.val_size, train_size=cfg.data.train_size,
                      test_size=cfg.data.test_size, mean=cfg.data.mean, std=cfg.data.std,
                      rng=data_rng, dtype=np.dtype(cfg.train.dtype))


def build_augmenter(cfg):
    """The config's [augment] as a callable (images, rng) -> images, or None when all are off."""
    a = cfg.augment
    if not (a.translate or a.rotate or a.scale or a.elastic_alpha):
        return None
    from cnntrain.augment import Augmenter
    # Pixels moved in from outside the image are background: 0 before normalisation.
    return Augmenter(translate=a.translate, rotate=a.rotate, scale=a.scale,
                     elastic_alpha=a.elastic_alpha, elastic_sigma=a.elastic_sigma,
                     fill=-cfg.data.mean / cfg.data.std)


def build_model(cfg, init_rng=None, seeds=None):
    """The network the config describes (zero weights without a generator, to be loaded;
    seeds: layer_seeds, for layers that need randomness in training)."""
    return build_network(cfg.model.layers, rng=init_rng, dtype=np.dtype(cfg.train.dtype),
                         init=cfg.model.init, kernels=cfg.train.kernels, seeds=seeds)


def check_batches(network, n_train, batch_size):
    """ConfigError if a training batch would be too small for a layer (batch norm after a
    dense layer needs two examples): checked before training rather than failing mid-epoch."""
    last = n_train % batch_size or batch_size
    smallest = min(batch_size, last, n_train)
    for (name, layer), line in zip(network.layers, network.lines):
        if smallest < layer.min_batch:
            raise ConfigError(
                f"layer {name} ('{line}') needs at least {layer.min_batch} images in every "
                f"training batch, but with {n_train} training images and batch_size "
                f"{batch_size} a batch holds {smallest}; change [train] batch_size or "
                "[data] train_size")


def build_optimizer(cfg, network):
    """SGD over the network's parameters with the config's momentum and weight decay."""
    t = cfg.train
    return SGD(network.params, t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
               nesterov=t.nesterov, decayed=network.decayed(t.decay_biases))


def config_from_checkpoint(ckpt, source, overrides=()):
    return stored_config(ckpt.meta, source, overrides)


def stored_config(meta, source, overrides=()):
    """The Config a checkpoint's meta.json holds (source: the checkpoint, for messages)."""
    return parse_config(meta["config"], source=f"{source} (its stored config)", overrides=overrides)


class NetworkLayout:
    """What the network of a checkpoint's own config needs of its members, for
    load_checkpoint's `layout`, which calls it with meta.json before any array is read.

    Parameters and buffers have the shapes of the network the config builds, in its
    train.dtype; the optimizer's velocities (optim.SGD.state_dict: 'NAME.v') have their
    parameters' shapes and are needed to resume only; epoch_order (int64, as
    save_checkpoint writes it) may be absent and holds the training split's indices.
    The config and the network it built are kept (cfg, network): the parameters and
    buffers are read straight into that network's arrays.
    """

    def __init__(self, path, *, resume=False):
        self.path, self.resume = path, resume
        self.cfg = self.network = None

    def __call__(self, meta):
        self.cfg = stored_config(meta, self.path)
        # Building the network allocates its weights (zeros), which is what loading them
        # needs anyway; the config check has refused networks too large for this machine.
        self.network = build_model(self.cfg)
        dtype = self.network.dtype
        needs = {f"param/{name}": Need(value.shape, dtype, into=value)
                 for name, value in self.network.params.items()}
        needs.update({f"buffer/{name}": Need(value.shape, value.dtype, into=value)
                      for name, value in self.network.buffers.items()})
        needs.update({f"optim/{name}.v": Need(value.shape, dtype, optional=not self.resume)
                      for name, value in self.network.params.items()})
        needs["epoch_order"] = Need((_training_size(self.cfg),), np.int64, optional=True)
        return Layout(needs, needed_by=f"its config (train.dtype is {dtype})")


def _training_size(cfg):
    """The training split's size, or the range it lies in: data.train_size when set; else
    what the training file leaves after the validation hold-out, which only the data itself
    tells (_restore checks that), at most what MNIST's (checksum-verified) file leaves."""
    return cfg.data.train_size or range(1, MNIST_TRAIN_IMAGES - cfg.data.val_size + 1)


def load_network(path):
    """(checkpoint, its stored config, its network holding its weights) of the checkpoint at
    path, every member checked against that network before it is read into it;
    CheckpointError / ConfigError (one line) if unusable."""
    layout = NetworkLayout(path)
    ckpt = load_checkpoint(path, layout)
    # Arrays stored in another byte order were read into fresh arrays; copy those in.
    for target, arrays in ((layout.network.params, ckpt.params),
                           (layout.network.buffers, ckpt.buffers)):
        for name, value in arrays.items():
            if value is not target[name]:
                target[name][...] = value
    return ckpt, layout.cfg, layout.network


# What a resume may change: how the rest of the run is trained and scored. Everything else
# (the data, its split and normalisation, the seed, the network, the precision) is what the
# saved position means, and a changed batch size moves a mid-epoch position's batches.
RESUME_ACCEPTS = (
    ["train." + key for key in ("epochs", "lr", "lr_schedule", "lr_step_epochs", "lr_gamma",
                                "warmup_epochs", "momentum", "nesterov", "weight_decay",
                                "decay_biases", "label_smoothing", "eval_batch_size")]
    + ["augment." + key for key in SCHEMA["augment"]]
    + ["data.dir", "data.mirrors", "run.dir"])
BATCH_SIZE_KEY = "train.batch_size"  # accepted at an epoch boundary only


def _config_changes(stored, cfg):
    """[(section.key, old, new)] where cfg differs from the stored config."""
    changes = []
    for section, keys in SCHEMA.items():
        for key in keys:
            old, new = getattr(getattr(stored, section), key), getattr(getattr(cfg, section), key)
            if old != new:
                changes.append((f"{section}.{key}", old, new))
    return changes


def _shown(value):
    text = " / ".join(value) if isinstance(value, tuple) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def resume_config(ckpt, checkpoint_path, overrides=(), config_path=None):
    """The config a resume runs with: the checkpoint's own, or the file given with --config,
    either with the --set overrides. Whatever differs from the checkpoint's config passes the
    same rule: only RESUME_ACCEPTS may change; anything else is refused, never ignored."""
    stored = config_from_checkpoint(ckpt, checkpoint_path)
    given = load_config(config_path, overrides) if config_path else \
        config_from_checkpoint(ckpt, checkpoint_path, overrides)
    mid_epoch = bool(ckpt.meta.get("step_in_epoch"))
    changes = _config_changes(stored, given)
    by = f"{config_path}" if config_path else "--set"
    if config_path and any(name.startswith("model.") for name, _, _ in changes):
        raise ConfigError(f"{config_path} describes a different network than {checkpoint_path}; "
                          "drop --config to continue the checkpoint's own run")
    refused = [(name, old, new) for name, old, new in changes
               if name not in RESUME_ACCEPTS and not (name == BATCH_SIZE_KEY and not mid_epoch)]
    if refused:
        listed = ", ".join(f"{name} {_shown(old)} -> {_shown(new)}" for name, old, new in refused)
        accepted = ", ".join(RESUME_ACCEPTS) + f", {BATCH_SIZE_KEY} (at an epoch's end)"
        raise ConfigError(
            f"{by} changes what the position saved in {checkpoint_path} means ({listed}); a "
            f"resume accepts changes to {accepted} only; to change the others, start a new "
            "run with --config FILE --out NEW_DIR")
    done = ckpt.meta["epoch"]
    if given.train.epochs < done:
        raise ConfigError(f"{checkpoint_path} has already trained {done} epochs, more than "
                          f"train.epochs = {given.train.epochs}; give --set train.epochs={done} "
                          "or more")
    return given


def start_fit(*, config_path=None, overrides=(), out_dir=None, resume_path=None, **options):
    """`cnntrain fit` from its flags: load the config or checkpoint, reconcile them, train."""
    if out_dir is not None and not str(out_dir).strip():
        raise ConfigError("--out '' names no folder; give one, e.g. --out runs/try, or leave "
                          "--out out to use the config's [run] dir")
    if resume_path:
        checkpoint = load_checkpoint(resume_path, NetworkLayout(resume_path, resume=True))
        cfg = resume_config(checkpoint, resume_path, overrides, config_path)
    elif config_path:
        checkpoint, cfg = None, load_config(config_path, overrides)
    else:
        raise ConfigError("give --config FILE (e.g. --config configs/lenet5.ini) or "
                          "--resume CHECKPOINT")
    return fit(cfg, out_dir=out_dir, resume=checkpoint, resume_path=resume_path,
               config_path=config_path, **options)


def _snapshot(network, optimizer, state, rng, config_text, run_id=None):
    meta = dict(state.to_meta(), config=config_text, rng=rng.bit_generator.state)
    if run_id:
        meta["run_id"] = run_id
    if network.random_layers:
        meta["layer_rngs"] = network.random_state()
    return Checkpoint(params=network.params, buffers=network.buffers,
                      optimizer=optimizer.state_dict(), epoch_order=state.order, meta=meta)


def _check_owner(folder, cfg_text, *, config_path, overwrite, **_):
    """The checks that need no lock: the user's config file, and a folder that is not
    cnntrain's (refused before the lock file is made in it)."""
    folder.check_input_config(config_path, cfg_text)
    folder.check_foreign(overwrite=overwrite)


def _check_folder(folder, cfg_text, *, resume, resume_path, config_path, overwrite):
    _check_owner(folder, cfg_text, config_path=config_path, overwrite=overwrite)
    if resume is None:
        folder.check_new(overwrite=overwrite)
    else:
        folder.check_resume(resume_path, resume.meta, overwrite=overwrite)


def _restore(network, optimizer, train_rng, resume, n_train, steps):
    """Load a checkpoint's weights, velocities, generator and position; refuse one that does
    not fit this data. Its arrays were checked before they were read (NetworkLayout) against
    the network of its stored config, which is this one: resume_config refuses a change of
    network or dtype."""
    try:
        network.load_params(resume.params)
        network.load_buffers(resume.buffers)
        network.load_random_state(resume.meta.get("layer_rngs", {}))
        optimizer.load_state_dict(resume.optimizer)
        train_rng.bit_generator.state = resume.meta["rng"]
        state = TrainState.from_meta(resume.meta, resume.epoch_order)
    except KeyError as exc:
        raise CnnTrainError(f"cannot resume from this checkpoint: its meta.json lacks {exc}, "
                            "which a resume needs") from None
    except (ValueError, TypeError) as exc:
        raise CnnTrainError(f"cannot resume from this checkpoint: {exc}") from None
    if state.order is not None and len(state.order) != n_train:
        raise CnnTrainError(f"cannot resume from this checkpoint: its epoch_order covers "
                            f"{len(state.order)} training images, the data has {n_train}")
    # At `steps` itself the epoch's training is done and its evaluation still to come: a
    # stop during an epoch's last step saves that position, and the resume evaluates it.
    if state.step_in_epoch > steps and state.order is not None:
        raise CnnTrainError(f"cannot resume from this checkpoint: it stands at step "
                            f"{state.step_in_epoch} of an epoch of {steps} steps")
    return state


def divergence_advice(cfg, splits):
    """What most likely made training diverge, and what to change: inputs scaled far beyond
    the usual range (a tiny data.std), a weight decay that overshoots on its own, or else the
    learning rate."""
    t, d = cfg.train, cfg.data
    scale = float(np.abs(splits.train.images).max()) if len(splits.train) else 0.0
    if scale > 50:
        return (f"data.mean = {d.mean:g} and data.std = {d.std:g} scale the inputs to values "
                f"up to {scale:.3g}; use MNIST's own statistics (--set data.mean=0.1307 "
                "--set data.std=0.3081)")
    # With momentum m, the decay's pull on a weight adds up to lr * weight_decay / (1 - m) of
    # it per step; at 1 or more it overshoots zero and grows. Usual decays are far below 1, so
    # a decay above 1 that overshoots is to blame, not the learning rate it is multiplied by.
    if t.weight_decay > 1 and t.lr * t.weight_decay / (1 - t.momentum) >= 1:
        return (f"train.weight_decay = {t.weight_decay:g} at lr {t.lr:g} takes more than each "
                f"weight's own size off it every step; lower it (e.g. --set "
                "train.weight_decay=0.0005)")
    # A quarter of an absurd rate (1e300 -> 2.5e299) would diverge just the same. The shipped
    # configs train at 0.05 to 0.1; past ten times that, their rate is the useful suggestion.
    if t.lr > 1:
        usual = SCHEMA["train"]["lr"].default
        return (f"train.lr = {t.lr:g} is far above the 0.05 to 0.1 that the shipped configs "
                f"use; lower the learning rate (e.g. --set train.lr={usual:g})")
    lower = float(f"{t.lr / 4:.3g}")
    if lower > 0 and math.isfinite(lower):
        return f"lower the learning rate (e.g. --set train.lr={lower:g})"
    return "lower the learning rate"


@dataclasses.dataclass
class _Training:
    """What a fit trains, ready to start: the data, the network with its optimizer and
    trainer, the training generator and the position to start from."""

    cfg: Any
    config_text: str
    splits: Any
    network: Any
    optimizer: Any
    trainer: Trainer
    train_rng: np.random.Generator
    state: TrainState
    run_id: str

    def snapshot(self, state):
        """The checkpoint of `state`: weights, velocities, generator, position, config."""
        return _snapshot(self.network, self.optimizer, state, self.train_rng, self.config_text,
                         self.run_id)

    def header(self):
        """The run's first log line: what is trained on what."""
        t = self.cfg.train
        return (f"fit {self.cfg.source}: {self.network.n_params:,} parameters, "
                f"{len(self.splits.train)} train / {len(self.splits.val)} val / "
                f"{len(self.splits.test)} test images, {t.epochs} epochs, batch {t.batch_size}, "
                f"{t.dtype}")


def _run_folder_path(cfg, out_dir, resume, resume_path):
    """--out, else the resumed checkpoint's own run folder, else the config's [run] dir. A
    checkpoint outside a checkpoints/ folder has no run folder: the one it lies in is not one."""
    if out_dir:
        return out_dir
    if resume is None:
        return cfg.run.dir
    if Path(resume_path).parent.name != CHECKPOINTS:
        raise ConfigError(
            f"{resume_path} is not in a run folder's {CHECKPOINTS}/ folder, so it has no run "
            "folder to continue in; name one with --out DIR (a new or empty folder, or the "
            "folder of its run)")
    return run_dir_of_checkpoint(resume_path)


def _assemble(cfg, config_text, resume, *, data_dir, mirrors, progress):
    """Data, network, optimizer, schedule and trainer as `cfg` says, at the start of the run or
    at the position of the `resume` checkpoint."""
    t = cfg.train
    init_rng, data_rng, train_rng = random_streams(t.seed)
    splits = prepare_data(cfg, data_rng, data_dir=data_dir, mirrors=mirrors, progress=progress)
    network = build_model(cfg, init_rng, layer_seeds(t.seed))
    check_batches(network, len(splits.train), t.batch_size)
    optimizer = build_optimizer(cfg, network)
    steps = steps_per_epoch(len(splits.train), t.batch_size)
    schedule = LRSchedule(t.lr, t.lr_schedule, epochs=t.epochs, steps_per_epoch=steps,
                          warmup_epochs=t.warmup_epochs, step_epochs=t.lr_step_epochs,
                          gamma=t.lr_gamma)
    trainer = Trainer(network, optimizer, schedule, splits, epochs=t.epochs,
                      batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, rng=train_rng,
                      progress=progress, augment=build_augmenter(cfg),
                      clean_epochs=cfg.augment.clean_epochs, label_smoothing=t.label_smoothing)
    if resume is not None:
        state = _restore(network, optimizer, train_rng, resume, len(splits.train), steps)
        run_id = resume.meta.get("run_id") or uuid.uuid4().hex
    else:
        state, run_id = TrainState(), uuid.uuid4().hex
    return _Training(cfg, config_text, splits, network, optimizer, trainer, train_rng, state,
                     run_id)


def _begin(folder, training, *, resume, resume_path, replace, say):
    """Under the lock: make the folder hold exactly the starting position's history, and log
    where the run (re)starts."""
    state = training.state
    folder.begin(run_id=training.run_id, history=state.history,
                 config_text=training.config_text, replace=replace)
    if resume is not None:
        if state.history and state.step_in_epoch == 0 and \
                best_epoch(state.history) is state.history[-1]:
            folder.repair_best(training.snapshot(state), state.epoch)
        folder.log(f"resumed at epoch {state.epoch + 1}, step {state.step} from {resume_path}")
        say(f"resuming {folder.path} at epoch {state.epoch + 1}, step {state.step}")
    header = training.header()
    folder.log(header)
    say(header)


def _train(folder, training, *, data_dir, echo):
    """The epochs, each saved as it ends; a stop signal saves the exact position and raises
    Interrupted with the message that says how to continue."""
    epochs = training.cfg.train.epochs

    def on_epoch_end(metrics, state):
        line = epoch_line(metrics, epochs)
        folder.save_epoch(training.snapshot(state), metrics, line=line,
                          is_best=best_epoch(state.history) is metrics)
        echo(line)  # the one line per epoch, shown even with --quiet

    with stop_on_signals() as stop:
        try:
            training.trainer.fit(training.state, on_epoch_end, stop)
        except Interrupted as stopped:
            with stop.shielded():
                folder.save_position(training.snapshot(stopped.state))
                message = _stop_message(stopped, folder, data_dir)
                folder.log(message)
            raise Interrupted(stopped.state, message, stopped.signum) from None


def _finish(folder, training, wall_seconds):
    """Write summary.json (the mark of a finished run); returns it and the closing line."""
    summary = _summary(training.cfg, folder, training.state, wall_seconds)
    folder.write_summary(summary)
    done = (f"done: best val_acc {100 * (summary['best']['val_acc'] or 0):.2f}% at epoch "
            f"{summary['best']['epoch']}, final test_acc "
            f"{100 * (summary['final']['test_acc'] or 0):.2f}%, "
            f"{summary['wall_seconds']:.1f}s; checkpoints in {folder.checkpoints}")
    _log_quietly(folder, done)
    return summary, done


@contextlib.contextmanager
def _failures_explained(folder, training, data_dir):
    """Divergence and failed writes get one line that says what is safe and what to do, also
    written to train.log when it can be."""
    try:
        yield
    except DivergedError as exc:
        kept = (f"; the last good checkpoint is {folder.last} ({folder.describe()})"
                if folder.holds_run() else "; no checkpoint was saved")
        message = f"{exc}; {divergence_advice(training.cfg, training.splits)}{kept}"
        _log_quietly(folder, message)
        raise DivergedError(message) from None
    except FolderNotWritable:
        raise
    except RunWriteError as exc:
        message = f"{exc}; {folder.what_is_safe(data_dir, _fix_for(exc.error))}"
        _log_quietly(folder, message)
        raise RunWriteError(exc.path, exc.error, message) from None


def fit(cfg, *, out_dir=None, resume=None, resume_path=None, config_path=None, overwrite=False,
        quiet=False, progress=None, data_dir=None, mirrors=(), echo=print):
    """Train as `cfg` says into a run folder, holding its lock throughout. resume: a loaded
    Checkpoint to continue from (resume_path: its file). Returns the summary.

    config_path: the config file the user gave, which is never overwritten.
    progress: show tqdm bars (default: not quiet); the caller decides from the terminal.
    """
    wall_start = time.perf_counter()
    if resume is not None and resume_path is None:
        raise ValueError("resume needs resume_path")
    config_text = config_to_ini(cfg)
    checks = dict(resume=resume, resume_path=resume_path, config_path=config_path,
                  overwrite=overwrite)
    progress = (not quiet) if progress is None else progress
    say = (lambda text: None) if quiet else echo
    with RunFolder(_run_folder_path(cfg, out_dir, resume, resume_path)) as folder:
        # A busy or occupied folder is refused before the slow work; the folder itself is
        # made only once data and network are ready, so a failed download leaves nothing,
        # and someone else's folder is refused before a lock file is made in it.
        _check_owner(folder, config_text, **checks)
        folder.lock_if_present()
        _check_folder(folder, config_text, **checks)
        training = _assemble(cfg, config_text, resume, data_dir=data_dir, mirrors=mirrors,
                             progress=progress)
        with _failures_explained(folder, training, data_dir):
            folder.lock()
            _check_folder(folder, config_text, **checks)  # again: it may have changed meanwhile
            replace = overwrite and (resume is None or not folder.is_run_of(resume_path, resume.meta))
            _begin(folder, training, resume=resume, resume_path=resume_path, replace=replace,
                   say=say)
            _train(folder, training, data_dir=data_dir, echo=echo)
            summary, done = _finish(folder, training, time.perf_counter() - wall_start)
    say(done)
    return summary


def _stop_message(stopped, folder, data_dir):
    how = ("interrupted" if stopped.signum == signal.SIGINT
           else f"stopped by {signal_name(stopped.signum)}")
    return (f"{how} at epoch {stopped.state.epoch + 1}, step {stopped.state.step}; saved "
            f"{folder.last}; continue with: {continue_command(folder.last, data_dir)}")


def _summary(cfg, folder, state, wall_seconds):
    return {
        "config": cfg.source,
        "run_dir": str(folder.path),
        "epochs": state.epoch,
        "final": state.history[-1],
        "best": best_epoch(state.history),
        "wall_seconds": wall_seconds,
        "checkpoints": {"last": str(folder.last), "best": str(folder.best)},
    }


def _fix_for(error):
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the folder writable"
    return "fix that"


def _log_quietly(folder, text):
    """A last train.log line that may itself fail (the disk that failed is still full)."""
    try:
        folder.log(text)
    except RunWriteError:
        pass


def evaluate_checkpoint(path, *, split="test", batch_size=None, data_dir=None, mirrors=(),
                        progress=True, keep_errors=False):
    """Rebuild the network from a checkpoint alone and score it on a split.

    keep_errors adds "errors": the misclassified images (un-normalised to [0, 1], (M, 28, 28)),
    their true labels and the predictions, in split order.
    """
    ckpt, cfg, network = load_network(path)
    _, data_rng, _ = random_streams(cfg.train.seed)
    splits = prepare_data(cfg, data_rng, data_dir=data_dir, mirrors=mirrors, progress=progress)
    chosen = getattr(splits, split)
    if not len(chosen.labels):
        raise ConfigError(f"the {split} split of {path} is empty (its config has "
                          f"{split}_size = 0); choose another with --split")
    result = evaluate(network, chosen.images, chosen.labels,
                      batch_size or cfg.train.eval_batch_size, keep_predictions=keep_errors)
    confusion = result["confusion"]
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    report = {"checkpoint": str(path), "split": split, "accuracy": result["accuracy"],
              "loss": result["loss"], "n": result["n"], "per_class": per_class.tolist(),
              "confusion": confusion.tolist(), "epoch": ckpt.meta["epoch"],
              "position": describe_position(ckpt.meta)}
    if keep_errors:
        wrong = np.flatnonzero(result["predictions"] != chosen.labels)
        images = chosen.images[wrong, 0] * cfg.data.std + cfg.data.mean
        report["errors"] = {"images": np.clip(images, 0, 1), "labels": chosen.labels[wrong],
                            "predictions": result["predictions"][wrong]}
    return report
