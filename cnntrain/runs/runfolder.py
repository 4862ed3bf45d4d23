"""A run's folder at work (RunFolder): whose run it holds, its lock, and the order of its
writes. The folder's layout, states and marker are cnntrain.runs.runfolder_layout's; reading
metrics.jsonl back is cnntrain.runs.runfolder_metrics'.

Whose folder it is. A fit writes a run only into a new or empty folder (nothing but the lock,
a sweep's files and temporary files), or into a folder it marked as a run's own: the marker,
written atomically before any other file of the run, names the run (its run_id, which every
checkpoint of the run carries too). A folder written before markers existed counts as the run
its checkpoints/last.npz names. Anything else is someone else's folder and is refused, with or
without --overwrite; cnntrain deletes only its own files (RUN_FILES' files, its temporaries),
never anything else a folder holds.

In its own folder a fit
  - starts a new run only where no results stand (summary.json, last.npz, best.npz, an epoch
    in metrics.jsonl): a folder whose fit died before its first checkpoint is started again
    as it is, while one whose last.npz the user deleted keeps its best.npz and logs;
  - resumes the folder's own run (the same run_id) unless the folder holds it further on;
  - replaces a run only with --overwrite.

Rules that keep the folder consistent at every instant, whatever kills the process:
  - Every file is written atomically (cnntrain.fileio) or appended to in whole lines.
  - The marker comes first: a start killed at any later point leaves a folder the next start
    recognises as cnntrain's. --overwrite removes the old run's files under the marker, then
    writes the new run's marker over it.
  - An epoch's checkpoint is written before its metrics line, and summary.json last, so a
    logged epoch implies its checkpoint, and summary.json implies a finished run.
  - Each start (new or resumed) makes metrics.jsonl exactly the starting checkpoint's history,
    which also drops an epoch logged after that checkpoint and a line a crash cut in half,
    and removes temporary files a killed write left behind.
  - One process at a time: an OS lock (flock) on .lock, held for the whole run, released by
    the kernel when the process ends however it ends, so a SIGKILL leaves no stale lock.
"""

import errno
import fcntl
import json
import os
import shlex
import socket
from contextlib import contextmanager
from pathlib import Path

from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.fileio import append_line, atomic_write_text, repair_torn_tail
from cnntrain.runs.checkpoint import describe_position, save_checkpoint
from cnntrain.runs.checkpoint_reader import load_checkpoint
from cnntrain.runs.metrics import metrics_json
from cnntrain.runs.runfolder_layout import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    LAST,
    LOCK,
    LOG,
    MARKER,
    METRICS,
    REPLACED,
    SUMMARY,
    WRITTEN_ATOMICALLY,
    read_marker,
    run_dir_of_checkpoint,
    unclaimed_entries,
)
from cnntrain.runs.runfolder_metrics import read_metrics


class FolderBusy(ConfigError):
    """Another process holds the run folder's lock."""


class RunWriteError(CnnTrainError):
    """Writing one of the run's files failed (a full disk, a read-only folder, ...)."""

    def __init__(self, path, error, message=None):
        reason = error.strerror or str(error)
        super().__init__(message or f"cannot write {path}: {reason}")
        self.path, self.error = path, error


class FolderNotWritable(RunWriteError):
    """The folder (or its lock file) cannot be made: nothing of the run was touched."""



