"""`cnntrain gradcheck` on a config: the network it describes, built in float64 and checked
layer by layer (cnntrain.nn.gradcheck's maths) on the first images of its MNIST split."""

import numpy as np

from cnntrain.nn.gradcheck import (
    DEFAULT_PROBES,
    DEFAULT_TOLERANCE,
    check_image_count,
    check_network,
    check_tolerance,
)
from cnntrain.nn.model import build_network
from cnntrain.runs.build import layer_seeds, prepare_data, random_streams


def check_config(cfg, *, images=8, probes=DEFAULT_PROBES, tolerance=DEFAULT_TOLERANCE,
                 data_dir=None, mirrors=(), progress=False):
    """The network a config describes, in float64 with the weights and layer generators its
    seed gives and the kernels it picks ([train] kernels), checked layer by layer on the first
    `images` training images of the config's MNIST split."""
    check_tolerance(tolerance)
    init_rng, data_rng, _ = random_streams(cfg.train.seed)
    splits = prepare_data(cfg, data_rng, data_dir=data_dir, mirrors=mirrors, progress=progress)
    check_image_count(images, len(splits.train.images))
    network = build_network(cfg.model.layers, rng=init_rng, dtype=np.float64, init=cfg.model.init,
                            kernels=cfg.train.kernels, seeds=layer_seeds(cfg.train.seed))
    return check_network(network, splits.train.images[:images], seed=cfg.train.seed,
                         probes=probes, tolerance=tolerance)
