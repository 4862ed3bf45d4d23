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

Writing is atomic (temporary file in the same folder, fsync, rename); reading uses
allow_pickle=False and checks every entry, so a foreign, truncated or hostile file is an
error and nothing in it is ever executed.
"""

import json
import math
import zipfile
from dataclasses import dataclass, field

import numpy as np

from cnntrain.errors import CheckpointError, DivergedError
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


def _whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _shown(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def meta_problem(meta, order):
    """What is wrong with a checkpoint's meta.json and epoch_order, or None.

    Every field is checked for its type and range, and the fields against each other, so a
    hand-edited or damaged file is refused in one line instead of failing somewhere later."""
    if not isinstance(meta["config"], str):
        return f"meta.json 'config' is {_shown(meta['config'])}, not the config text"
    for key in ("epoch", "step", "step_in_epoch", "correct", "seen"):
        if key in meta and not _whole(meta[key]):
            return f"meta.json '{key}' is {_shown(meta[key])}, not a whole number >= 0"
    for key in ("loss_sum", "seconds"):
        if key in meta and not _number(meta[key]):
            return f"meta.json '{key}' is {_shown(meta[key])}, not a finite number >= 0"
    if "run_id" in meta and not isinstance(meta["run_id"], str):
        return f"meta.json 'run_id' is {_shown(meta['run_id'])}, not a string"
    if "rng" in meta and not isinstance(meta["rng"], dict):
        return f"meta.json 'rng' is {_shown(meta['rng'])}, not a generator state"
    layer_rngs = meta.get("layer_rngs", {})
    if not isinstance(layer_rngs, dict) or not all(isinstance(state, dict)
                                                   for state in layer_rngs.values()):
        return (f"meta.json 'layer_rngs' is {_shown(layer_rngs)}, not one generator state per "
                "layer name")
    step_in_epoch = meta.get("step_in_epoch", 0)
    if step_in_epoch > meta["step"]:
        return (f"meta.json 'step_in_epoch' ({step_in_epoch}) is more than 'step' "
                f"({meta['step']})")
    if meta.get("correct", 0) > meta.get("seen", 0):
        return f"meta.json 'correct' ({meta['correct']}) is more than 'seen' ({meta['seen']})"
    if "history" in meta:
        problem = _history_problem(meta["history"], meta["epoch"])
        if problem:
            return problem
    if order is None:
        if step_in_epoch:
            return (f"it stops mid-epoch (step_in_epoch = {step_in_epoch}) but has no "
                    "epoch_order to continue that epoch with")
        return None
    if order.ndim != 1 or order.dtype.kind not in "iu":
        return f"epoch_order is {order.dtype} of shape {order.shape}, not a list of indices"
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        return (f"epoch_order is not a permutation of 0..{len(order) - 1} (an index is "
                "repeated, missing or out of range)")
    return None


def _history_problem(history, epochs):
    from cnntrain.logs import METRIC_KEYS
    if not isinstance(history, list) or len(history) != epochs:
        return (f"meta.json 'history' should list one entry per completed epoch ({epochs}), "
                f"not {_shown(history)}")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or set(METRIC_KEYS) - set(entry):
            missing = sorted(set(METRIC_KEYS) - set(entry)) if isinstance(entry, dict) else []
            return (f"meta.json 'history' entry {i + 1} is not a metrics record"
                    + (f" (it lacks {', '.join(missing)})" if missing else ""))
        if entry["epoch"] != i + 1 or not _whole(entry["epoch"], 1):
            return f"meta.json 'history' entry {i + 1} says epoch {_shown(entry['epoch'])}"
        for key in METRIC_KEYS:
            value = entry[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"meta.json 'history' entry {i + 1} has {key} = {_shown(value)}, not a number"
    return None


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
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """Read and validate a checkpoint; CheckpointError (one line) for anything unusable."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder; give a .npz checkpoint, "
                              "e.g. runs/lenet5/checkpoints/best.npz") from None
    if magic != b"PK\x03\x04":
        # np.load would take any other file for a pickle; refuse it before it gets the chance.
        raise CheckpointError(f"{path}: truncated or not a .npz checkpoint "
                              "(it does not start like a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(f"{path}: holds object arrays, which cnntrain never writes; "
                                  "refusing to load it (pickled data is never read)") from None
        raise CheckpointError(f"{path}: not a cnntrain checkpoint ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: truncated or not a .npz checkpoint ({exc})") from None

    if "meta.json" not in arrays:
        raise CheckpointError(f"{path}: not a cnntrain checkpoint (it has no meta.json entry)")
    try:
        meta = json.loads(arrays.pop("meta.json").tobytes().decode("utf-8"))
        version = int(meta["format_version"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: its meta.json entry is unreadable ({exc})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {version}, newer than this "
                              f"cnntrain reads ({FORMAT_VERSION}); upgrade cnntrain to read it")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its meta.json entry is not a JSON object")
    for key in ("config", "epoch", "step"):
        if key not in meta:
            raise CheckpointError(f"{path}: not a cnntrain checkpoint (meta.json lacks '{key}')")
    order = arrays.pop("epoch_order", None)
    problem = meta_problem(meta, order)
    if problem:
        raise CheckpointError(f"{path}: {problem}; the file was edited or damaged, "
                              "use another checkpoint")

    params, buffers, optimizer = {}, {}, {}
    for name, value in arrays.items():
        if value.dtype.kind not in "fiu":
            raise CheckpointError(f"{path}: entry {name} holds {value.dtype} data, not numbers")
        prefix, _, key = name.partition("/")
        if prefix == "param":
            params[key] = value
        elif prefix == "buffer":
            buffers[key] = value
        elif prefix == "optim":
            optimizer[key] = value
        else:
            raise CheckpointError(f"{path}: unexpected entry '{name}'; not a cnntrain checkpoint")
    if not params:
        raise CheckpointError(f"{path}: holds no parameters; not a cnntrain checkpoint")
    bad = non_finite_entry(params, optimizer, buffers)
    if bad:
        raise CheckpointError(f"{path}: {bad} holds NaN or infinite values (a diverged model), "
                              "so it can be neither evaluated nor continued; use an earlier "
                              "checkpoint or train again with a lower learning rate")
    return Checkpoint(params=params, optimizer=optimizer, buffers=buffers, epoch_order=order,
                      meta=meta)
