"""Time each kernel of the fast path against its reference kernel, and the fast path's choices.

    python benchmarks/bench_kernels.py --threads 1

1. Every kernel a LeNet-5 training step calls, at its real shapes (batch 64, float32):
   milliseconds per call in cnntrain.nn.fast and in cnntrain.nn.functional, and their ratio.
2. The choices inside cnntrain.nn.fast, each against the plain alternative it replaced: conv1's
   product whole or in pieces, the kernel gradient in either orientation, the bias gradient
   as ndarray.sum or as a product with ones, and the evaluation chunk size.

Medians of --repeat calls after a warm-up. docs/speed.md keeps the figures with
this command; shared machines are noisy, so compare numbers from one run only.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import pin_threads  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the CPUs)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=40, help="timed calls per measurement")
    return ap.parse_args()


ARGS = parse_args()
THREADS = pin_threads(ARGS.threads, "bench_kernels.py")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cnntrain.nn import fast, functional  # noqa: E402
from cnntrain.nn.model import build_network  # noqa: E402

LENET5 = ("conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
          "dense 120 / relu / dense 84 / relu / dense 10")


def ms(call, repeat=None):
    """Median milliseconds per call of call(), after two untimed calls."""
    call(), call()
    times = []
    for _ in range(repeat or ARGS.repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def kernel_cases(rng, N):
    """(layer, function name, args and keywords for fast, args and keywords for the reference
    path), at LeNet-5's shapes."""
    f32 = np.float32

    def normal(*shape):
        return rng.standard_normal(shape).astype(f32)

    cases = []
    for name, (C, H, F, pad) in {"conv1": (1, 28, 6, 2), "conv2": (6, 14, 16, 0)}.items():
        x, W, b = normal(N, C, H, H), normal(F, C, 5, 5), normal(F)
        work = {}
        y, cols_fast = fast.conv_forward(x, W, b, 1, pad, work=work)
        _, cols_ref = functional.conv_forward(x, W, b, 1, pad)
        dout_fast = y.copy(order="K")  # the fast path's batch-innermost layout
        dout_ref = np.ascontiguousarray(y)
        cases += [
            (name, "conv_forward", (x, W, b, 1, pad), {"work": work}, (x, W, b, 1, pad), {}),
            (name, "conv_kernel_grad", (cols_fast, dout_fast, W.shape), {},
             (cols_ref, dout_ref, W.shape), {}),
            (name, "conv_bias_grad", (dout_fast,), {}, (dout_ref,), {}),
        ]
        if name == "conv2":
            cases.append((name, "conv_input_grad", (dout_fast, W, x.shape, 1, pad),
                          {"work": {}}, (dout_ref, W, x.shape, 1, pad), {}))
    x = normal(N, 6, 28, 28)
    y, argmax_fast = fast.maxpool2d(x, 2, 2)
    _, argmax_ref = functional.maxpool2d(x, 2, 2)
    dout = normal(*y.shape)
    cases += [
        ("maxpool1", "maxpool2d", (x, 2, 2), {}, (x, 2, 2), {}),
        ("maxpool1", "maxpool2d_backward", (dout, argmax_fast, x.shape, 2, 2), {},
         (dout, argmax_ref, x.shape, 2, 2), {}),
        ("meanpool1", "meanpool2d", (x, 2, 2), {}, (x, 2, 2), {}),
        ("meanpool1", "meanpool2d_backward", (dout, x.shape, 2, 2), {}, (dout, x.shape, 2, 2), {}),
        ("tanh1", "tanh_backward", (x, x), {}, (x, x), {}),
        ("sigmoid1", "sigmoid_backward", (x, x), {}, (x, x), {}),
    ]
    x_flat, W, dout = normal(N, 400), normal(400, 120), normal(N, 120)
    cases.append(("dense1", "dense_backward", (dout, x_flat, W), {}, (dout, x_flat, W), {}))
    return cases


def kernels_table(rng, N):
    print(f"1. each kernel at LeNet-5's shapes, batch {N}, float32: ms per call")
    print(f"  {'layer':10s} {'function':20s} {'fast':>8s} {'reference':>9s} {'ratio':>6s}")
    for layer, fname, args_f, kw_f, args_r, kw_r in kernel_cases(rng, N):
        # ms() calls each lambda before the loop moves on, so the loop variables are current
        t_fast = ms(lambda: getattr(fast, fname)(*args_f, **kw_f))  # noqa: B023
        t_ref = ms(lambda: getattr(functional, fname)(*args_r, **kw_r))  # noqa: B023
        print(f"  {layer:10s} {fname:20s} {t_fast:8.3f} {t_ref:9.3f} {t_ref / t_fast:6.1f}x")


def choices_table(rng, N):
    print("\n2. the fast path's choices against the plain alternative: ms per call")
    x, W = rng.standard_normal((N, 1, 28, 28)).astype(np.float32), rng.standard_normal((6,
                                                                                        25)).astype(np.float32)
    work = {}
    cols = fast._im2col(x, 5, 5, 1, 2, work)
    out = np.empty((6, cols.shape[1]), np.float32)
    whole = ms(lambda: np.matmul(W, cols, out=out))
    pieces = ms(lambda: fast._matmul_pieces(W, cols, out))
    print(f"  conv1 forward product {W.shape} @ {cols.shape}: whole {whole:.3f}, in pieces "
          f"{pieces:.3f}")
    dout = rng.standard_normal((N, 6, 28, 28)).astype(np.float32)
    rows = np.ascontiguousarray(dout.transpose(1, 2, 3, 0)).reshape(6, -1)
    direct = ms(lambda: rows @ cols.T)
    transposed = ms(lambda: fast._matmul_nt_pieces(cols, rows).T)
    print(f"  conv1 kernel gradient: rows @ cols.T {direct:.3f}, (cols @ rows.T).T "
          f"{transposed:.3f}")
    ones = np.ones(rows.shape[1], np.float32)
    summed = ms(lambda: rows.sum(axis=1))
    product = ms(lambda: rows @ ones)
    print(f"  conv1 bias gradient: ndarray.sum {summed:.3f}, product with ones {product:.3f}")
    net = build_network(LENET5, rng=np.random.default_rng(0))
    images = rng.standard_normal((1000, 1, 28, 28)).astype(np.float32)
    timings = []
    for chunk in (64, 128, 256, 500, 1000):
        net.EVAL_CHUNK = chunk
        took = ms(lambda: net.forward(images, train=False), max(5, ARGS.repeat // 8))
        timings.append(f"{chunk}: {took:.1f}")
    print("  evaluation of 1000 images in chunks of (ms per batch, EVAL_CHUNK = "
          f"{type(net).EVAL_CHUNK}): "
          + ", ".join(timings))


def main():
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, {THREADS} BLAS threads, median of {ARGS.repeat} calls\n")
    kernels_table(rng, ARGS.batch)
    choices_table(rng, ARGS.batch)


if __name__ == "__main__":
    main()
