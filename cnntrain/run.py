"""A run: a config turned into data, network, optimizer and trainer, and the folder it fills.

This is the one module that reads a Config; everything it builds takes plain arguments.

Run folder:
  config.ini            the resolved config (overrides applied)
  metrics.jsonl         one JSON object per epoch
  train.log             the human lines
  checkpoints/last.npz  the latest position (every epoch, and on Ctrl-C mid-epoch)
  checkpoints/best.npz  the epoch with the best validation accuracy
  summary.json          final and best metrics, wall time, checkpoint paths
"""

import json
import shlex
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from cnntrain import data
from cnntrain.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnntrain.config import config_to_ini, parse_config
from cnntrain.errors import CnnTrainError, ConfigError, DivergedError
from cnntrain.fileio import atomic_write_text
from cnntrain.logs import RUN_FILES, RunLog, best_epoch, epoch_line
from cnntrain.model import build_network
from cnntrain.optim import SGD, LRSchedule
from cnntrain.stopsignals import signal_name, stop_on_signals
from cnntrain.train import Interrupted, Trainer, TrainState, evaluate, steps_per_epoch


def random_streams(seed):
    """Three generators from one seed: weights, data split, training (shuffles, augmentation).

    Separate streams keep the split independent of the network's size, so `eval` can rebuild
    the validation split from the seed alone, and a resumed run finds its split unchanged.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def prepare_data(cfg, data_rng, *, data_dir=None, mirrors=(), progress=True):
    """Download (if needed), verify and load MNIST as the config asks."""
    folder = data.resolve_data_dir(data_dir, cfg.data.dir or None)
    data.ensure_mnist(folder, data.resolve_mirrors(mirrors, cfg.data.mirrors), progress=progress)
    return data.load_mnist(folder, val_size=cfg.data.val_size, train_size=cfg.data.train_size,
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


def build_model(cfg, init_rng=None):
    """The network the config describes (zero weights without a generator, to be loaded)."""
    return build_network(cfg.model.layers, rng=init_rng, dtype=np.dtype(cfg.train.dtype),
                         init=cfg.model.init)


def build_optimizer(cfg, network):
    """SGD over the network's parameters with the config's momentum and weight decay."""
    t = cfg.train
    return SGD(network.params, t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
               nesterov=t.nesterov, decay_biases=t.decay_biases)


def holds_results(folder):
    """True when a folder holds a run's results: a checkpoint, epochs logged or a summary.
    A fit that stopped before its first epoch left only config.ini and train.log."""
    folder = Path(folder)
    return any((folder / name).exists()
               for name in ("checkpoints/last.npz", "metrics.jsonl", "summary.json"))


def run_dir_of_checkpoint(path):
    """runs/x/checkpoints/last.npz -> runs/x."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def config_from_checkpoint(ckpt, source, overrides=()):
    return parse_config(ckpt.config_text, source=f"{source} (its stored config)", overrides=overrides)


class RunFolder:
    """Writes a run's files; checkpoints are atomic, logs are appended and flushed."""

    def __init__(self, path):
        self.path = Path(path)
        self.log = RunLog(self.path)
        self.last = self.path / "checkpoints" / "last.npz"
        self.best = self.path / "checkpoints" / "best.npz"

    def check(self, *, resume, overwrite):
        """Refuse, before any work, to start a new run over one that has results."""
        if resume or overwrite or not holds_results(self.path):
            return
        hint = (f"continue it with --resume {self.last}, " if self.last.exists() else "")
        raise ConfigError(f"{self.path} already holds a run; {hint}choose another folder with "
                          "--out DIR, or replace it with --overwrite")

    def prepare(self, *, resume, overwrite):
        """Clear a replaced run (--overwrite) or a finished run's summary (--resume, which may
        add epochs to it), then make the folder."""
        if overwrite and not resume:
            for name in RUN_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        elif resume:
            (self.path / "summary.json").unlink(missing_ok=True)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)


def continue_command(checkpoint, data_dir=None):
    """The command line that continues the run saved in `checkpoint`."""
    words = ["cnntrain", "fit", "--resume", str(checkpoint)]
    if data_dir:
        words += ["--data-dir", str(data_dir)]
    return shlex.join(words)


def _snapshot(network, optimizer, state, rng, config_text):
    return Checkpoint(params=network.params, optimizer=optimizer.state_dict(),
                      epoch_order=state.order,
                      meta=dict(state.to_meta(), config=config_text, rng=rng.bit_generator.state))


