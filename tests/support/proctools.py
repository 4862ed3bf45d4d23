"""Run the real `cnntrain` in a child process on synthetic MNIST, to send it real signals,
close its pipes or fill its disk.

The child is `python -c LAUNCHER TABLE_JSON FAULTS_JSON ARGS...`: it installs the synthetic
checksum table, optionally a fault (below), and calls the CLI's main().

Faults (FAULTS_JSON, a dict):
  {"signal_in_save": [15, 2]}  the first checkpoint write sends these signals to the process
                               itself just before numpy writes the temporary file
  {"signal_at_step": [63, 15]}  the process sends itself signal 15 during its 63rd optimizer
                               step (counted from this process's start), after the update
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

LAUNCHER = textwrap.dedent("""\
    import errno, json, os, sys
    import cnntrain.data.download
    cnntrain.data.download.MNIST_FILES = {k: tuple(v) for k, v in json.loads(sys.argv[1]).items()}
    faults = json.loads(sys.argv[2])
    if "signal_in_save" in faults:
        import numpy
        real_savez, fired = numpy.savez, []
        def savez(f, **arrays):
            if not fired:
                fired.append(1)
                for signum in faults["signal_in_save"]:
                    os.kill(os.getpid(), signum)
            real_savez(f, **arrays)
        numpy.savez = savez
    if "signal_at_step" in faults:
        import cnntrain.nn.optim
        at_step, signum = faults["signal_at_step"]
        real_step, taken = cnntrain.nn.optim.SGD.step, []
        def step(self, grads):
            real_step(self, grads)
            taken.append(1)
            if len(taken) == at_step:
                os.kill(os.getpid(), signum)
        cnntrain.nn.optim.SGD.step = step
    from cnntrain.cli import main
    sys.argv = ["cnntrain", *sys.argv[3:]]
    main()
    """)


def child_env(data_dir):
    return {**os.environ, "CNNTRAIN_DATA_DIR": str(data_dir), "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def start(table, data_dir, *args, faults=None, cwd=None, **popen):
    """Start cnntrain ARGS in a child process; returns the Popen."""
    cmd = [sys.executable, "-c", LAUNCHER, json.dumps(table), json.dumps(faults or {}),
           *map(str, args)]
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(cmd, text=True, env=child_env(data_dir), cwd=cwd, **popen)


def wait_for_text(path, text, proc, timeout=120):
    """Wait until file `path` contains `text` (True) or the process ended (False)."""
    deadline = time.time() + timeout
    path = Path(path)
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.01)
    return False


def run(table, data_dir, *args, send=None, after=None, faults=None, cwd=None, timeout=300):
    """Run cnntrain to its end; with send=SIGNUM and after=(file, text), send the signal once
    the file shows the text. Returns (exit code, stdout, stderr)."""
    proc = start(table, data_dir, *args, faults=faults, cwd=cwd)
    if send is not None:
        if wait_for_text(*after, proc):
            time.sleep(0.02)  # an epoch's log line is its last write: aim into the next epoch
            proc.send_signal(send)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


STOP_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
