"""Helpers for tests that need a checkpoint without a training run: a config's network with
its initial (seeded) weights, or any weights given, saved as cnntrain fit would."""

from cnntrain.checkpoint import Checkpoint, save_checkpoint
from cnntrain.config import config_to_ini, parse_config
from cnntrain.run import build_model, random_streams
from tests.clitools import small_config


def make_network(layers=None, *, config_text=None, seed=0, **sections):
    """(network with initial weights, cfg) of config_text, else small_config(layers, **sections)."""
    if config_text is None:
        config_text = small_config(layers, **sections) if layers else small_config(**sections)
    cfg = parse_config(config_text, source="test")
    init_rng, _, _ = random_streams(seed)
    return build_model(cfg, init_rng), cfg


def save_network(path, network, cfg, history=()):
    """Save `network`'s weights with `cfg` as a checkpoint after len(history) epochs."""
    meta = {"epoch": len(history), "step": 0, "history": list(history),
            "config": config_to_ini(cfg)}
    save_checkpoint(path, Checkpoint(params=network.params, meta=meta))


def write_checkpoint(path, layers=None, *, config_text=None, seed=0, history=(), **sections):
    """make_network, then save_network to `path`; returns (network, cfg)."""
    network, cfg = make_network(layers, config_text=config_text, seed=seed, **sections)
    save_network(path, network, cfg, history)
    return network, cfg
