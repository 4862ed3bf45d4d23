#!/usr/bin/env python3
"""Whole processes, side by side: `cnntrain fit` for one epoch against the PyTorch reference.

Both do the same work: start up, read MNIST, train one epoch on all 60,000 training images
(cnntrain with `data.val_size=0`, and no warm-up, as the reference) at batch 64, score the
10,000 test images. Runs alternate (ours, reference, ours, ...) so both see the same machine
load, and the medians are compared as a ratio. Peak memory is each process's own maximum
resident set (os.wait4). Also times `cnntrain --help` against a bare `python -c pass`.

    python benchmarks/bench_process.py --mnist ../shared/mnist --repeat 3

cnntrain reads MNIST from a data folder it fills once from the --mnist folder (used as a
mirror); the first, cold run that decompresses and verifies the files is reported separately.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "bench" / "torch_lenet.py"


def timed(cmd, env):
    """(wall seconds, peak RSS in MB, exit code, stdout) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, proc.returncode, out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", default=str(REPO.parent / "shared" / "mnist"),
                    help="folder holding the four MNIST .gz files (default: ../shared/mnist)")
    ap.add_argument("--config", default=str(REPO / "configs" / "lenet5.ini"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, alternating")
    ap.add_argument("--reference", default=str(REFERENCE), help="the PyTorch script")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch installed")
    args = ap.parse_args()

    env = dict(os.environ)
    cnntrain = [sys.executable, "-m", "cnntrain"]
    work = Path(tempfile.mkdtemp(prefix="cnntrain-bench-"))
    try:
        fit = [*cnntrain, "fit", "--config", args.config, "--quiet", "--overwrite",
               "--out", str(work / "run"), "--data-dir", str(work / "data"), "--mirror", args.mnist,
               "--set", "train.epochs=1", "--set", "data.val_size=0",
               "--set", "train.warmup_epochs=0"]
        ref = [args.torch_python, args.reference, args.mnist, "--epochs", "1"]

        cold = timed(fit, env)
        if cold[2] != 0:
            sys.exit(f"cnntrain fit failed (exit {cold[2]}): {' '.join(fit)}")
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(timed(fit, env))
            theirs.append(timed(ref, env))
            if theirs[-1][2] != 0:
                sys.exit(f"the reference failed (exit {theirs[-1][2]}); is torch installed in "
                         f"{args.torch_python}?")

        def median(runs, k):
            return statistics.median(r[k] for r in runs)

        print(f"one epoch as a whole process, median of {args.repeat} alternating runs")
        print(f"  cnntrain fit   {median(ours, 0):6.2f} s   peak RSS {median(ours, 1):6.0f} MB"
              f"   (cold first run with decompression and verification: {cold[0]:.2f} s)")
        print(f"  reference      {median(theirs, 0):6.2f} s   peak RSS {median(theirs, 1):6.0f} MB")
        print(f"  time ratio reference/cnntrain {median(theirs, 0) / median(ours, 0):.2f}  "
              f"(> 1: cnntrain faster)   memory ratio cnntrain/reference "
              f"{median(ours, 1) / median(theirs, 1):.2f}  (< 1: cnntrain smaller)")
        last_line = [line for line in ours[-1][3].splitlines() if line.startswith("epoch ")]
        ref_line = [line for line in theirs[-1][3].splitlines() if line.startswith("epoch ")]
        print(f"  cnntrain: {last_line[-1] if last_line else '?'}")
        print(f"  reference: {ref_line[-1] if ref_line else '?'}")

        helps = [timed([*cnntrain, "--help"], env)[0] for _ in range(7)]
        bare = [timed([sys.executable, "-c", "pass"], env)[0] for _ in range(7)]
        print(f"cnntrain --help {statistics.median(helps):.3f} s (median of 7; a bare "
              f"`python -c pass` takes {statistics.median(bare):.3f} s here)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
