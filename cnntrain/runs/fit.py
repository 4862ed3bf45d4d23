"""A run: a config turned into data, network, optimizer and trainer, and the folder it fills.

The run folder's lock and write order are cnntrain.runs.runfolder's (its layout
cnntrain.runs.runfolder_layout's); what a run is built from is cnntrain.runs.build's, and what
a resume may change cnntrain.runs.resume's.
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

from cnntrain.config import config_to_ini, load_config
from cnntrain.configschema import SCHEMA
from cnntrain.errors import CnnTrainError, ConfigError, DivergedError
from cnntrain.nn.optim import LRSchedule
from cnntrain.runs.build import (
    NetworkLayout,
    build_augmenter,
    build_model,
    build_optimizer,
    check_batches,
    layer_seeds,
    prepare_data,
    random_streams,
)
from cnntrain.runs.checkpoint import Checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from cnntrain.runs.metrics import best_epoch, epoch_line
from cnntrain.runs.resume import resume_config
from cnntrain.runs.runfolder import FolderNotWritable, RunFolder, RunWriteError, continue_command
from cnntrain.runs.runfolder_layout import CHECKPOINTS, run_dir_of_checkpoint
from cnntrain.runs.stopsignals import signal_name, stop_on_signals
from cnntrain.runs.train import Interrupted, Trainer, TrainState, steps_per_epoch


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
            replace = overwrite and (resume is None
                                     or not folder.is_run_of(resume_path, resume.meta))
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