def fit(cfg, *, out_dir=None, resume=None, overwrite=False, quiet=False, progress=None,
        data_dir=None, mirrors=(), echo=print):
    """Train as `cfg` says. resume: a loaded Checkpoint to continue from. Returns the summary.

    progress: show tqdm bars (default: not quiet); the caller decides from the terminal.
    """
    wall_start = time.perf_counter()
    folder = RunFolder(out_dir or cfg.run.dir)
    folder.check(resume=resume is not None, overwrite=overwrite)
    progress = (not quiet) if progress is None else progress
    say = (lambda text: None) if quiet else echo

    init_rng, data_rng, train_rng = random_streams(cfg.train.seed)
    splits = prepare_data(cfg, data_rng, data_dir=data_dir, mirrors=mirrors, progress=progress)
    network = build_model(cfg, init_rng)
    optimizer = build_optimizer(cfg, network)
    schedule = LRSchedule(cfg.train.lr, cfg.train.lr_schedule, epochs=cfg.train.epochs,
                          steps_per_epoch=steps_per_epoch(len(splits.train), cfg.train.batch_size),
                          warmup_epochs=cfg.train.warmup_epochs,
                          step_epochs=cfg.train.lr_step_epochs, gamma=cfg.train.lr_gamma)
    trainer = Trainer(network, optimizer, schedule, splits, epochs=cfg.train.epochs,
                      batch_size=cfg.train.batch_size, eval_batch_size=cfg.train.eval_batch_size,
                      rng=train_rng, progress=progress, augment=build_augmenter(cfg))
    config_text = config_to_ini(cfg)

    # Only now, with data and network ready, is the folder touched: a failed download
    # leaves nothing behind that would block the next attempt.
    folder.prepare(resume=resume is not None, overwrite=overwrite)
    if resume is not None:
        try:
            network.load_params(resume.params)
            optimizer.load_state_dict(resume.optimizer)
            train_rng.bit_generator.state = resume.meta["rng"]
            state = TrainState.from_meta(resume.meta, resume.epoch_order)
        except (ValueError, KeyError, TypeError) as exc:
            raise CnnTrainError(f"cannot resume from this checkpoint: {exc}") from None
        folder.log.restart_metrics(state.history)
        folder.log.line(f"resumed at epoch {state.epoch + 1}, step {state.step}")
        say(f"resuming {folder.path} at epoch {state.epoch + 1}, step {state.step}")
    else:
        state = TrainState()
    atomic_write_text(folder.path / "config.ini", config_text)
    header = (f"fit {cfg.source}: {network.n_params:,} parameters, {len(splits.train)} train / "
              f"{len(splits.val)} val / {len(splits.test)} test images, {cfg.train.epochs} epochs, "
              f"batch {cfg.train.batch_size}, {cfg.train.dtype}")
    folder.log.line(header)
    say(header)

    def on_epoch_end(metrics, state):
        line = epoch_line(metrics, cfg.train.epochs)
        folder.log.line(line)
        folder.log.epoch(metrics)
        echo(line)  # the one line per epoch, shown even with --quiet
        snapshot = _snapshot(network, optimizer, state, train_rng, config_text)
        save_checkpoint(folder.last, snapshot)
        if best_epoch(state.history) is metrics:
            save_checkpoint(folder.best, snapshot)

    with stop_on_signals() as stop:
        try:
            trainer.fit(state, on_epoch_end, stop)
        except Interrupted as stopped:
            with stop.shielded():
                save_checkpoint(folder.last, _snapshot(network, optimizer, stopped.state,
                                                       train_rng, config_text))
                message = (f"{'interrupted' if stopped.signum == signal.SIGINT else 'stopped by ' + signal_name(stopped.signum)} "
                           f"at epoch {stopped.state.epoch + 1}, step {stopped.state.step}; saved "
                           f"{folder.last}; continue with: {continue_command(folder.last, data_dir)}")
                folder.log.line(message)
            raise Interrupted(stopped.state, message, stopped.signum) from None
        except DivergedError as exc:
            kept = f"; the last good checkpoint is {folder.last}" if folder.last.exists() else ""
            folder.log.line(f"{exc}{kept}")
            raise DivergedError(f"{exc}{kept}") from None

    summary = {
        "config": cfg.source,
        "run_dir": str(folder.path),
        "epochs": state.epoch,
        "final": state.history[-1],
        "best": best_epoch(state.history),
        "wall_seconds": time.perf_counter() - wall_start,
        "checkpoints": {"last": str(folder.last), "best": str(folder.best)},
    }
    atomic_write_text(folder.path / "summary.json", json.dumps(summary, indent=2) + "\n")
    done = (f"done: best val_acc {100 * (summary['best']['val_acc'] or 0):.2f}% at epoch "
            f"{summary['best']['epoch']}, final test_acc {100 * (summary['final']['test_acc'] or 0):.2f}%, "
            f"{summary['wall_seconds']:.1f}s; checkpoints in {folder.path / 'checkpoints'}")
    folder.log.line(done)
    say(done)
    return summary


def evaluate_checkpoint(path, *, split="test", batch_size=None, data_dir=None, mirrors=(),
                        progress=True, keep_errors=False):
    """Rebuild the network from a checkpoint alone and score it on a split.

    keep_errors adds "errors": the misclassified images (un-normalised to [0, 1], (M, 28, 28)),
    their true labels and the predictions, in split order.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    network = build_model(cfg)
    try:
        network.load_params(ckpt.params)
    except ValueError as exc:
        raise CnnTrainError(f"{path}: its weights do not fit its own layer list ({exc})") from None
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
              "confusion": confusion.tolist(), "epoch": ckpt.meta["epoch"]}
    if keep_errors:
        wrong = np.flatnonzero(result["predictions"] != chosen.labels)
        images = chosen.images[wrong, 0] * cfg.data.std + cfg.data.mean
        report["errors"] = {"images": np.clip(images, 0, 1), "labels": chosen.labels[wrong],
                            "predictions": result["predictions"][wrong]}
    return report
