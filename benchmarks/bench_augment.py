"""Benchmark data augmentation against the training step it feeds: is it a bottleneck?

    python benchmarks/bench_augment.py
    python benchmarks/bench_augment.py --augment-config configs/lenet5-aug.ini \
        --config configs/lenet5.ini --threads 2

What it measures, in one process:
1. Augmenting one epoch: --images (55,000, the training split) in batches of the config's
   batch size (64), gathered from a shuffled order as the trainer does, with the [augment]
   settings of --augment-config; also split into draw (random numbers) and apply (elastic
   fields, sampling grids, resampling), and for each part of the settings on its own.
2. The training step of --config (forward, loss, backward, SGD), as benchmarks/bench.py times it.
3. Both together, as the trainer runs them: a plain step and an augment + step, alternately,
   so the extra time augmentation adds inside the loop is measured against the same machine
   state (shared machines are noisy; only ratios measured side by side mean much).

The ratio printed last, augmentation time / step time, is the share of an epoch the
augmentation adds; the aim is under 10-15%.

Images are random normal, or MNIST when --data-dir names a folder (or URL) holding the files,
loaded through cnntrain's own data code: the cost does not depend on pixel values.
"""

import argparse
import sys


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--augment-config", default="configs/lenet5-aug.ini",
                    help="config whose [augment] section is measured")
    ap.add_argument("--config", default="configs/lenet5.ini",
                    help="config whose network, batch size and optimizer give the step time")
    ap.add_argument("--images", type=int, default=55000, help="images per epoch")
    ap.add_argument("--steps", type=int, default=300, help="training steps timed in part 2")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of (plain, augmented) in part 3")
    ap.add_argument("--round-steps", type=int, default=100,
                    help="plain and augmented steps per round in part 3")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads (default: the CPUs this process may use)")
    ap.add_argument("--data-dir", default=None,
                    help="a folder or URL holding the MNIST files, fetched like --mirror")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


ARGS = parse_args()
# Before numpy is imported: BLAS reads its thread count once, when it loads.
from benchlib import Batches, TrainStep, pin_threads, real_mnist  # noqa: E402

THREADS = pin_threads(ARGS.threads, "bench_augment.py")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cnntrain.config import load_config  # noqa: E402
from cnntrain.data import augment  # noqa: E402
from cnntrain.runs.build import build_augmenter  # noqa: E402


def load_images(cfg, dtype, rng):
    pool = 16384
    if ARGS.data_dir:
        splits, folder = real_mnist(ARGS.data_dir, cfg, dtype)
        note = f"MNIST from {ARGS.data_dir} (first {pool}, cached in {folder})"
        return splits.train.images[:pool], note
    return (rng.standard_normal((pool, 1, 28, 28)).astype(dtype),
            f"{pool} random N(0, 1) images (the cost does not depend on pixel values)")


def settle():
    """Let BLAS worker threads stop spinning after the last call before timing again."""
    time.sleep(0.2)


def time_epoch(aug, images, batches, n_batches, rng):
    """Seconds to augment n_batches batches; then, in a second pass, the seconds spent
    drawing the random parameters and applying them (elastic fields and resampling)."""
    start = time.perf_counter()
    for _ in range(n_batches):
        aug(images[batches.next()], rng)
    total = time.perf_counter() - start
    parts = {"draw": 0.0, "apply": 0.0}
    for _ in range(n_batches):
        x = images[batches.next()]
        t0 = time.perf_counter()
        params = aug.draw(len(x), rng, x.shape[-2:], x.dtype)
        t1 = time.perf_counter()
        aug.apply(x, params)
        parts["draw"] += t1 - t0
        parts["apply"] += time.perf_counter() - t1
    return total, parts


def variants(aug):
    """The measured settings, then each of their parts alone, when there are several."""
    full = dict(translate=aug.translate, rotate=aug.rotate, scale=aug.scale,
                elastic_alpha=aug.elastic_alpha, elastic_sigma=aug.elastic_sigma, fill=aug.fill)
    alone = [(name, dict(kwargs, fill=aug.fill)) for name, kwargs, on in (
        ("translate only", dict(translate=aug.translate), aug.translate),
        ("rotate only", dict(rotate=aug.rotate), aug.rotate),
        ("scale only", dict(scale=aug.scale), aug.scale),
        ("elastic only", dict(elastic_alpha=aug.elastic_alpha, elastic_sigma=aug.elastic_sigma),
         aug.elastic_alpha)) if on]
    if len(alone) < 2:
        return [("all of [augment]", full)]
    affine = dict(translate=aug.translate, rotate=aug.rotate, scale=aug.scale, fill=aug.fill)
    return [("all of [augment]", full)] + alone + [("affine (translate+rotate+scale)", affine)]


