"""Helpers for tests that drive the real CLI on synthetic MNIST: a small config, the data
environment, invoking a command, and checking the one-line errors."""

import json

from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.data import download

# A LeNet-5 with fewer maps: the same layer kinds and shapes, a fraction of the work.
SMALL_LAYERS = ["conv 4 5 pad=2", "relu", "maxpool 2", "conv 8 5", "relu", "maxpool 2",
                "flatten", "dense 32", "relu", "dense 10"]

_SMALL = {"data": {"val_size": 100},
          "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 3}}


def small_config(layers=SMALL_LAYERS, **sections):
    """INI text of a quick run on synthetic MNIST (500 training images: 16 steps of 32 per
    epoch); sections={"train": {"epochs": 3}, "augment": {...}} adds or replaces keys."""
    merged = {name: dict(keys) for name, keys in _SMALL.items()}
    for name, keys in sections.items():
        merged.setdefault(name, {}).update(keys)
    merged.setdefault("model", {})["layers"] = "".join(f"\n    {line}" for line in layers)
    return "".join(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
                   for name, keys in merged.items())


def use_synthetic_mnist(mp, synthetic_mnist, data_dir):
    """Make every command read `synthetic_mnist` from data_dir (a pytest MonkeyPatch `mp`):
    its checksum table replaces the real one, and no mirror setting leaks in."""
    mp.setattr(download, "MNIST_FILES", synthetic_mnist.table)
    mp.setenv("CNNTRAIN_DATA_DIR", str(data_dir))
    mp.delenv("CNNTRAIN_MNIST_MIRRORS", raising=False)


def small_run_env(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    """Synthetic MNIST in place of the real files, the working folder in tmp_path, and a small
    config there whose run folder is tmp_path/runs/small: what the CLI tests' `env` fixtures
    hand their tests."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "small.ini"
    config.write_text(small_config(run={"dir": tmp_path / "runs" / "small"}))
    return {"config": str(config), "run": tmp_path / "runs" / "small", "tmp": tmp_path,
            "data_dir": synthetic_mnist_dir, "table": synthetic_mnist.table}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, code, *fragments):
    """The command failed with `code` and one line 'error: ...' holding every fragment."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def without_timings(history):
    """Each epoch's metrics without its timings, which differ from run to run: what two runs
    that trained alike must agree on."""
    return [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} for m in history]


def logged_metrics(run):
    """without_timings of the run folder's metrics.jsonl."""
    return without_timings(json.loads(line)
                           for line in (run / "metrics.jsonl").read_text().splitlines())
