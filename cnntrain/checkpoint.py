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
import zipfile
from dataclasses import dataclass, field

import numpy as np

from cnntrain.errors import CheckpointError
from cnntrain.fileio import atomic_writer

FORMAT_VERSION = 1


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


def save_checkpoint(path, ckpt):
    """Write ckpt to path atomically. np.savez is given an open file: with a file name it
    would append '.npz' and the rename would miss it."""
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION)
    arrays = {f"param/{name}": np.ascontiguousarray(value) for name, value in ckpt.params.items()}
    arrays.update({f"buffer/{name}": np.ascontiguousarray(value)
                   for name, value in ckpt.buffers.items()})
    arrays.update({f"optim/{name}": value for name, value in ckpt.optimizer.items()})
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
    for key in ("config", "epoch", "step"):
        if key not in meta:
            raise CheckpointError(f"{path}: not a cnntrain checkpoint (meta.json lacks '{key}')")

    params, buffers, optimizer, order = {}, {}, {}, arrays.pop("epoch_order", None)
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
    return Checkpoint(params=params, optimizer=optimizer, buffers=buffers, epoch_order=order,
                      meta=meta)
