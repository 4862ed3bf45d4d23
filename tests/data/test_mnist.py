"""cnntrain.data.mnist: IDX parsing and the normalised splits, on synthetic files and on the real
MNIST (downloaded through cnntrain.data.download with the real checksum table)."""

import tracemalloc

import numpy as np
import pytest

from cnntrain.data.download import MNIST_FILES, ensure_mnist
from cnntrain.data.mnist import MnistSplits, Split, load_mnist, read_idx
from cnntrain.errors import DataError
from tests.support.mnist_server import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    idx_bytes,
    make_synthetic_mnist,
)

# --------------------------------------------------------------------------- IDX


def write(path, content):
    path.write_bytes(content)
    return path


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write(tmp_path / "x-idx3-ubyte", idx_bytes(array)))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("content, expected", [
    (b"\x08\x03\x00\x00" + bytes(16), "bad magic number"),
    (b"\x00\x00\x0c\x01" + (2).to_bytes(4, "big") + bytes(8), r"element type 0x0c \(int32\)"),
    (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], "truncated"),
    (idx_bytes(np.zeros((3, 4), np.uint8)) + b"\x00", "too long"),
    (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"), "truncated IDX header"),
    (b"\x00\x00", "shorter than the 4-byte header"),
])
def test_read_idx_rejects_bad_files(tmp_path, content, expected):
    path = write(tmp_path / "broken-idx-ubyte", content)
    with pytest.raises(DataError, match=expected) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nothing-here")


def test_count_mismatch_names_both_files(synthetic_mnist, tmp_path):
    synthetic_mnist.write(tmp_path)
    write(tmp_path / TRAIN_LABELS, idx_bytes(synthetic_mnist.train_labels[:-1]))
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, val_size=10, rng=np.random.default_rng(0))
    message = str(info.value)
    assert str(tmp_path / TRAIN_IMAGES) in message and str(tmp_path / TRAIN_LABELS) in message
    assert "600 images" in message and "599 labels" in message


@pytest.mark.parametrize("name, array, expected", [
    (TEST_IMAGES, np.zeros((5, 28, 27), np.uint8), r"shape \(N, 28, 28\)"),
    (TEST_LABELS, np.full(200, 10, np.uint8), "out of range"),
    (TEST_LABELS, np.zeros((200, 1), np.uint8), r"shape \(N,\)"),
])
def test_load_rejects_wrong_shapes_and_labels(synthetic_mnist, tmp_path, name, array, expected):
    synthetic_mnist.write(tmp_path)
    write(tmp_path / name, idx_bytes(array))
    with pytest.raises(DataError, match=expected) as info:
        load_mnist(tmp_path, val_size=10, rng=np.random.default_rng(0))
    assert str(tmp_path / name) in str(info.value)


# --------------------------------------------------------------------------- splits


def load(folder, synthetic, seed=0, **kwargs):
    kwargs = {"val_size": 100, "rng": np.random.default_rng(seed), **kwargs}
    return load_mnist(folder, **kwargs)


def source_index(images, mean, std):
    """Recover the synthetic sample index stored in pixels (0, 0) and (0, 1)."""
    pixels = np.rint((images[:, 0, 0, :2].astype(np.float64) * std + mean) * 255).astype(int)
    return pixels[:, 0] + 256 * pixels[:, 1]


