"""Building a run: a config turned into data, network and optimizer, and a checkpoint's
network rebuilt from the config it stores.

This is where a Config is read; everything it builds takes plain arguments.
"""

import numpy as np

from cnntrain.config import parse_config
from cnntrain.constants import MNIST_TRAIN_IMAGES
from cnntrain.data.download import fetch_mnist
from cnntrain.data.mnist import load_mnist
from cnntrain.errors import ConfigError
from cnntrain.nn.model import build_network
from cnntrain.nn.optim import SGD
from cnntrain.runs.checkpoint_checks import Layout, Need
from cnntrain.runs.checkpoint_reader import load_checkpoint


def random_streams(seed):
    """Three generators from one seed: weights, data split, training (shuffles, augmentation).

    Separate streams keep the split independent of the network's size, so `eval` can rebuild
    the validation split from the seed alone, and a resumed run finds its split unchanged.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def layer_seeds(seed):
    """The seed's fourth child stream (after random_streams' three), from which each layer
    that needs randomness gets a stream of its own (model.layer_generator)."""
    return np.random.SeedSequence(seed, spawn_key=(3,))


def prepare_data(cfg, data_rng, *, data_dir=None, mirrors=(), progress=True):
    """Download (if needed), verify and load MNIST as the config asks."""
    folder, _ = fetch_mnist(data_dir, mirrors, config_dir=cfg.data.dir or None,
                            config_mirrors=cfg.data.mirrors, progress=progress)
    return load_mnist(folder, val_size=cfg.data.val_size, train_size=cfg.data.train_size,
                      test_size=cfg.data.test_size, mean=cfg.data.mean, std=cfg.data.std,
                      rng=data_rng, dtype=np.dtype(cfg.train.dtype))


def build_augmenter(cfg):
    """The config's [augment] as a callable (images, rng) -> images, or None when all are off."""
    a = cfg.augment
    if not (a.translate or a.rotate or a.scale or a.elastic_alpha):
        return None
    from cnntrain.data.augment import Augmenter
    # Pixels moved in from outside the image are background: 0 before normalisation.
    return Augmenter(translate=a.translate, rotate=a.rotate, scale=a.scale,
                     elastic_alpha=a.elastic_alpha, elastic_sigma=a.elastic_sigma,
                     fill=-cfg.data.mean / cfg.data.std)


def build_model(cfg, init_rng=None, seeds=None):
    """The network the config describes (zero weights without a generator, to be loaded;
    seeds: layer_seeds, for layers that need randomness in training)."""
    return build_network(cfg.model.layers, rng=init_rng, dtype=np.dtype(cfg.train.dtype),
                         init=cfg.model.init, kernels=cfg.train.kernels, seeds=seeds)


def check_batches(network, n_train, batch_size):
    """ConfigError if a training batch would be too small for a layer (batch norm after a
    dense layer needs two examples): checked before training rather than failing mid-epoch."""
    last = n_train % batch_size or batch_size
    smallest = min(batch_size, last, n_train)
    for (name, layer), line in zip(network.layers, network.lines):
        if smallest < layer.min_batch:
            raise ConfigError(
                f"layer {name} ('{line}') needs at least {layer.min_batch} images in every "
                f"training batch, but with {n_train} training images and batch_size "
                f"{batch_size} a batch holds {smallest}; change [train] batch_size or "
                "[data] train_size")


def build_optimizer(cfg, network):
    """SGD over the network's parameters with the config's momentum and weight decay."""
    t = cfg.train
    return SGD(network.params, t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
               nesterov=t.nesterov, decayed=network.decayed(t.decay_biases))


def config_from_checkpoint(ckpt, source, overrides=()):
    return stored_config(ckpt.meta, source, overrides)


def stored_config(meta, source, overrides=()):
    """The Config a checkpoint's meta.json holds (source: the checkpoint, for messages)."""
    return parse_config(meta["config"], source=f"{source} (its stored config)", overrides=overrides)


class NetworkLayout:
    """What the network of a checkpoint's own config needs of its members, for
    load_checkpoint's `layout`, which calls it with meta.json before any array is read.

    Parameters and buffers have the shapes of the network the config builds, in its
    train.dtype; the optimizer's velocities (optim.SGD.state_dict: 'NAME.v') have their
    parameters' shapes and are needed to resume only; epoch_order (int64, as
    save_checkpoint writes it) may be absent and holds the training split's indices.
    The config and the network it built are kept (cfg, network): the parameters and
    buffers are read straight into that network's arrays.
    """

    def __init__(self, path, *, resume=False):
        self.path, self.resume = path, resume
        self.cfg = self.network = None

    def __call__(self, meta):
        self.cfg = stored_config(meta, self.path)
        # Building the network allocates its weights (zeros), which is what loading them
        # needs anyway; the config check has refused networks too large for this machine.
        self.network = build_model(self.cfg)
        dtype = self.network.dtype
        needs = {f"param/{name}": Need(value.shape, dtype, into=value)
                 for name, value in self.network.params.items()}
        needs.update({f"buffer/{name}": Need(value.shape, value.dtype, into=value)
                      for name, value in self.network.buffers.items()})
        needs.update({f"optim/{name}.v": Need(value.shape, dtype, optional=not self.resume)
                      for name, value in self.network.params.items()})
        needs["epoch_order"] = Need((_training_size(self.cfg),), np.int64, optional=True)
        return Layout(needs, needed_by=f"its config (train.dtype is {dtype})")


def _training_size(cfg):
    """The training split's size, or the range it lies in: data.train_size when set; else
    what the training file leaves after the validation hold-out, which only the data itself
    tells (_restore checks that), at most what MNIST's (checksum-verified) file leaves."""
    return cfg.data.train_size or range(1, MNIST_TRAIN_IMAGES - cfg.data.val_size + 1)


def load_network(path):
    """(checkpoint, its stored config, its network holding its weights) of the checkpoint at
    path, every member checked against that network before it is read into it;
    CheckpointError / ConfigError (one line) if unusable."""
    layout = NetworkLayout(path)
    ckpt = load_checkpoint(path, layout)
    # Arrays stored in another byte order were read into fresh arrays; copy those in.
    for target, arrays in ((layout.network.params, ckpt.params),
                           (layout.network.buffers, ckpt.buffers)):
        for name, value in arrays.items():
            if value is not target[name]:
                target[name][...] = value
    return ckpt, layout.cfg, layout.network


# What a resume may change: how the rest of the run is trained and scored. Everything else
# (the data, its split and normalisation, the seed, the network, the precision) is what the
# saved position means, and a changed batch size moves a mid-epoch position's batches.
