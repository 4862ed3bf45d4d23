"""Compare the memory estimate that refuses oversized networks at config time
(cnntrain.nn.model.check_memory, cnntrain.nn.footprint) with NumPy's measured peak.

For each network and batch size: build it, take two training steps (forward, backward, SGD
with momentum and weight decay, a checkpoint's copy of the momentum) and two evaluation
passes of 1000 images, and report tracemalloc's peak next to the estimate.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/memory_estimate.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnntrain.nn.footprint import measured_peak  # noqa: E402
from cnntrain.nn.model import check_memory, parse_layers  # noqa: E402

NETWORKS = {
    "lenet5": "conv 6 5 pad=2 / relu / maxpool 2 / conv 16 5 / relu / maxpool 2 / flatten / "
              "dense 120 / relu / dense 84 / relu / dense 10",
    "wide-conv": "conv 64 5 pad=2 / relu / maxpool 2 / conv 128 5 / relu / maxpool 2 / flatten / "
                 "dense 512 / relu / dense 10",
    "conv32-3x3": "conv 32 3 pad=1 / relu / maxpool 2 / flatten / dense 10",
    "conv-tanh": "conv 32 3 pad=1 / tanh / conv 32 3 pad=1 / tanh / meanpool 2 / flatten / dense "
                 "10",
    "big-dense": "flatten / dense 20000 / relu / dense 10",
}


def main():
    for name, text in NETWORKS.items():
        for batch in (64, 256):
            estimate = check_memory(parse_layers(text), batch_size=batch, eval_batch_size=1000,
                                    available=1 << 62).total
            peak = measured_peak(text, batch, eval_images=1000)
            print(f"{name:11s} batch {batch:4d}: measured peak {peak / 2**20:7.1f} MiB, "
                  f"estimate {estimate / 2**20:7.1f} MiB, ratio {estimate / peak:.2f}")


if __name__ == "__main__":
    main()