def _same_settings(text_a, text_b):
    """Two config texts that differ at most in comment lines (the header naming the source)."""
    def settings(text):
        return [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
    return settings(text_a) == settings(text_b)


def _same_path(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


class RunFolder:
    """One run's folder. Use as a context manager (or call lock() and unlock())."""

    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / CONFIG
        self.metrics = self.path / METRICS
        self.log_path = self.path / LOG
        self.summary = self.path / SUMMARY
        self.checkpoints = self.path / CHECKPOINTS
        self.last = self.path / LAST
        self.best = self.path / BEST
        self.lock_path = self.path / LOCK
        self.marker = self.path / MARKER
        self._lock_fd = None

    # ------------------------------------------------------------------ whose run is it

    def holds_run(self):
        return self.last.exists()

    def marked(self):
        return self.marker.is_file()

    def run_id(self):
        """The run this folder belongs to: its marker's run_id, or in a folder from before
        markers the run_id its last.npz carries; None when neither names one."""
        if self.marked():
            return read_marker(self.marker)
        run_id = (self.stored() or {}).get("run_id")
        return run_id if isinstance(run_id, str) and run_id else None

    def foreign_entries(self):
        """[] when this folder is new, empty (housekeeping only) or cnntrain's (its marker, or
        from before markers a last.npz naming its run); else the names it holds."""
        if self.marked():
            return []
        names = unclaimed_entries(self.path)
        return names if names and self.run_id() is None else []

    def results(self):
        """What of a run's results the folder holds: summary.json, last.npz, best.npz, and
        metrics.jsonl when it records an epoch (a fit that died before its first checkpoint
        leaves none of them)."""
        found = [name for name in (SUMMARY, LAST, BEST) if (self.path / name).exists()]
        epochs = len(read_metrics(self.path))
        if epochs:
            found.append(f"{METRICS} ({epochs} epoch{'s' if epochs > 1 else ''})")
        return found

    def recorded_epochs(self):
        """The last epoch metrics.jsonl or best.npz records (0 when neither does)."""
        logged = [record["epoch"] for record in read_metrics(self.path)]
        best = self._best_epoch()
        return max(logged + [best if best != float("inf") else 0])

    def stored(self):
        """The meta of the run's last.npz (None without one; {} when it is unreadable)."""
        if not self.last.exists():
            return None
        try:
            return load_checkpoint(self.last).meta
        except CnnTrainError:
            return {}

    def describe(self):
        """Where last.npz stands ('after epoch 3 of 5'), or '' when it cannot tell."""
        meta = self.stored()
        if not meta:
            return ""
        return describe_position(meta)

    def is_run_of(self, checkpoint_path, checkpoint_meta):
        """True when this folder belongs to the run `checkpoint_path` belongs to: the same
        run_id, or, where either names none, the checkpoint lies in this folder."""
        mine, theirs = self.run_id(), checkpoint_meta.get("run_id")
        if mine and theirs:
            return mine == theirs
        return _same_path(self.path, run_dir_of_checkpoint(checkpoint_path))

    # ------------------------------------------------------------------ the lock

    def lock(self):
        """Take the folder's lock (making the folder), or raise FolderBusy at once."""
        if self._lock_fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            where = exc.filename or self.path
            message = (f"cannot write {where}: {exc.strerror or exc}; a run folder must be "
                       "writable (it holds the run's lock, checkpoints and logs); choose another "
                       "with --out DIR")
            raise FolderNotWritable(where, exc, message) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunWriteError(self.lock_path, exc) from None
            who = (f"PID {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process")
            raise FolderBusy(f"{self.path} is in use by another cnntrain fit ({who}); wait for "
                             "it to finish or stop it, or choose another folder with --out "
                             "DIR") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its message loses the PID
        self._lock_fd = fd

    def lock_if_present(self):
        """Take the lock of a folder that already exists (refusing a busy folder before any
        slow work); a folder that does not exist yet is locked when it is made."""
        if self.path.is_dir():
            self.lock()

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unlock()

    # ------------------------------------------------------------------ starting

    def check_foreign(self, *, overwrite):
        """Refuse a folder that holds files cnntrain did not write (and no marker), with or
        without --overwrite: a run is never mixed with them, and they are never deleted."""
        names = self.foreign_entries()
        if not names:
            return
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        flag = ("; --overwrite replaces only a run cnntrain wrote, never files it did not write"
                if overwrite else "")
        raise ConfigError(
            f"{self.path} holds files cnntrain did not write ({shown}) and no {MARKER} marker "
            f"of a cnntrain run{flag}; choose a new or empty folder with --out DIR, or move "
            "those files out of it")

    def check_new(self, *, overwrite):
        """Refuse, before any work, to start a new run over one that has results."""
        if overwrite:
            return
        found = self.results()
        if not found:
            return
        if self.holds_run():
            what = self.describe()
            raise ConfigError(f"{self.path} already holds a run{f' ({what})' if what else ''}; "
                              f"continue it with --resume {self.last}, choose another folder "
                              "with --out DIR, or replace it with --overwrite")
        raise ConfigError(f"{self.path} already holds {self._a_run_without_last()} "
                          f"({', '.join(found)}); choose another folder with --out DIR, or "
                          "replace it with --overwrite")

    def check_resume(self, checkpoint_path, checkpoint_meta, *, overwrite):
        """Refuse to continue a checkpoint into a folder that holds another run's results, or
        that holds this run further on than the checkpoint (resuming best.npz would replace
        last.npz; an older copy would drop the epochs logged after it)."""
        if overwrite:
            return
        found = self.results()
        if not found:
            return
        if self.is_run_of(checkpoint_path, checkpoint_meta):
            self._check_not_further_on(checkpoint_path, checkpoint_meta)
            return
        what = ", ".join(filter(None, (_config_source(self.stored() or {}), self.describe())))
        if not self.holds_run():
            what = f"{self._a_run_without_last()}: {', '.join(found)}"
        raise ConfigError(
            f"{self.path} holds another run{f' ({what})' if what else ''}, not the one "
            f"{checkpoint_path} belongs to; continue it in its own folder "
            f"({run_dir_of_checkpoint(checkpoint_path)}, the default without --out), choose an "
            f"empty folder with --out DIR, or replace {self.path} with --overwrite")

    def _check_not_further_on(self, checkpoint_path, checkpoint_meta):
        if self.last.exists():
            if (not _same_path(checkpoint_path, self.last)
                    and (self.stored() or {}).get("step", 0) > checkpoint_meta["step"]):
                raise ConfigError(
                    f"{self.path} holds this run further on ({self.describe()}) than "
                    f"{checkpoint_path} ({describe_position(checkpoint_meta)}); continue from "
                    f"--resume {self.last}, continue the older position elsewhere with --out "
                    "DIR, or go back to it here with --overwrite")
            return
        recorded = self.recorded_epochs()
        if recorded > checkpoint_meta["epoch"]:
            raise ConfigError(
                f"{self.path} holds this run further on (epoch {recorded} in its {METRICS} or "
                f"{BEST}; its {LAST} is gone) than {checkpoint_path} "
                f"({describe_position(checkpoint_meta)}); continue the older position "
                "elsewhere with --out DIR, or go back to it here with --overwrite")

    def _a_run_without_last(self):
        kind = "a finished run" if self.summary.exists() else "a run"
        return f"{kind} whose {LAST} is gone"

    def check_input_config(self, config_path, config_text):
        """Never overwrite the config file the user gave: refuse when it is this folder's
        config.ini and differs from the resolved config that would be written there."""
        if not config_path or not self.config.exists() or not _same_path(config_path, self.config):
            return
        if _same_settings(self.config.read_text(encoding="utf-8", errors="replace"), config_text):
            return  # cnntrain's own resolved config given back: nothing would change
        raise ConfigError(
            f"{config_path} is the config you gave and also where this run's resolved config "
            f"goes ({self.config}), which would overwrite it; copy it elsewhere (e.g. cp "
            f"{config_path} my.ini) and give --config my.ini, or choose another --out DIR")

    def begin(self, *, run_id, history, config_text, replace):
        """Under the lock: clean what a killed process left, clear a replaced run, mark the
        folder as run `run_id`'s before writing anything else of it, and make metrics.jsonl
        exactly `history` (the starting checkpoint's epochs)."""
        assert self._lock_fd is not None, "begin() needs the folder's lock"
        with self._writing(self.path):
            self._remove_temporaries()
            if replace:
                if not self.marked() and self.run_id():
                    self._mark(self.run_id())  # a kill while removing leaves it cnntrain's
                self._remove_run()
            self._mark(run_id)
            if self._best_epoch() > len(history) or self._best_run_id() not in (None, run_id):
                # A best.npz of an epoch beyond the starting history (a resume that went
                # back), or of another run, claims results this run does not have.
                self.best.unlink(missing_ok=True)
            self.summary.unlink(missing_ok=True)  # back only when the run is done again
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        with self._writing(self.metrics):
            if history:
                atomic_write_text(self.metrics, "".join(metrics_json(m) + "\n" for m in history))
            else:
                self.metrics.unlink(missing_ok=True)
        with self._writing(self.log_path):
            repair_torn_tail(self.log_path)
        with self._writing(self.config):
            if not (self.config.exists() and _same_settings(
                    self.config.read_text(encoding="utf-8", errors="replace"), config_text)):
                atomic_write_text(self.config, config_text)

    def _remove_temporaries(self):
        """Delete the temporaries of cnntrain's own atomic writes a killed process left (only
        safe under the lock); a file of the same pattern under another name is not ours."""
        for folder, names in WRITTEN_ATOMICALLY.items():
            for name in names:
                for path in (self.path / folder).glob(f".{name}.*.tmp"):
                    if path.is_file():
                        path.unlink(missing_ok=True)

    def _remove_run(self):
        """--overwrite: delete the run's own files, and nothing else the folder holds."""
        for name in REPLACED:
            (self.path / name).unlink(missing_ok=True)

    def _mark(self, run_id):
        if read_marker(self.marker) != run_id:
            atomic_write_text(self.marker, json.dumps({"run_id": run_id}) + "\n")

    # ------------------------------------------------------------------ writing

    @contextmanager
    def _writing(self, path):
        try:
            yield
        except RunWriteError:
            raise
        except OSError as exc:
            raise RunWriteError(exc.filename or path, exc) from None

    def log(self, text):
        with self._writing(self.log_path):
            append_line(self.log_path, text)

    def save_epoch(self, snapshot, metrics, *, is_best, line):
        """An epoch's results in the order that keeps the folder consistent: last.npz, then
        best.npz, then its metrics line, then its log line."""
        with self._writing(self.last):
            save_checkpoint(self.last, snapshot)
        if is_best:
            with self._writing(self.best):
                save_checkpoint(self.best, snapshot)
        with self._writing(self.metrics):
            append_line(self.metrics, metrics_json(metrics))
        self.log(line)

    def save_position(self, snapshot):
        with self._writing(self.last):
            save_checkpoint(self.last, snapshot)

    def _best_meta(self):
        """The meta of best.npz ({} without one, None when it is unreadable)."""
        if not self.best.exists():
            return {}
        try:
            return load_checkpoint(self.best).meta
        except CnnTrainError:
            return None

    def _best_epoch(self):
        meta = self._best_meta()
        if meta is None:
            return float("inf")  # unreadable: not a best checkpoint of this history
        return meta.get("epoch", 0)

    def _best_run_id(self):
        return (self._best_meta() or {}).get("run_id")

    def repair_best(self, snapshot, best_epoch_number):
        """On resume at an epoch boundary: a process killed between writing last.npz and
        best.npz of its best epoch left best.npz behind; write it from that snapshot."""
        if self.best.exists():
            try:
                if load_checkpoint(self.best).meta.get("epoch") == best_epoch_number:
                    return
            except CnnTrainError:
                pass
        with self._writing(self.best):
            save_checkpoint(self.best, snapshot)

    def write_summary(self, summary):
        with self._writing(self.summary):
            atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")

    def what_is_safe(self, data_dir=None, fix="free some space"):
        """For a failure message: what the folder still holds and how to go on."""
        if self.stored():
            return (f"{self.last} ({self.describe()}) is intact; {fix}, then continue with: "
                    f"{continue_command(self.last, data_dir)}")
        return f"no checkpoint was written yet; {fix} and run the same command again"


def continue_command(checkpoint, data_dir=None):
    """The command line that continues the run saved in `checkpoint`."""
    words = ["cnntrain", "fit", "--resume", str(checkpoint)]
    if data_dir:
        words += ["--data-dir", str(data_dir)]
    return shlex.join(words)


def _config_source(meta):
    """The config file a checkpoint's run was started from, as its stored config names it."""
    first = str(meta.get("config", "")).split("\n", 1)[0]
    _, marker, source = first.partition("; read from ")
    return f"from {source}" if marker and source else ""
