"""Reading MNIST: the IDX file format, and the normalised train, validation and test arrays.

The files are read from a data folder cnntrain.data.download has filled (or the user, by hand);
nothing here touches the network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnntrain.constants import (
    IDX_UBYTE,
    IMAGE_HW,
    NUM_CLASSES,
    TEST_IMAGES_FILE,
    TEST_LABELS_FILE,
    TRAIN_IMAGES_FILE,
    TRAIN_LABELS_FILE,
)
from cnntrain.errors import DataError

__all__ = ["read_idx", "read_idx_dims", "read_idx_stream", "Split", "MnistSplits",
           "read_mnist", "split_indices", "normalised_split", "field_split", "load_mnist"]

_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}
_GATHER_BLOCK = 512  # images normalised at a time: bounds the temporaries to ~5 MB


# What a damaged file in the data cache should do: the cache can fetch it again.
CACHE_ADVICE = "delete it to re-download"


def read_idx(path):
    """Read an unsigned-byte IDX file of the data cache: uint8 array of the shape its header
    gives. Every violation is a DataError naming the file (read_idx_stream says which)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return read_idx_stream(f, str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found; download MNIST first (ensure_mnist or "
                        f"`cnntrain download`) or place the file there by hand") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e


def read_idx_dims(f, name, advice=CACHE_ADVICE):
    """The dimensions an open IDX file's header declares, checked against the file's size
    before any payload is read, so a header declaring terabytes costs nothing.

    The header is two zero bytes, the element type (0x08 = unsigned byte, the only one MNIST
    uses), the number of dimensions, then one big-endian uint32 per dimension; the payload must
    be exactly their product in bytes. `name` is how messages call the file and `advice` what
    they tell the user to do about a damaged one. Leaves `f` at the payload's start.
    """
    file_size = os.fstat(f.fileno()).st_size
    header = f.read(4)
    if len(header) < 4:
        raise DataError(f"{name}: not an IDX file: only {file_size} bytes, "
                        f"shorter than the 4-byte header")
    if header[:2] != b"\0\0":
        raise DataError(f"{name}: not an IDX file: bad magic number 0x{header.hex()} "
                        f"(expected 0x0000 then type and rank); {advice}")
    kind, ndim = header[2], header[3]
    if kind != IDX_UBYTE:
        what = _IDX_TYPES.get(kind, "unknown")
        raise DataError(f"{name}: element type 0x{kind:02x} ({what}) is not supported; "
                        f"MNIST files hold unsigned bytes (0x08)")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header: {ndim} dimensions declared, "
                        f"file has only {file_size} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    expected = math.prod(dims)
    payload = file_size - 4 - 4 * ndim
    if payload != expected:
        raise DataError(f"{name}: payload is {payload} bytes but dimensions "
                        f"{'x'.join(map(str, dims))} need {expected}; the file is "
                        f"{'truncated' if payload < expected else 'too long'}, {advice}")
    return dims


def read_idx_stream(f, name, advice=CACHE_ADVICE):
    """read_idx on an open file: its header checked (read_idx_dims), then its payload."""
    dims = read_idx_dims(f, name, advice)
    expected = math.prod(dims)
    data = np.fromfile(f, dtype=np.uint8, count=expected)
    if data.size != expected:  # the file shrank while being read
        raise DataError(f"{name}: read {data.size} payload bytes, expected {expected}")
    return data.reshape(dims)


@dataclass(frozen=True)
class Split:
    """One part of the data.

    images: (N, 1, 28, 28) C-contiguous float32 (or float64); labels: (N,) int64 in 0..9.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(f"Split needs images (N, C, H, W) and labels (N,), got "
                             f"{self.images.shape} and {self.labels.shape}")

    def __len__(self):
        return len(self.labels)


@dataclass(frozen=True)
class MnistSplits:
    """Training set, the validation set held out of it, and the test set."""

    train: Split
    val: Split
    test: Split


def _check_count(name, value, limit, what):
    """`value` as an int in 0..limit, or a ValueError naming `name` and `what` limits it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > limit:
        raise ValueError(f"{name}={value} is too large: {what} has only {limit}")
    return value


def _read_pair(images_path, labels_path):
    """(images, labels) of one IDX pair, checked: uint8 (N, 28, 28) and uint8 (N,) in 0..9."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_HW:
        raise DataError(f"{images_path}: expected images of shape (N, 28, 28), "
                        f"got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; delete both to re-download")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {int(labels.max())} is out of range 0..9")
    return images, labels


def _make_split(images, labels, index, lut):
    """The Split of `index` (None = all) of uint8 (N, 28, 28) `images`, mapped through `lut`."""
    n = len(labels) if index is None else len(index)
    out = np.empty((n, 1, *IMAGE_HW), dtype=lut.dtype)
    # The table maps each of the 256 pixel values straight to its normalised value in the
    # target dtype: exact, and no float64 intermediate (numpy would promote uint8 arithmetic
    # with a Python float to float64). Indexing converts indices to intp, 8 bytes a pixel, so
    # go by blocks to keep that temporary small.
    for start in range(0, n, _GATHER_BLOCK):
        stop = min(start + _GATHER_BLOCK, n)
        block = images[start:stop] if index is None else images[index[start:stop]]
        np.take(lut, block, out=out[start:stop, 0])
    y = (labels if index is None else labels[index]).astype(np.int64)
    return Split(out, y)


def read_mnist(data_dir):
    """((train images, labels), (test images, labels)) of a data folder, uint8 as the files
    hold them: (N, 28, 28) and (N,), checked."""
    data_dir = Path(os.path.expanduser(str(data_dir)))
    return (_read_pair(data_dir / TRAIN_IMAGES_FILE, data_dir / TRAIN_LABELS_FILE),
            _read_pair(data_dir / TEST_IMAGES_FILE, data_dir / TEST_LABELS_FILE))


def split_indices(n_train, n_test, *, val_size, train_size, test_size, rng):
    """(train, val, test) indices into the files' n_train training and n_test test images, as
    load_mnist chooses them (see there); test is None for the whole test set. ValueError for
    sizes the files cannot give."""
    val_size = _check_count("val_size", val_size, n_train - 1,
                            f"the training set ({n_train} samples, one must stay for training)")
    train_size = _check_count("train_size", train_size, n_train - val_size,
                              f"what the validation hold-out leaves ({n_train - val_size})")
    test_size = _check_count("test_size", test_size, n_test, "the test set")

    order = rng.permutation(n_train)
    val_index = np.sort(order[:val_size])
    rest = order[val_size:]
    train_index = np.sort(rest[:train_size] if train_size else rest)
    test_index = np.sort(rng.choice(n_test, test_size, replace=False)) if test_size else None
    return train_index, val_index, test_index


def normalised_split(images, labels, index, *, mean, std, dtype):
    """The Split of `index` (None = all) of uint8 (N, 28, 28) images, each pixel p made
    (p / 255 - mean) / std in `dtype` (computed in float64, then rounded once)."""
    lut = ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(dtype)
    return _make_split(images, labels, index, lut)


def field_split(images, labels, index):
    """normalised_split as fields: p / 255 in float64, not normalised (each network that reads
    them applies its own mean and std, as cnntrain.apps.inference.Predictor does, and gets the
    values load_mnist would have given it)."""
    return normalised_split(images, labels, index, mean=0.0, std=1.0, dtype=np.float64)


def load_mnist(data_dir, *, val_size=5000, train_size=0, test_size=0, mean=0.1307, std=0.3081,
               rng, dtype=np.float32):
    """Load MNIST from `data_dir` (already ensured: no network here) into normalised arrays:
    a MnistSplits of train, val and test Splits.

    Pixels p (uint8) become (p / 255 - mean) / std in `dtype` (float32 or float64); images are
    (N, 1, 28, 28) C-contiguous, labels (N,) int64. `val_size` training samples, chosen with
    `rng` (a numpy.random.Generator), are held out as the validation set; `train_size` (0 = all
    the rest) and `test_size` (0 = the whole test set) draw subsets with the same `rng`, so a
    seed fixes every split. Each subset keeps the files' order.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"need a finite mean and a positive std, got mean={mean}, std={std}")

    (train_x, train_y), (test_x, test_y) = read_mnist(data_dir)
    train_index, val_index, test_index = split_indices(
        len(train_y), len(test_y), val_size=val_size, train_size=train_size,
        test_size=test_size, rng=rng)
    scale = {"mean": mean, "std": std, "dtype": dtype}
    return MnistSplits(
        train=normalised_split(train_x, train_y, train_index, **scale),
        val=normalised_split(train_x, train_y, val_index, **scale),
        test=normalised_split(test_x, test_y, test_index, **scale),
    )
