#!/usr/bin/env python3
"""Does a config train to the same bits whatever the BLAS thread count?

Trains the config from scratch once per --threads value (each child process gets
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS set to it), then compares the
final checkpoints array by array, bit for bit: parameters, buffers (batch norm's running
statistics), optimizer velocities. Exit 0 when they all match, 1 when any differs (each one
listed), 2 when a run fails; a stop signal (Ctrl-C, SIGTERM, SIGHUP) during a run stops the
script with the run's own exit code (130, 143, 129).

    python scripts/thread_bits.py --config configs/bn-aug.ini --set train.epochs=2 \\
        --set data.train_size=5760 --set data.test_size=1000 --threads 1 2

A BLAS may sum a product's terms in a different order for another thread count, and for
some shapes it does: a run's bits then depend on the machine's threads as well as on the
config and seed. A check on a few epochs covers every shape a longer run of the same config
meets, as long as its batches have the same sizes: a partial last batch is a shape of its
own, so keep the full run's remainder of training images modulo the batch size.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnntrain.runs.checkpoint_reader import load_checkpoint  # noqa: E402
from cnntrain.runs.stopsignals import STOP_SIGNALS, describe  # noqa: E402

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
NAMES_SHOWN = 8  # once one array differs, training carries it into nearly all the others


def differing_arrays(a, b):
    """Names of the arrays that are not bit-identical between checkpoints a and b (an array
    only one of them has counts as differing). NaNs compare by their bits too."""
    first, second = a.named_arrays(), b.named_arrays()
    return sorted(name for name in first.keys() | second.keys()
                  if name not in first or name not in second
                  or first[name].shape != second[name].shape
                  or first[name].dtype != second[name].dtype
                  or first[name].tobytes() != second[name].tobytes())


def train(threads, args, out):
    """Run `cnntrain fit` into the new folder `out` with this many BLAS threads; the final
    checkpoint's path. Exit 2 with the run's own error line when it fails."""
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    # The runs use this checkout's cnntrain, as the comparison does, even where another one
    # is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "cnntrain", "fit", "--config", args.config, "--quiet",
               "--out", str(out)]
    command += [part for pair in args.set for part in ("--set", pair)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    done = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    # A stop signal is the run's to handle (it saves and exits 128 + the signal): pass it on
    # rather than dying here mid-wait with a traceback, whether it came to this process alone
    # or, from a terminal, to both.
    previous = {signum: signal.signal(signum, lambda signum, frame: done.send_signal(signum))
                for signum in STOP_SIGNALS}
    try:
        _, stderr = done.communicate()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped_by = [signum for signum in STOP_SIGNALS if done.returncode == 128 + signum]
    if stopped_by:
        # The run saved its position, but in a folder this script is about to remove: its
        # "continue with" line would point at nothing.
        print(f"stopped by {describe(stopped_by[0])} during the run with {threads} thread(s); "
              "nothing was compared", file=sys.stderr)
        raise SystemExit(done.returncode)
    if done.returncode != 0:
        last_line = (stderr.strip().splitlines() or [""])[-1]
        print(f"the run with {threads} thread(s) failed (exit {done.returncode}): {last_line}",
              file=sys.stderr)
        raise SystemExit(2)
    return out / "checkpoints" / "last.npz"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the config to train")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="an override, as cnntrain fit's (shorten the run with these)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="the thread counts to compare (default: 1 2)")
    ap.add_argument("--data-dir", default=None, help="MNIST data folder, as cnntrain fit's")
    args = ap.parse_args(argv)
    if len(args.threads) < 2 or min(args.threads) < 1:
        ap.error("--threads needs two or more counts of at least 1")

    with tempfile.TemporaryDirectory(prefix="cnntrain-thread-bits-") as work:
        paths = [train(threads, args, Path(work) / f"run{i}-threads-{threads}")
                 for i, threads in enumerate(args.threads)]
        checkpoints = [load_checkpoint(path) for path in paths]
        names = checkpoints[0].named_arrays()
        same = True
        for threads, checkpoint in zip(args.threads[1:], checkpoints[1:]):
            differing = differing_arrays(checkpoints[0], checkpoint)
            same = same and not differing
            shown = ", ".join(differing[:NAMES_SHOWN])
            if len(differing) > NAMES_SHOWN:
                shown += f" and {len(differing) - NAMES_SHOWN} more"
            verdict = ("bit-identical" if not differing else
                       f"{len(differing)} of {len(names)} arrays differ: {shown}")
            print(f"{args.threads[0]} against {threads} thread(s): {verdict}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
