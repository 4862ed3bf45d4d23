"""The memory estimate (cnntrain.nn.footprint) and the config-time refusal of networks that cannot
fit: by hand, against NumPy's measured peak, and through `cnntrain info` and `cnntrain fit`."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cnntrain.nn import footprint
from cnntrain.nn.model import (
    LayerLineError,
    build_network,
    check_layers,
    check_memory,
    parse_layers,
    plan_layers,
)
from tests.support.clitools import assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "quick.ini"
GiB = 1 << 30
LENET = ("conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
         "dense 120 / relu / dense 84 / relu / dense 10")


def test_estimate_by_hand():
    # input (1, 4, 4); conv 2 3 -> (2, 2, 2), 2*9 + 2 = 20 parameters, its columns hold
    # 9 values for each of the 4 positions; flatten -> (8,); dense 3: 8*3 + 3 = 27 parameters,
    # reading its 8 inputs once.
    shapes = [((2, 2, 2), 20), ((8,), 0), ((3,), 27)]
    est = footprint.estimate((1, 4, 4), shapes, batch_size=10, eval_batch_size=7, itemsize=8)
    kept = [36, 8, 8]  # conv: its columns; flatten: its output; dense: its input
    assert est.layer_kept == tuple(kept) and est.layer_params == (20, 0, 27)
    peak = max(16 + 36 + 8, 8 + 0 + 8, 8 + 8 + 3)  # input + unrolled + output at one layer
    copies = footprint.PARAMETER_COPIES
    unrolled = 36 + 8
    assert est.total == 8 * (copies * 47 + 10 * (16 + sum(kept)) + 7 * unrolled + 10 * peak)
    assert est.layer_bytes == tuple(8 * (copies * p + 10 * k) for p, k in zip((20, 0, 27), kept))
    assert est.largest == 0


@pytest.mark.parametrize("text,batch", [
    (LENET, 64),
    ("conv 32 3 pad=1 / relu / maxpool 2 / flatten / dense 10", 128),
    ("flatten / dense 3000 / relu / dense 10", 32),
])
def test_estimate_is_close_to_the_measured_peak(text, batch):
    est = check_memory(parse_layers(text), batch_size=batch, eval_batch_size=300,
                       available=1 << 62)
    measured = footprint.measured_peak(text, batch, eval_images=300)
    assert 0.9 <= est.total / measured <= 2.0, (est.total, measured)


def test_shape_inference_allocates_nothing_and_agrees_with_the_built_network():
    text = ("conv 6 5 pad=2 stride=2 / tanh / meanpool 2 / conv 4 3x2 / maxpool 2 stride=1 / "
            "flatten / dense 10")
    built = build_network(text, rng=np.random.default_rng(0)).summary()
    assert plan_layers(parse_layers(text)) == [(r.output_shape, r.params) for r in built]
    tracemalloc.start()
    try:
        shapes = plan_layers(parse_layers("flatten / dense 100000000000 / dense 10"))
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    assert shapes[1] == ((100000000000,), 784 * 100000000000 + 100000000000)


def test_the_limit_decides_and_the_error_names_layer_and_bytes():
    lenet = LENET
    need = check_memory(parse_layers(lenet), batch_size=64, eval_batch_size=1000,
                        available=1 << 62).total
    check_layers(lenet, batch_size=64, eval_batch_size=1000, available=need)  # just fits
    with pytest.raises(LayerLineError) as caught:
        check_layers(lenet, batch_size=64, eval_batch_size=1000, available=need - 1)
    error = caught.value
    assert (error.line_no, error.line) == (1, "conv 6 5 pad=2")  # the widest activations
    assert "\n" not in str(error)
    assert f"needs about {footprint.format_bytes(need)} at batch 64 in float32" in error.reason
    assert f"this machine has {footprint.format_bytes(need - 1)}" in error.reason
    assert "lower [train] batch_size" in error.reason
    # float64 doubles every byte
    with pytest.raises(LayerLineError, match="in float64"):
        check_layers(lenet, batch_size=64, eval_batch_size=1000, dtype="float64",
                     available=need + 1)


def test_available_memory_is_at_most_the_physical_memory():
    physical = footprint.available_memory()
    import os
    assert 0 < physical <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_format_bytes():
    assert footprint.format_bytes(512) == "512 bytes"
    assert footprint.format_bytes(1536) == "1.5 KiB"
    assert footprint.format_bytes(3 * GiB) == "3.0 GiB"


# --- through the command line ----------------------------------------------------------------

ISSUE_EXAMPLES = {
    "flatten / dense 100000000000 / dense 10": "line 2 'dense 100000000000': too large for memory",
    "conv 6 5 pad=100000 / maxpool 100000 / flatten / dense 10":
        "line 1 'conv 6 5 pad=100000': too large for memory",
}


@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(footprint, "available_memory", lambda: 8 * GiB)


@pytest.mark.parametrize("command", ["info", "fit"])
@pytest.mark.parametrize("layers", ISSUE_EXAMPLES)
def test_info_and_fit_refuse_networks_too_large_for_memory(eight_gib, tmp_path, monkeypatch,
                                                         command, layers):
    monkeypatch.chdir(tmp_path)
    args = [command, "--config", QUICK, "--set", f"model.layers={layers}"]
    if command == "fit":
        args += ["--out", tmp_path / "run"]
    result = invoke(*args)
    assert_one_line_error(result, 2, f"--set model.layers={layers}: {ISSUE_EXAMPLES[layers]}",
                          "but this machine has 8.0 GiB", "at batch 64 in float32")
    assert not (tmp_path / "run").exists()


def test_a_huge_batch_is_refused_and_blamed_on_the_batch(monkeypatch):
    monkeypatch.setattr(footprint, "available_memory", lambda: 4 * GiB)
    assert invoke("info", "--config", QUICK).exit_code == 0
    result = invoke("info", "--config", QUICK, "--set", "data.train_size=50000",
                    "--set", "train.batch_size=50000")
    assert_one_line_error(result, 2, "too large for memory", "at batch 50000",
                          "lower [train] batch_size")
    # a batch larger than the training set is only ever as large as the set
    assert invoke("info", "--config", QUICK, "--set", "train.batch_size=1000000").exit_code == 0


@pytest.mark.parametrize("layers", [
    "conv 6 5 pad=100000000000000000000 / flatten / dense 10",
    "conv 100000000000000000000 5 / flatten / dense 10",
    "conv 6 100000000000000000000x1 / flatten / dense 10",
    "flatten / dense 99999999999999999999999 / dense 10",
    "maxpool 100000 / flatten / dense 10",
    "conv 3 1 pad=3000000000 / conv 3 1 pad=3000000000 / flatten / dense 10",
])
def test_absurd_sizes_are_one_line_errors(layers):
    result = invoke("info", "--config", QUICK, "--set", f"model.layers={layers}")
    assert_one_line_error(result, 2, f"--set model.layers={layers}: line ")
