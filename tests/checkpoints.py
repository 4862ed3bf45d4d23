"""Helper for tests that need a checkpoint without training: a config's network with its
initial (seeded) weights, saved as cnntrain fit would."""

from cnntrain.checkpoint import Checkpoint, save_checkpoint
from cnntrain.config import config_to_ini, parse_config
from cnntrain.run import build_model, random_streams
from tests.clitools import small_config


def write_checkpoint(path, layers=None, *, config_text=None, seed=0, history=(), **sections):
    """Save the initial network of a config (small_config(layers, **sections) unless
    config_text is given) to `path`; returns (network, cfg)."""
    if config_text is None:
        config_text = small_config(layers, **sections) if layers else small_config(**sections)
    cfg = parse_config(config_text, source="test")
    init_rng, _, _ = random_streams(seed)
    network = build_model(cfg, init_rng)
    epoch = len(history)
    meta = {"epoch": epoch, "step": 0, "history": list(history), "config": config_to_ini(cfg)}
    save_checkpoint(path, Checkpoint(params=network.params, meta=meta))
    return network, cfg
