"""The run folder's layout: the names of its files, what counts as a run folder, its state
(folder_state), and the marker that says whose run it holds. Standard library only: `cnntrain
runinfo` and `cnntrain summarize` read these and must answer at once, without numpy.

Layout:
  config.ini            the resolved config (overrides applied)
  metrics.jsonl         one strict-JSON object per completed epoch
  train.log             the human lines
  checkpoints/last.npz  the latest position (every epoch, and on a stop signal mid-epoch)
  checkpoints/best.npz  the epoch with the best validation accuracy
  summary.json          final and best metrics, wall time, checkpoint paths (a finished run)
  .lock                 the PID and host of the process holding the folder
  .cnntrain-run         the marker: {"run_id": ...} of the run this folder belongs to

What scripts/sweep.sh and sweep_slurm.sh add to a run folder (cnntrain summarize reads them):
  overrides.txt         the run's --set overrides, one SECTION.KEY=VALUE per line
  sweep-status.json     the last attempt: exit_code, error, action, seconds, finished
  sweep-output.log      stdout and stderr of every attempt (and .sweep-stderr during one)

The sweep scripts ask `cnntrain runinfo` (cnntrain.runs.runinfo) for these names and for a
folder's state instead of keeping a copy of them.

A folder is cnntrain's when it holds the marker, or (from before markers) checkpoints/last.npz;
one holding nothing but housekeeping (HOUSEKEEPING, temporaries of killed writes) is empty.
What a fit does with each is cnntrain.runs.runfolder's.
"""

import fnmatch
import json
import os
from pathlib import Path

CONFIG = "config.ini"
METRICS = "metrics.jsonl"
LOG = "train.log"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last.npz"
BEST = f"{CHECKPOINTS}/best.npz"
LOCK = ".lock"
MARKER = ".cnntrain-run"

OVERRIDES = "overrides.txt"
SWEEP_STATUS = "sweep-status.json"
SWEEP_OUTPUT = "sweep-output.log"
SWEEP_STDERR = ".sweep-stderr"  # scripts/sweep_lib.sh: an attempt's stderr while fit runs

# What `cnntrain fit` writes into a run folder (--overwrite removes their files, not the folder
# checkpoints/ itself: anything else kept there stays).
RUN_FILES = (CONFIG, METRICS, LOG, SUMMARY, CHECKPOINTS)
# The files of a run --overwrite removes, its results first (summary.json then last.npz, so
# that a kill part-way leaves a folder that claims no more than it holds).
REPLACED = (SUMMARY, LAST, BEST, METRICS, LOG, CONFIG)
# The files whose atomic writes may leave temporaries behind (fileio.atomic_writer names them
# .NAME.XXXXXXXX.tmp), by folder.
WRITTEN_ATOMICALLY = {"": (CONFIG, METRICS, SUMMARY, MARKER), CHECKPOINTS: ("last.npz", "best.npz")}
# What marks a folder as a run: a fit's files or marker, or a sweep's record of a run not yet
# started.
RUN_MARKERS = RUN_FILES + (MARKER, OVERRIDES)
# What a folder may hold and still count as empty: the lock, a sweep's files around a fit
# (the sweep writes overrides.txt before it starts fit), and temporaries of killed writes.
HOUSEKEEPING = (LOCK, OVERRIDES, SWEEP_STATUS, SWEEP_OUTPUT, SWEEP_STDERR)

# A folder's state, from what it holds (folder_state):
EMPTY = "empty"          # nothing but housekeeping: a new run starts here as is
LEFTOVERS = "leftovers"  # cnntrain's marker but no checkpoint: a fit died before its first epoch
RESUMABLE = "resumable"  # checkpoints/last.npz but no summary.json: continue it with --resume
FINISHED = "finished"    # summary.json: the run is done
FOREIGN = "foreign"      # files cnntrain did not write and no marker: fit refuses the folder
STATES = (EMPTY, LEFTOVERS, RESUMABLE, FINISHED, FOREIGN)


def is_run_folder(path):
    """True when `path` holds any mark of a run (a fit's files or a sweep's overrides.txt)."""
    path = Path(path)
    return any((path / name).exists() for name in RUN_MARKERS)


def folder_state(path):
    """One of STATES. A marked folder (or one from before markers holding checkpoints/last.npz)
    "holds a run" exactly when it holds checkpoints/last.npz; summary.json, written last, says
    the run is finished. Standard library only: `cnntrain runinfo` answers from it at once, so
    an unmarked last.npz is not opened here (fit checks the run it names before using it)."""
    path = Path(path)
    marked = (path / MARKER).is_file()
    if not (marked or unclaimed_entries(path)):
        return EMPTY
    if marked or (path / LAST).exists():
        if (path / SUMMARY).exists():
            return FINISHED
        return RESUMABLE if (path / LAST).exists() else LEFTOVERS
    return FOREIGN


def _own_temporary(name, folder=""):
    return any(fnmatch.fnmatchcase(name, f".{written}.*.tmp")
               for written in WRITTEN_ATOMICALLY.get(folder, ())) or \
        (folder == "" and name in tuple(f".{kept}.tmp" for kept in HOUSEKEEPING))


def unclaimed_entries(path):
    """The names in folder `path` other than housekeeping (HOUSEKEEPING, the temporaries of
    cnntrain's and a sweep's atomic writes, a checkpoints/ folder holding nothing else), sorted,
    folders with a trailing '/': what only a marker can vouch for. [] for a missing folder."""
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for entry in entries:
        if entry.name in HOUSEKEEPING or _own_temporary(entry.name):
            continue
        is_dir = entry.is_dir(follow_symlinks=False)
        if entry.name == CHECKPOINTS and is_dir and _holds_only_temporaries(entry.path):
            continue
        names.append(entry.name + ("/" if is_dir else ""))
    return sorted(names)


def _holds_only_temporaries(checkpoints):
    try:
        return all(_own_temporary(name, CHECKPOINTS) for name in os.listdir(checkpoints))
    except OSError:
        return False  # unreadable: nothing says it is cnntrain's


def read_marker(path):
    """The run_id a marker names (None when it names none). Bounded: a marker is one short line."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return None
    run_id = value.get("run_id") if isinstance(value, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def run_dir_of_checkpoint(path):
    """runs/x/checkpoints/last.npz -> runs/x."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
