"""Shared fixtures: data and servers. Helpers they build on live in
tests/support/mnist_server.py."""

import os
from pathlib import Path

import pytest

from tests.support.clitools import small_config, use_synthetic_mnist
from tests.support.mnist_server import MnistServer, make_synthetic_mnist
from tests.support.optional import unavailable

# The real MNIST folder laid beside the repository (the repo is cloned as a sibling of shared/).
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "mnist"


def _no_proxy_for_loopback(mp: pytest.MonkeyPatch) -> None:
    """requests honours HTTP(S)_PROXY even for 127.0.0.1; the loopback servers must bypass it."""
    for var in ("NO_PROXY", "no_proxy"):
        hosts = [h.strip() for h in os.environ.get(var, "").split(",") if h.strip()]
        hosts += [h for h in ("127.0.0.1", "localhost") if h not in hosts]
        mp.setenv(var, ",".join(hosts))


# --------------------------------------------------------------------------- synthetic MNIST


@pytest.fixture(scope="session")
def synthetic_mnist():
    """A small deterministic MNIST look-alike (tests.support.mnist_server.SyntheticMnist):
    600 train, 200 test; pass `.table` as `files=` to ensure_mnist."""
    return make_synthetic_mnist()


@pytest.fixture
def synthetic_mnist_dir(tmp_path, synthetic_mnist):
    """A data folder holding the synthetic files, decompressed, ready for load_mnist."""
    return synthetic_mnist.write(tmp_path / "synthetic-mnist")


@pytest.fixture
def small_config_file(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    """tmp_path/small.ini, a small network's config (tests.support.clitools.small_config),
    with the synthetic MNIST standing in for the real files."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    path = tmp_path / "small.ini"
    path.write_text(small_config())
    return path


@pytest.fixture
def mnist_server(synthetic_mnist, monkeypatch):
    """A loopback MnistServer serving the synthetic files as .gz under any path prefix;
    faults are added per test (server.add_fault) and go away with it."""
    _no_proxy_for_loopback(monkeypatch)
    with MnistServer(files=synthetic_mnist.gz) as server:
        yield server


# --------------------------------------------------------------------------- the real MNIST


@pytest.fixture(scope="session")
def real_mnist_mirror():
    """Base URL of a mirror serving the real MNIST .gz files.

    CNNTRAIN_TEST_MNIST_MIRROR if set (CI serves ../shared/mnist there); else a loopback
    server over ../shared/mnist if it exists; else skip, or fail when
    CNNTRAIN_REQUIRE_REAL_MNIST=1.
    """
    with pytest.MonkeyPatch.context() as mp:
        _no_proxy_for_loopback(mp)
        url = os.environ.get("CNNTRAIN_TEST_MNIST_MIRROR", "").strip()
        if url:
            yield url
        elif SHARED_MNIST.is_dir():
            with MnistServer(directory=SHARED_MNIST) as server:
                yield server.base_url
        else:
            reason = (f"no real MNIST: CNNTRAIN_TEST_MNIST_MIRROR is unset and {SHARED_MNIST} "
                      f"does not exist")
            unavailable("REAL_MNIST", reason)


@pytest.fixture(scope="session")
def real_mnist_dir(real_mnist_mirror, tmp_path_factory):
    """A data folder with the real MNIST, downloaded once per session through ensure_mnist
    (real checksum table) from real_mnist_mirror."""
    from cnntrain.data.download import ensure_mnist

    data_dir = tmp_path_factory.mktemp("real-mnist")
    ensure_mnist(data_dir, [real_mnist_mirror], progress=False)
    return data_dir


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="session")
def digit_checkpoint(real_mnist_dir, tmp_path_factory):
    """best.npz of a LeNet-5 trained here on the real MNIST: configs/quick.ini on 12,000
    training images for 3 epochs (about 97% test accuracy on the first 2,000 test images, a
    few seconds). For tests that need a model that reads real handwriting."""
    from cnntrain.config import load_config
    from cnntrain.runs.fit import fit

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "quick.ini",
                      ["data.train_size=12000", "data.test_size=2000", "train.epochs=3"])
    summary = fit(cfg, out_dir=tmp_path_factory.mktemp("digit-run") / "quick",
                  quiet=True, progress=False, data_dir=real_mnist_dir, echo=lambda line: None)
    return Path(summary["checkpoints"]["best"])
