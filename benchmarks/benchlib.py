"""What the benchmarks share: pinning thread counts, index batches as the trainer draws them,
and one training step of a config's network and optimizer.

Importing this module imports no numpy, so a script can call pin_threads() first: BLAS and
OpenMP read their thread counts once, when they load.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def pin_threads(threads, script):
    """Set BLAS/OpenMP threads (default: the CPUs this process may use) before numpy loads."""
    threads = threads or len(os.sched_getaffinity(0))
    if "numpy" in sys.modules:
        sys.exit(f"{script} must set the thread counts before numpy is imported; run it as a "
                 "script")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return threads


class Batches:
    """Index batches as the trainer draws them: a shuffled order per pass, then a gather."""

    def __init__(self, n, batch, rng):
        self.n, self.batch, self.rng = n, batch, rng
        self.order, self.pos = rng.permutation(n), 0

    def next(self):
        if self.pos + self.batch > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        index = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return index


class TrainStep:
    """forward, loss, backward and SGD step of the config's network: step(x, y) -> loss."""

    def __init__(self, cfg, dtype, seed):
        import numpy as np

        from cnntrain.nn.losses import SoftmaxCrossEntropy
        from cnntrain.nn.model import build_network
        from cnntrain.runs.build import build_optimizer, layer_seeds

        self.net = build_network(cfg.model.layers, rng=np.random.default_rng(seed), dtype=dtype,
                                 init=cfg.model.init, kernels=cfg.train.kernels,
                                 seeds=layer_seeds(seed))
        self.opt = build_optimizer(cfg, self.net)
        self.loss = SoftmaxCrossEntropy(cfg.train.label_smoothing)

    def __call__(self, x, y):
        loss = self.loss.forward(self.net.forward(x), y)
        self.net.backward(self.loss.backward())
        self.opt.step(self.net.grads)
        return loss


def real_mnist(mirror, cfg, dtype):
    """MNIST the way `cnntrain fit` gets it: fetched once from `mirror` (a folder or base URL
    holding the four files) into the usual data folder, verified, loaded and normalised with
    the config's mean and std; no validation hold-out. Returns (splits, data folder)."""
    import numpy as np

    from cnntrain.data.download import ensure_mnist
    from cnntrain.data.mirrors import resolve_data_dir
    from cnntrain.data.mnist import load_mnist

    folder = resolve_data_dir(None, cfg.data.dir or None)
    ensure_mnist(folder, [mirror], progress=False)
    splits = load_mnist(folder, val_size=0, mean=cfg.data.mean, std=cfg.data.std,
                        rng=np.random.default_rng(0), dtype=dtype)
    return splits, folder
