"""Time the batch-norm and dropout layers against PyTorch's, forward plus backward, side by side.

    python benchmarks/bench_norm.py --config configs/bn-aug.ini --threads 2

For every batchnorm and dropout line of the config, at the shape its input has there (batch
--batch, float32, the batch-innermost layout the fast convolutions hand over): one training
forward and backward of our layer on each kernel path (fast, reference), and of the torch.nn
module it names (torch_module), in alternating rounds; median milliseconds per call and the
ratio torch / ours (above 1: ours is faster). Shared machines are noisy: compare figures from
one run only, and trust runs whose rounds agree.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import pin_threads  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/bn-aug.ini")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS and torch threads (default: the CPUs)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=3)
    return ap.parse_args()


ARGS = parse_args()
THREADS = pin_threads(ARGS.threads, "bench_norm.py")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnntrain.config import load_config  # noqa: E402
from cnntrain.nn.model import build_network  # noqa: E402
from cnntrain.nn.norm import BatchNorm, Dropout  # noqa: E402
from cnntrain.runs.build import layer_seeds  # noqa: E402


def ms(call):
    """Median milliseconds per call, after two untimed calls."""
    call(), call()
    times = []
    for _ in range(ARGS.repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def batch_innermost(a):
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2) if a.ndim == 4 else a


def cases(cfg):
    """(name, our layer on each path, its input) for each batchnorm and dropout of the config."""
    networks = {kernels: build_network(cfg.model.layers, rng=np.random.default_rng(0),
                                       kernels=kernels, seeds=layer_seeds(0))
                for kernels in ("fast", "reference")}
    shape, rng = networks["fast"].input_shape, np.random.default_rng(1)
    for index, (name, layer) in enumerate(networks["fast"].layers):
        if isinstance(layer, (BatchNorm, Dropout)):
            x = batch_innermost(rng.standard_normal((ARGS.batch,) + shape).astype(np.float32))
            yield name, {k: net.layers[index][1] for k, net in networks.items()}, x
        shape = layer.output_shape(shape)


def ours(layer, x):
    def call():
        y = layer.forward(x, train=True)
        layer.backward(y)
    return call


def theirs(module, x):
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    module.train()

    def call():
        y = module(tx)
        y.backward(y.detach())
    return call


def main():
    torch.set_num_threads(THREADS)
    cfg = load_config(ARGS.config)
    print(f"{ARGS.config}: batch {ARGS.batch}, float32, {THREADS} threads, torch "
          f"{torch.__version__}; "
          f"ms per forward + backward, median of {ARGS.repeat} calls, {ARGS.rounds} rounds")
    print(f"{'layer':<12}{'input':>16}{'fast':>9}{'reference':>11}{'torch':>9}  torch/fast by "
          "round")
    for name, layer, x in cases(cfg):
        module = layer["fast"].torch_module(torch.nn)
        rounds = []
        for _ in range(ARGS.rounds):
            rounds.append((ms(ours(layer["fast"], x)), ms(ours(layer["reference"], x)),
                           ms(theirs(module, x))))
        fast_ms, ref_ms, torch_ms = (statistics.median(r[i] for r in rounds) for i in range(3))
        ratios = " ".join(f"{t / f:.2f}" for f, _, t in rounds)
        print(f"{name:<12}{' x '.join(map(str, x.shape[1:])):>16}{fast_ms:>9.3f}{ref_ms:>11.3f}"
              f"{torch_ms:>9.3f}  {ratios}")


if __name__ == "__main__":
    main()