def main():
    cfg = load_config(ARGS.config)
    aug_cfg = load_config(ARGS.augment_config)
    aug = build_augmenter(aug_cfg)
    if aug is None:
        sys.exit(f"{ARGS.augment_config}: every [augment] setting is 0; nothing to measure")
    batch = cfg.train.batch_size
    dtype = np.dtype(cfg.train.dtype)
    rng = np.random.default_rng(ARGS.seed)
    images, note = load_images(cfg, dtype, rng)
    labels = rng.integers(0, 10, len(images))
    batches = Batches(len(images), batch, rng)
    n_batches = -(-ARGS.images // batch)
    print(f"augmentation: {aug!r} from {ARGS.augment_config}")
    print(f"training step: {ARGS.config}, batch {batch}, {dtype}; data: {note}")
    print(f"numpy {np.__version__}, {THREADS} BLAS thread(s)")

    step = TrainStep(cfg, dtype, ARGS.seed)
    for _ in range(20):  # warm-up: caches, BLAS threads, the augmenter's cached matrices
        x = aug(images[batches.next()], rng)
        step(x, labels[:batch])

    settle()
    start = time.perf_counter()
    for _ in range(ARGS.steps):
        index = batches.next()
        loss = step(images[index], labels[index])
    step_s = (time.perf_counter() - start) / ARGS.steps
    assert np.isfinite(loss), "training diverged"
    print(f"\n1. training step alone: {1e3 * step_s:.2f} ms per batch of {batch} "
          f"({ARGS.steps} steps); an epoch of {n_batches} steps: {n_batches * step_s:.1f} s")

    print(f"\n2. augmenting one epoch: {n_batches} batches of {batch} ({ARGS.images:,} images)")
    print(f"   {'settings':34s} {'ms/batch':>9s} {'s/epoch':>8s} {'of a step':>10s}   "
          f"draw / apply, ms/batch")
    alone = None
    for name, kwargs in variants(aug):
        settle()
        total, parts = time_epoch(augment.Augmenter(**kwargs), images, batches, n_batches, rng)
        per = total / n_batches
        alone = per if alone is None else alone
        split = " / ".join(f"{1e3 * parts[k] / n_batches:.3f}" for k in ("draw", "apply"))
        print(f"   {name:34s} {1e3 * per:9.3f} {total:8.2f} {100 * per / step_s:9.1f}%   {split}")

    print(f"\n3. in the training loop: {ARGS.rounds} rounds of {ARGS.round_steps} plain and "
          f"{ARGS.round_steps} augmented steps, alternating step by step")
    extra = []
    for r in range(ARGS.rounds):
        settle()
        plain = augmented = 0.0
        for _ in range(ARGS.round_steps):
            index = batches.next()
            start = time.perf_counter()
            step(images[index], labels[index])
            middle = time.perf_counter()
            index = batches.next()
            step(aug(images[index], rng), labels[index])
            end = time.perf_counter()
            plain += middle - start
            augmented += end - middle
        extra.append(augmented / plain - 1)
        print(f"   round {r + 1}: plain {1e3 * plain / ARGS.round_steps:.2f} ms/step, augmented "
              f"{1e3 * augmented / ARGS.round_steps:.2f} ms/step: {100 * extra[-1]:+.1f}%")
    print(f"\nratio augmentation / training step: {100 * alone / step_s:.1f}% timed apart "
          f"(parts 1 and 2), {100 * statistics.median(extra):.1f}% in the loop (part 3, median "
          f"of rounds, {100 * min(extra):.1f}% to {100 * max(extra):.1f}%): "
          f"+{statistics.median(extra) * n_batches * step_s:.1f} s on a "
          f"{n_batches * step_s:.1f} s epoch")


if __name__ == "__main__":
    main()
