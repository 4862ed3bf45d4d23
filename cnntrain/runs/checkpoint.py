"""Checkpoints: one .npz file of plain numeric arrays plus a JSON text entry. No pickle.

Entries:
  param/NAME      the network's parameters, by name ("param/conv1.W")
  buffer/NAME     the layers' buffers (running statistics and the like), by name
  optim/NAME.v    the optimizer's velocities ("optim/conv1.W.v")
  epoch_order     the current epoch's shuffled order of training examples (int64)
  meta.json       UTF-8 JSON as a uint8 array: format version, epoch, step, position in the
                  epoch, running sums of the epoch, generator state, resolved config text,
                  metrics so far, and ("layer_rngs") the state of the generator of each
                  layer that needs randomness

Writing is atomic (temporary file in the same folder, fsync, rename), and a model with NaN or
infinite values is never written; describe_position tells where a checkpoint stands. Reading is
cnntrain.runs.checkpoint_reader's: it never unpickles and never trusts a size, so a foreign,
truncated or hostile file is a one-line error. What each field and array may hold is
cnntrain.runs.checkpoint_checks'.
"""

import configparser
import json
import math
from dataclasses import dataclass, field

import numpy as np

from cnntrain.errors import DivergedError
from cnntrain.fileio import atomic_writer

FORMAT_VERSION = 1


class NonFiniteModelError(DivergedError):
    """A model with NaN or infinite values was about to be saved."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild a network or continue its training exactly."""

    params: dict
    optimizer: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    epoch_order: np.ndarray = None
    meta: dict = field(default_factory=dict)
    source: str = None  # the file it was loaded from, for messages

    @property
    def config_text(self):
        return self.meta["config"]

    def named_arrays(self):
        """{key: array} of the parameters, buffers and velocities, keyed as the file stores
        them: 'param/conv1.W', 'buffer/batchnorm1.running_mean', 'optim/conv1.W.v'."""
        named = {f"param/{name}": value for name, value in self.params.items()}
        named.update({f"buffer/{name}": value for name, value in self.buffers.items()})
        named.update({f"optim/{name}": value for name, value in self.optimizer.items()})
        return named



def non_finite_entry(params, optimizer=None, buffers=None):
    """The name of the first parameter (or velocity, or buffer) holding NaN or inf, or None."""
    for prefix, arrays in (("param/", params), ("optim/", optimizer or {}),
                           ("buffer/", buffers or {})):
        for name, value in arrays.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return prefix + name
    return None



def _finite_record(entry):
    """A metrics record with a value that is not a finite number (a split that could not be
    scored) as None: meta.json is strict JSON, as metrics.jsonl is."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in entry.items()}


def save_checkpoint(path, ckpt):
    """Write ckpt to path atomically. np.savez is given an open file: with a file name it
    would append '.npz' and the rename would miss it. A model with NaN or infinite weights is
    never written: a checkpoint is always something that can be evaluated and continued."""
    bad = non_finite_entry(ckpt.params, ckpt.optimizer, ckpt.buffers)
    if bad:
        raise NonFiniteModelError(f"not saving {path}: {bad} holds NaN or infinite values")
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION)
    arrays = {key: np.ascontiguousarray(value) for key, value in ckpt.named_arrays().items()}
    if ckpt.epoch_order is not None:
        arrays["epoch_order"] = np.asarray(ckpt.epoch_order, dtype=np.int64)
    if isinstance(meta.get("history"), list):
        meta["history"] = [_finite_record(entry) if isinstance(entry, dict) else entry
                           for entry in meta["history"]]
    text = json.dumps(meta, allow_nan=False)
    arrays["meta.json"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def describe_position(meta):
    """Where a checkpoint stands, from its meta: 'after epoch 3 of 5' at an epoch's end,
    'epoch 4 of 5, mid-epoch at step 1234' (the epoch it is in) otherwise."""
    planned = _peek(meta.get("config", ""), "train", "epochs")
    of = f" of {planned}" if planned else ""
    if meta.get("step_in_epoch"):
        return f"epoch {meta.get('epoch', 0) + 1}{of}, mid-epoch at step {meta.get('step')}"
    return f"after epoch {meta.get('epoch')}{of}"


def _peek(text, section, key):
    """One raw value of INI text (None when absent or unreadable), without checking it."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        return parser.get(section, key, fallback=None)
    except (configparser.Error, TypeError):
        return None
