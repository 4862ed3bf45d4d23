"""Benchmark one config: training and evaluation images/s, where the time goes, and PyTorch.

    python benchmarks/bench.py --config configs/lenet5.ini --steps 300 --threads 2

What it measures, in one process, on the same data:
1. cnntrain training: the real step (forward, loss, backward, SGD with the config's momentum
   and weight decay), timed over --steps steps after a warm-up, in --rounds rounds.
2. cnntrain evaluation: forward(x, train=False) in batches of --eval-batch plus the argmax.
3. A per-layer forward/backward breakdown of the training step (and of the eval forward).
4. If torch imports: the same architecture, batch and optimizer in PyTorch, trained for the
   same number of steps right after each of our rounds, and the ratio ours / torch.

The machines this runs on are shared and noisy, so only ratios measured side by side mean
much; each round runs ours then torch back to back and the ratio is taken per round. When
another process takes a core, every multithreaded BLAS product (and torch's parallel
regions) waits for its descheduled worker thread, so both sides slow down several times
over and unevenly: trust quiet runs, where the rounds agree.

Data are random normal images with random labels unless --data-dir names a folder (or URL)
holding the four MNIST files, which then reach cnntrain's data folder through its own
download, verification and loading code; speed does not depend on the pixel values.
"""

import argparse
import os


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/lenet5.ini",
                    help="config file (model, batch, optimizer)")
    ap.add_argument("--steps", type=int, default=300, help="training steps timed, for each side")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    ap.add_argument("--rounds", type=int, default=6,
                    help="the steps are run in this many rounds of (ours, torch), back to back")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS, cnntrain and torch (default: the CPUs this process may "
                         "use)")
    ap.add_argument("--batch", type=int, default=None,
                    help="training batch (default: the config's)")
    ap.add_argument("--eval-batch", type=int, default=1000, help="evaluation batch")
    ap.add_argument("--eval-images", type=int, default=10000, help="images per evaluation pass")
    ap.add_argument("--profile-steps", type=int, default=100,
                    help="steps for the per-layer breakdown")
    ap.add_argument("--data-dir", default=None,
                    help="a folder or URL holding the MNIST files, fetched like --mirror (default: "
                         "random data)")
    ap.add_argument("--kernels", choices=("fast", "reference"), default=None,
                    help="the layers' maths (default: the config's [train] kernels)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


ARGS = parse_args()
# Before numpy (or torch) is imported, which is why this script parses its arguments first.
from benchlib import Batches, TrainStep, pin_threads, real_mnist  # noqa: E402

THREADS = pin_threads(ARGS.threads, "bench.py")

import ctypes  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cnntrain.config import load_config  # noqa: E402

# --- BLAS ----------------------------------------------------------------------------------

def blas_info():
    """(description, threads) of the BLAS numpy loaded, read from the library itself."""
    name = "unknown BLAS"
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{deps.get('name', '?')} {deps.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        pass
    threads, config = None, None
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "blas" in os.path.basename(path).lower() and ".so" in path:
                paths.add(path)
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if getter is not None:
                getter.restype = ctypes.c_int
                threads = getter()
                conf = getattr(lib, f"{prefix}_get_config{suffix}", None)
                if conf is not None:
                    conf.restype = ctypes.c_char_p
                    config = conf().decode()
                break
        if threads is not None:
            break
    return f"{name} ({config})" if config else name, threads


# --- data ----------------------------------------------------------------------------------

def load_data(cfg, dtype, rng):
    """(train_x, train_y, eval_x, eval_y, description)."""
    if ARGS.data_dir:
        splits, folder = real_mnist(ARGS.data_dir, cfg, dtype)
        tx, ty = splits.train.images, splits.train.labels
        reps = -(-ARGS.eval_images // len(splits.test))
        ex = np.concatenate([splits.test.images] * reps)[:ARGS.eval_images]
        ey = np.concatenate([splits.test.labels] * reps)[:ARGS.eval_images]
        return tx, ty, ex, ey, f"real MNIST from {ARGS.data_dir} (cached in {folder})"
    n_train = 16384
    tx = rng.standard_normal((n_train, 1, 28, 28)).astype(dtype)
    ty = rng.integers(0, 10, n_train)
    ex = rng.standard_normal((ARGS.eval_images, 1, 28, 28)).astype(dtype)
    ey = rng.integers(0, 10, ARGS.eval_images)
    note = f"random N(0, 1) images, {n_train} for training (shape is all that matters)"
    return tx, ty, ex, ey, note


# --- cnntrain ------------------------------------------------------------------------------

class Ours:
    def __init__(self, cfg, batch, dtype, data):
        self.train_step = TrainStep(cfg, dtype, ARGS.seed)
        step = self.train_step
        self.net, self.opt, self.loss = step.net, step.opt, step.loss
        self.tx, self.ty, self.ex, self.ey = data
        self.batches = Batches(len(self.ty), batch, np.random.default_rng(ARGS.seed))

    def step(self):
        index = self.batches.next()
        return self.train_step(self.tx[index], self.ty[index])

    def train(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        seconds = time.perf_counter() - start
        assert np.isfinite(loss), "training diverged"
        return seconds

    def evaluate(self):
        start = time.perf_counter()
        correct = 0
        for i in range(0, len(self.ey), ARGS.eval_batch):
            logits = self.net.forward(self.ex[i:i + ARGS.eval_batch], train=False)
            labels = self.ey[i:i + ARGS.eval_batch]
            correct += int(np.count_nonzero(logits.argmax(axis=1) == labels))
        return time.perf_counter() - start


class Timed:
    """Wraps one bound method and adds up the seconds spent in it."""

    def __init__(self, method):
        self.method, self.seconds, self.calls = method, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.method(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result

    def ms(self):
        return 1e3 * self.seconds / max(self.calls, 1)


def breakdown(ours, steps):
    """Per-layer ms per call in training (forward, backward) and in evaluation (forward)."""
    net = ours.net
    timers = {}
    for name, layer in net.layers:
        timers[name] = (Timed(layer.forward), Timed(layer.backward))
        layer.forward, layer.backward = timers[name]
    loss_fwd, loss_bwd = Timed(ours.loss.forward), Timed(ours.loss.backward)
    ours.loss.forward, ours.loss.backward = loss_fwd, loss_bwd
    opt = Timed(ours.opt.step)
    ours.opt.step = opt
    start = time.perf_counter()
    ours.train(steps)
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    train = {name: (f.ms(), b.ms()) for name, (f, b) in timers.items()}
    for f, b in timers.values():
        f.seconds = b.seconds = f.calls = b.calls = 0
    start = time.perf_counter()
    ours.evaluate()
    eval_batches = -(-len(ours.ey) // ARGS.eval_batch)
    eval_ms = 1e3 * (time.perf_counter() - start) / eval_batches
    # per evaluation batch: the network may call a layer several times per batch (chunks)
    evaluation = {name: 1e3 * f.seconds / eval_batches for name, (f, _) in timers.items()}
    for _name, layer in net.layers:  # drop the instance attributes: back to the class methods
        del layer.forward, layer.backward
    del ours.loss.forward, ours.loss.backward, ours.opt.step
    return train, evaluation, (loss_fwd.ms(), loss_bwd.ms(), opt.ms()), step_ms, eval_ms


# --- PyTorch reference ---------------------------------------------------------------------

class Torch:
    """The config's layer list as a torch.nn.Sequential, trained exactly like ours."""

    def __init__(self, torch, cfg, batch, data, network):
        nn = torch.nn
        self.torch = torch
        torch.set_num_threads(THREADS)
        torch.manual_seed(ARGS.seed)
        # Each layer names its own PyTorch equivalent, so a new layer needs no change here.
        self.model = nn.Sequential(*(layer.torch_module(nn) for _, layer in network.layers))
        tx, ty, ex, ey = data
        self.tx, self.ty = torch.from_numpy(np.ascontiguousarray(tx)), torch.from_numpy(ty)
        self.ex, self.ey = torch.from_numpy(np.ascontiguousarray(ex)), torch.from_numpy(ey)
        t = cfg.train
        # Weight decay where our layers declare it (batch norm's gamma and beta go without),
        # pairing each of our parameters with its module's in order (W/gamma -> weight,
        # b/beta -> bias).
        decayed = set(network.decayed(t.decay_biases))
        groups = {True: [], False: []}
        for (name, layer), module in zip(network.layers, self.model):
            for key, param in zip(layer.params, module.parameters()):
                groups[f"{name}.{key}" in decayed].append(param)
        self.opt = torch.optim.SGD([{"params": groups[True], "weight_decay": t.weight_decay},
                                    {"params": groups[False], "weight_decay": 0.0}],
                                   lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
        self.label_smoothing = t.label_smoothing
        self.batches = Batches(len(ty), batch, np.random.default_rng(ARGS.seed))
        self.description = f"torch {torch.__version__}, {torch.get_num_threads()} threads"

    def train(self, steps):
        torch, F = self.torch, self.torch.nn.functional
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            index = torch.from_numpy(self.batches.next())
            loss = F.cross_entropy(self.model(self.tx[index]), self.ty[index],
                                   label_smoothing=self.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        seconds = time.perf_counter() - start
        assert torch.isfinite(loss), "torch training diverged"
        return seconds

    def evaluate(self):
        torch = self.torch
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(self.ey), ARGS.eval_batch):
                logits = self.model(self.ex[i:i + ARGS.eval_batch])
                int((logits.argmax(1) == self.ey[i:i + ARGS.eval_batch]).sum())
        return time.perf_counter() - start


def settle():
    """Let the other library's idle worker threads stop spinning before the next timing:
    OpenBLAS and OpenMP workers busy-wait for a while after a call, which would steal a core."""
    time.sleep(0.3)


# --- main ----------------------------------------------------------------------------------

def main():
    cfg = load_config(ARGS.config, [f"train.kernels={ARGS.kernels}"] if ARGS.kernels else ())
    batch = ARGS.batch or cfg.train.batch_size
    dtype = np.dtype(cfg.train.dtype)
    tx, ty, ex, ey, data_note = load_data(cfg, dtype, np.random.default_rng(ARGS.seed))
    data = (tx, ty, ex, ey)
    blas, blas_threads = blas_info()
    print(f"config {ARGS.config}: {cfg.train.kernels} kernels, batch {batch}, {dtype}, SGD lr "
          f"{cfg.train.lr} momentum "
          f"{cfg.train.momentum} weight decay {cfg.train.weight_decay}")
    print(f"data: {data_note}")
    print(f"numpy {np.__version__}, BLAS {blas}, BLAS threads {blas_threads}; --threads {THREADS}")

    ours = Ours(cfg, batch, dtype, data)
    print("cnntrain runs NumPy on one Python thread; BLAS uses its own threads for large products")
    reference = None
    if not ARGS.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: no reference")
        else:
            reference = Torch(torch, cfg, batch, data, ours.net)
            print(f"reference: {reference.description}, same layers, batch and optimizer")

    ours.train(ARGS.warmup)
    ours.evaluate()
    if reference is not None:
        reference.train(ARGS.warmup)
        reference.evaluate()

    print(f"\ntraining: {ARGS.steps} steps x {batch} images each, in {ARGS.rounds} interleaved "
          f"rounds; evaluation: {len(ey)} images per round (images/s)")
    per_round = [ARGS.steps // ARGS.rounds + (r < ARGS.steps % ARGS.rounds)
                 for r in range(ARGS.rounds)]
    totals = {"ours": 0.0, "ours_eval": 0.0, "ref": 0.0, "ref_eval": 0.0}
    ratios = []
    for r, steps in enumerate(per_round):
        settle()
        seconds, eval_seconds = ours.train(steps), ours.evaluate()
        totals["ours"] += seconds
        totals["ours_eval"] += eval_seconds
        line = (f"  round {r + 1}: cnntrain train {steps * batch / seconds:8,.0f}  "
                f"eval {len(ey) / eval_seconds:8,.0f}")
        if reference is not None:
            settle()
            ref_seconds, ref_eval_seconds = reference.train(steps), reference.evaluate()
            totals["ref"] += ref_seconds
            totals["ref_eval"] += ref_eval_seconds
            ratios.append(ref_seconds / seconds)
            line += (f" | torch train {steps * batch / ref_seconds:8,.0f}  "
                     f"eval {len(ey) / ref_eval_seconds:8,.0f} | train ratio {ratios[-1]:.2f}")
        print(line, flush=True)

    images, eval_images = ARGS.steps * batch, ARGS.rounds * len(ey)
    train_rate, eval_rate = images / totals["ours"], eval_images / totals["ours_eval"]
    print(f"\ncnntrain: train {train_rate:,.0f} images/s ({1e3 * batch / train_rate:.2f} ms/step), "
          f"eval {eval_rate:,.0f} images/s (batch {ARGS.eval_batch}); eval/train "
          f"{eval_rate / train_rate:.2f}")
    if reference is not None:
        ref_rate, ref_eval_rate = images / totals["ref"], eval_images / totals["ref_eval"]
        print(f"torch:    train {ref_rate:,.0f} images/s ({1e3 * batch / ref_rate:.2f} ms/step), "
              f"eval {ref_eval_rate:,.0f} images/s (batch {ARGS.eval_batch})")
        print(f"ratio cnntrain/torch: train {train_rate / ref_rate:.2f} over all steps, median of "
              "rounds "
              f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
              f"eval {eval_rate / ref_eval_rate:.2f}")
        if max(ratios) > 1.3 * min(ratios):
            print("warning: the rounds disagree, so other processes were using the CPUs; threaded "
                  "BLAS and torch both slow down badly then (a worker thread waits for a core). "
                  "Rerun on a quiet machine, or compare with --threads 1.")

    settle()
    train, evaluation, (loss_f, loss_b, opt_ms), step_ms, eval_ms = breakdown(ours,
                                                                              ARGS.profile_steps)
    print(f"\nper layer, ms per training step (batch {batch}) and per evaluation batch "
          f"({ARGS.eval_batch}):")
    print(f"  {'layer':10s} {'forward':>8s} {'backward':>8s} {'eval fwd':>9s}")
    for name, (f, b) in train.items():
        print(f"  {name:10s} {f:8.3f} {b:8.3f} {evaluation[name]:9.3f}")
    print(f"  {'loss':10s} {loss_f:8.3f} {loss_b:8.3f}")
    print(f"  {'optimizer':10s} {opt_ms:8.3f}")
    total = sum(f + b for f, b in train.values()) + loss_f + loss_b + opt_ms
    print(f"  sum {total:.3f} ms of a {step_ms:.3f} ms step (the rest: batch gather, Python); "
          f"eval forward sum {sum(evaluation.values()):.3f} of {eval_ms:.3f} ms per batch")


if __name__ == "__main__":
    main()
