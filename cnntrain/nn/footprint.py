"""How much memory training a network takes, estimated from its layers before anything exists.

The estimate needs, per layer, only what a layer can say about itself without allocating:
its per-example output shape and its parameter count (plus the network's input shape). So a
layer list far too big for the machine is refused with numbers at config time, instead of
failing inside NumPy, or being killed by the kernel, once training has started.

What is counted, in values of the training dtype:
- parameters five times: the weights, their gradients, the optimizer's momentum and its
  scratch for the update, and the copy of the momentum a checkpoint takes;
- per training image, what the forward pass keeps for backward: a layer with parameters
  keeps its input as its matrix product reads it, one row of fan-in values per output
  position (the im2col columns of a convolution, the input vector of a dense layer), its
  fan-in taken from the parameters as (params - F) / F for F output channels, each with one
  bias; a layer without parameters is taken to keep its output (an activation does; a
  pooling keeps that many small indices or nothing, a flatten nothing);
- the unrolled inputs once more per evaluation image (evaluation keeps nothing, but its
  scratch arrays stay allocated next to training's), at the evaluation chunk size;
- the largest transient at one layer: its input, its unrolled input and its output (the
  same three deltas in backward), per training image or per evaluation image, whichever
  batch is larger (training and evaluation do not run at once).
It leaves out the data set itself and the interpreter, and errs on the generous side for
pooling and flattening. benchmarks/memory_estimate.py compares it with NumPy's measured peak
(docs/configs.md quotes the ratios); tests/nn/test_footprint.py keeps it within 0.9x to 2x of that.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

# values per parameter: the weight, its gradient, its momentum, the optimizer's scratch for
# the update, and the copy of the momentum a checkpoint takes
PARAMETER_COPIES = 5


@dataclass(frozen=True)
class Footprint:
    """An estimate in bytes: the total, each layer's own share, and the layer with the most.

    A layer's share is its parameters' copies plus what it keeps per training batch.
    """

    total: int
    layer_bytes: tuple
    layer_params: tuple
    layer_kept: tuple  # values kept for backward per training image, per layer
    largest: int       # index of the layer with the largest share


def _unrolled_input(output_shape, params):
    """Values a layer with parameters reads per image through its matrix product: fan-in
    (per output channel, bias excluded) times the output positions; 0 without parameters."""
    if not params:
        return 0
    channels = output_shape[0]
    positions = math.prod(output_shape[1:])
    return positions * max(params - channels, 0) // channels


def estimate(input_shape, layers, *, batch_size, eval_batch_size, itemsize):
    """layers: (per-example output shape, parameter count) of each layer, in order.

    batch_size: images per training step; eval_batch_size: images per inference forward pass
    (the network runs them in chunks, so pass the chunk size when that is smaller);
    itemsize: bytes per value (4 for float32). -> Footprint
    """
    layers = [(tuple(shape), int(params)) for shape, params in layers]
    if not layers:
        raise ValueError("no layers to estimate")
    size_in = math.prod(input_shape)
    kept_total, unrolled_total, peak = size_in, 0, 0
    layer_bytes, layer_params, layer_kept = [], [], []
    for shape, params in layers:
        size_out = math.prod(shape)
        unrolled = _unrolled_input(shape, params)
        kept = unrolled if params else size_out
        kept_total += kept
        unrolled_total += unrolled
        peak = max(peak, size_in + unrolled + size_out)
        layer_params.append(params)
        layer_kept.append(kept)
        layer_bytes.append(itemsize * (PARAMETER_COPIES * params + batch_size * kept))
        size_in = size_out
    values = (PARAMETER_COPIES * sum(layer_params) + batch_size * kept_total
              + eval_batch_size * unrolled_total + max(batch_size, eval_batch_size) * peak)
    largest = max(range(len(layers)), key=lambda i: layer_bytes[i])
    return Footprint(itemsize * values, tuple(layer_bytes), tuple(layer_params),
                     tuple(layer_kept), largest)


def _cgroup_limits():
    """Memory limits of this process's cgroups (v2 memory.max, v1 memory.limit_in_bytes),
    its own and its ancestors', as far as they are visible; 'max' and missing files give
    nothing."""
    root = Path("/sys/fs/cgroup")
    places = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            places.append((root, path, "memory.max"))
        elif "memory" in controllers.split(","):
            places.append((root / "memory", path, "memory.limit_in_bytes"))
    places += [(root, "/", "memory.max"), (root / "memory", "/", "memory.limit_in_bytes")]
    limits = []
    for base, path, name in places:
        folder = base / path.strip("/")
        for candidate in [folder, *folder.parents]:
            try:
                text = (candidate / name).read_text().strip()
            except OSError:
                text = ""
            if text.isdigit():
                limits.append(int(text))
            if candidate == base:
                break
    return limits


def available_memory():
    """Bytes this process may use at most: the physical memory, or a cgroup's limit (a
    container, a Slurm job) when lower; None when neither is known."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    known = [n for n in [physical, *_cgroup_limits()] if n and n > 0]
    return min(known) if known else None


def format_bytes(n):
    """1536 -> '1.5 KiB'; binary units, as `free -h` and the kernel count memory."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"  # pragma: no cover - the loop always returns


def measured_peak(text, batch, eval_images=300):
    """Peak bytes NumPy holds while a network is built and takes two training steps and two
    evaluation passes (tracemalloc sees NumPy's allocations): what estimate() predicts, as
    tests/nn/test_footprint.py and benchmarks/memory_estimate.py compare it. Imports the
    network lazily, since cnntrain.nn.model imports this module."""
    import tracemalloc

    import numpy as np

    from cnntrain.nn.losses import SoftmaxCrossEntropy
    from cnntrain.nn.model import build_network
    from cnntrain.nn.optim import SGD

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    x_eval = rng.standard_normal((eval_images, 1, 28, 28)).astype(np.float32)
    tracemalloc.start()
    try:
        net = build_network(text, rng=rng, dtype=np.float32)
        optimizer = SGD(net.params, 0.01, momentum=0.9, weight_decay=5e-4)
        loss = SoftmaxCrossEntropy()
        for _ in range(2):
            loss.forward(net.forward(x), y)
            net.backward(loss.backward())
            optimizer.step(net.grads)
            optimizer.state_dict()  # a checkpoint's copy of the momentum
            net.forward(x_eval, train=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
