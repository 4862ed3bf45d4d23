"""The product as a user runs it: configs/quick.ini on the real MNIST, downloaded through the
real code from a loopback mirror of ../shared/mnist, then scored by `cnntrain eval --json`."""

import json
from pathlib import Path

from click.testing import CliRunner

from cnntrain.cli import cli

REPO = Path(__file__).resolve().parents[2]
QUICK_MIN_TEST_ACCURACY = 0.95  # README: quick.ini reaches 96.4-97.2% over seeds 0-7


def test_quick_config_on_real_mnist_reaches_its_stated_accuracy(real_mnist_mirror, tmp_path,
                                                                monkeypatch):
    monkeypatch.delenv("CNNTRAIN_DATA_DIR", raising=False)
    monkeypatch.delenv("CNNTRAIN_MNIST_MIRRORS", raising=False)
    data_dir, run_dir = tmp_path / "mnist", tmp_path / "run"
    runner = CliRunner()
    fit = runner.invoke(cli, ["fit", "--config", str(REPO / "configs" / "quick.ini"), "--quiet",
                              "--out", str(run_dir), "--data-dir", str(data_dir),
                              "--mirror", real_mnist_mirror])
    assert fit.exit_code == 0, fit.output
    assert "epoch 3/3 " in fit.stdout
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.startswith(".")) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]

    result = runner.invoke(cli, ["eval", str(run_dir / "checkpoints" / "best.npz"), "--json",
                                 "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 10000
    assert report["accuracy"] >= QUICK_MIN_TEST_ACCURACY
    assert sum(map(sum, report["confusion"])) == 10000
