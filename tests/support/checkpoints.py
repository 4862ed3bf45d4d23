"""Helpers for tests that need a checkpoint without a training run: a config's network with
its initial (seeded) weights, or any weights given, saved as cnntrain fit would."""

from cnntrain.config import config_to_ini, parse_config
from cnntrain.runs.build import build_model, layer_seeds, random_streams
from cnntrain.runs.checkpoint import Checkpoint, save_checkpoint
from cnntrain.runs.metrics import METRIC_KEYS
from tests.support.clitools import small_config


def make_network(layers=None, *, config_text=None, seed=0, **sections):
    """(network with initial weights, cfg) of config_text, else small_config(layers, **sections).
    Layers that need randomness (dropout) get their generators from the seed, as in cnntrain fit,
    so the network can also be trained."""
    if config_text is None:
        config_text = small_config(layers, **sections) if layers else small_config(**sections)
    cfg = parse_config(config_text, source="test")
    init_rng, _, _ = random_streams(seed)
    return build_model(cfg, init_rng, seeds=layer_seeds(seed)), cfg


def save_network(path, network, cfg, history=()):
    """Save `network`'s weights and buffers (batch norm's running statistics) with `cfg` as a
    checkpoint after len(history) epochs; each history entry is completed into a whole metrics
    record (missing keys are null), as load_checkpoint demands."""
    records = [{key: entry.get(key) for key in METRIC_KEYS} for entry in history]
    meta = {"epoch": len(history), "step": 0, "history": records,
            "config": config_to_ini(cfg)}
    save_checkpoint(path, Checkpoint(params=network.params, buffers=network.buffers, meta=meta))


def write_checkpoint(path, layers=None, *, config_text=None, seed=0, history=(), **sections):
    """make_network, then save_network to `path`; returns (network, cfg)."""
    network, cfg = make_network(layers, config_text=config_text, seed=seed, **sections)
    save_network(path, network, cfg, history)
    return network, cfg


def save_same_weights(path, network, config_text):
    """Save `network`'s weights and buffers (cast to the config's dtype) under another config,
    e.g. another [run] dir or train.dtype: the same network in a file that is not a copy.
    Returns (the network of that config holding them, its cfg)."""
    cfg = parse_config(config_text, source="test")
    twin = build_model(cfg)
    for target, source in ((twin.params, network.params), (twin.buffers, network.buffers)):
        for name, value in source.items():
            target[name][...] = value
    save_network(path, twin, cfg)
    return twin, cfg


def write_five_class_checkpoint(path):
    """A checkpoint of a network answering 5 classes, not the 10 digits (its stored config says
    'dense 5', which cnntrain refuses on loading): a network no committee may take."""
    network, cfg = make_network(["flatten", "dense 10"])
    params = {key: value[..., :5] for key, value in network.params.items()}
    meta = {"epoch": 0, "step": 0, "history": [],
            "config": config_to_ini(cfg).replace("dense 10", "dense 5")}
    save_checkpoint(path, Checkpoint(params=params, buffers=network.buffers, meta=meta))


def roughen(network, rng):
    """Give `network` the batch-norm scales, offsets and running statistics, and the biases, of
    a trained-looking network (drawn from `rng`), so an evaluation-mode batch norm is exercised
    away from the identity."""
    for name, value in network.params.items():
        if name.endswith((".b", ".beta")):
            value[...] = rng.normal(0, 0.3, value.shape)
        elif name.endswith(".gamma"):
            value[...] = rng.uniform(0.5, 2, value.shape)
    for name, value in network.buffers.items():
        value[...] = rng.uniform(0.5, 2, value.shape) if name.endswith("var") \
            else rng.normal(0, 0.5, value.shape)
