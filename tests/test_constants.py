"""cnntrain.constants: the facts several modules share, kept once and numpy-free."""

import subprocess
import sys

import pytest

from cnntrain import constants
from cnntrain.config import parse_config
from cnntrain.configschema import SCHEMA
from cnntrain.data.download import MNIST_FILES
from cnntrain.nn.init import init_weights
from cnntrain.nn.optim import LRSchedule


def test_importing_it_pulls_in_no_numpy():
    code = "import sys, cnntrain.constants; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_checksum_table_covers_exactly_the_named_files():
    assert sorted(MNIST_FILES) == sorted(constants.MNIST_FILE_NAMES)
    # An IDX file is a 4-byte header, 4 bytes per dimension, then one byte per element.
    sizes = {name: size for name, (size, _) in MNIST_FILES.items()}
    h, w = constants.IMAGE_HW
    assert sizes[constants.TRAIN_IMAGES_FILE] == 16 + constants.MNIST_TRAIN_IMAGES * h * w
    assert sizes[constants.TEST_LABELS_FILE] == 8 + constants.MNIST_TEST_IMAGES


@pytest.mark.parametrize("schedule", constants.SCHEDULES)
def test_every_schedule_the_config_accepts_is_one_the_optimizer_runs(schedule):
    cfg = parse_config(f"[model]\nlayers = flatten\n    dense 10\n"
                       f"[train]\nlr_schedule = {schedule}\n")
    assert cfg.train.lr_schedule == schedule
    assert LRSchedule(0.1, schedule, epochs=2, steps_per_epoch=3)(0) == pytest.approx(0.1)
    assert SCHEMA["train"]["lr_schedule"].kind.options == constants.SCHEDULES


@pytest.mark.parametrize("scheme", constants.INIT_SCHEMES)
def test_every_init_scheme_the_config_accepts_is_one_init_draws(scheme):
    import numpy as np
    cfg = parse_config(f"[model]\nlayers = flatten\n    dense 10\ninit = {scheme}\n")
    assert cfg.model.init == scheme
    weights = init_weights((4, 5), 5, 4, rng=np.random.default_rng(0), scheme=scheme)
    assert weights.std() > 0
    assert SCHEMA["model"]["init"].kind.options == ("auto",) + constants.INIT_SCHEMES