def test_normalisation_by_hand(synthetic_mnist_dir, synthetic_mnist):
    splits = load(synthetic_mnist_dir, synthetic_mnist, val_size=0)
    raw = synthetic_mnist.train_images
    for i, (r, c) in [(0, (5, 3)), (17, (6, 4)), (599, (27, 27)), (3, (0, 0))]:
        p = int(raw[i, r, c])
        assert splits.train.images[i, 0, r, c] == np.float32((p / 255 - 0.1307) / 0.3081)
    # white is 255: (1 - mean) / std
    assert splits.train.images.max() == np.float32((1 - 0.1307) / 0.3081)
    plain = load(synthetic_mnist_dir, synthetic_mnist, val_size=0, mean=0.0, std=1.0)
    assert plain.train.images.min() >= 0 and plain.train.images.max() == 1.0
    np.testing.assert_array_equal(plain.test.images[:, 0] * np.float32(255),
                                  synthetic_mnist.test_images.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_shapes_and_layout(synthetic_mnist_dir, synthetic_mnist, dtype):
    splits = load(synthetic_mnist_dir, synthetic_mnist, dtype=dtype)
    assert isinstance(splits, MnistSplits)
    for split, n in [(splits.train, 500), (splits.val, 100), (splits.test, 200)]:
        assert isinstance(split, Split) and len(split) == n
        assert split.images.shape == (n, 1, 28, 28)
        assert split.images.dtype == dtype and split.images.flags.c_contiguous
        assert split.labels.shape == (n,) and split.labels.dtype == np.int64


def test_no_float64_copy_for_a_float32_run(tmp_path):
    synthetic = make_synthetic_mnist(n_train=8000, n_test=500, seed=3)
    synthetic.write(tmp_path)
    n_pixels = (8000 + 500) * 28 * 28
    float32_out = 4 * n_pixels
    tracemalloc.start()
    try:
        splits = load(tmp_path, synthetic, val_size=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for split in splits.train, splits.val, splits.test:
        assert split.images.dtype == np.float32
    # The result plus the uint8 files and bounded temporaries; one float64 copy of the
    # training images alone (8 bytes a pixel) would break this budget.
    float64_train = 8 * 8000 * 28 * 28
    assert peak < float32_out + float64_train // 2, (peak, float32_out)


def test_split_sizes_and_subsets(synthetic_mnist_dir, synthetic_mnist):
    splits = load(synthetic_mnist_dir, synthetic_mnist, val_size=50, train_size=300,
                  test_size=80)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (300, 50, 80)
    defaults = load(synthetic_mnist_dir, synthetic_mnist, val_size=0)
    assert (len(defaults.train), len(defaults.val), len(defaults.test)) == (600, 0, 200)


def test_splits_are_deterministic_for_a_seed(synthetic_mnist_dir, synthetic_mnist):
    kwargs = {"val_size": 100, "train_size": 200, "test_size": 50}
    a = load(synthetic_mnist_dir, synthetic_mnist, seed=7, **kwargs)
    b = load(synthetic_mnist_dir, synthetic_mnist, seed=7, **kwargs)
    c = load(synthetic_mnist_dir, synthetic_mnist, seed=8, **kwargs)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
        np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)
    assert not np.array_equal(a.val.images, c.val.images)
    assert not np.array_equal(a.test.images, c.test.images)


def test_train_and_val_are_disjoint_and_keep_labels(synthetic_mnist_dir, synthetic_mnist):
    splits = load(synthetic_mnist_dir, synthetic_mnist, val_size=150, mean=0.0, std=1.0)
    train = source_index(splits.train.images, 0.0, 1.0)
    val = source_index(splits.val.images, 0.0, 1.0)
    assert len(val) == 150 and not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(600))
    # every image still carries its own label
    np.testing.assert_array_equal(splits.train.labels, synthetic_mnist.train_labels[train])
    np.testing.assert_array_equal(splits.val.labels, synthetic_mnist.train_labels[val])
    test = source_index(splits.test.images, 0.0, 1.0)
    np.testing.assert_array_equal(test, np.arange(200))


@pytest.mark.parametrize("kwargs, error, expected", [
    ({"val_size": 600}, ValueError, "val_size=600 is too large"),
    ({"val_size": -1}, ValueError, "val_size must be >= 0"),
    ({"val_size": 2.5}, ValueError, "val_size must be an integer"),
    ({"val_size": 100, "train_size": 501}, ValueError, "train_size=501 is too large"),
    ({"test_size": 201}, ValueError, "test_size=201 is too large"),
    ({"std": 0.0}, ValueError, "positive std"),
    ({"mean": float("nan")}, ValueError, "finite mean"),
    ({"dtype": np.int32}, ValueError, "float32 or float64"),
    ({"rng": 0}, TypeError, "numpy.random.Generator"),
])
def test_bad_load_arguments(synthetic_mnist_dir, synthetic_mnist, kwargs, error, expected):
    with pytest.raises(error, match=expected):
        load(synthetic_mnist_dir, synthetic_mnist, **kwargs)


def test_load_without_files_says_how_to_get_them(synthetic_mnist, tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        load(tmp_path, synthetic_mnist)
    assert str(tmp_path / TRAIN_IMAGES) in str(info.value)


# --------------------------------------------------------------------------- the real MNIST

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_end_to_end(real_mnist_dir):
    """Downloaded through the real code with the real checksum table (fixture), then loaded."""
    for name, (size, _sha) in MNIST_FILES.items():
        assert (real_mnist_dir / name).stat().st_size == size
    assert np.bincount(read_idx(real_mnist_dir / TRAIN_LABELS)).tolist() == TRAIN_COUNTS
    assert np.bincount(read_idx(real_mnist_dir / TEST_LABELS)).tolist() == TEST_COUNTS
    assert ensure_mnist(real_mnist_dir, [], progress=False)[TRAIN_IMAGES].is_file()

    splits = load_mnist(real_mnist_dir, rng=np.random.default_rng(0))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    counts = np.bincount(np.concatenate([splits.train.labels, splits.val.labels]))
    assert counts.tolist() == TRAIN_COUNTS
    assert np.bincount(splits.test.labels).tolist() == TEST_COUNTS
    # the default mean/std are MNIST's own: the normalised training set is ~N(0, 1)
    assert abs(float(splits.train.images.mean())) < 0.01
    assert abs(float(splits.train.images.std()) - 1) < 0.01
