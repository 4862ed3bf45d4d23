"""The data folder as a verified cache: MNIST's files kept decompressed, each checked by the
SHA-256 of its content; a small JSON manifest remembers what was verified (size, times,
inode, sha256) so a normal start re-hashes nothing; a lock file serialises the processes
sharing the folder; a verified download is moved into place atomically.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time

from cnntrain.data.failures import Fatal, local_failure
from cnntrain.data.mirrors import ELSEWHERE
from cnntrain.errors import DataError
from cnntrain.fileio import atomic_writer, fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: downloads are simply not serialised
    fcntl = None

_MANIFEST = ".cnntrain-verified.json"
_LOCK = ".cnntrain.lock"
#: What a download in progress is called: the file's name and this suffix.
PART = ".part"


def _sha256_file(path):
    """Hex SHA-256 of a file's content (the one place cached files are hashed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(data_dir):
    try:
        with open(data_dir / _MANIFEST, encoding="utf-8") as f:
            entries = json.load(f).get("files", {})
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # missing or damaged: everything is simply re-verified


def write_manifest(data_dir, entries):
    """Atomically replace the manifest; a folder we cannot write to just means re-hashing later."""
    try:
        with atomic_writer(data_dir / _MANIFEST, "w") as f:
            json.dump({"version": 2, "files": entries}, f, indent=1, sort_keys=True)
    except OSError:
        pass


# The fast check compares everything `stat` says changes when a file's content changes. A
# user can set the mtime back (`touch -r`), but not the ctime: the kernel stamps it at every
# write, rename or utime. The inode and device catch a file replaced by another.
_STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "inode", "device")
# ctime comes from a coarse clock, one timer tick (at most 10 ms) behind the real time; a file
# changed within the tick in which it was recorded would keep the recorded ctime.
_CTIME_TICK_NS = 20_000_000


def _stat_key(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def settled_stat(path):
    """stat(path), returned only once a later change of the file must show in its ctime.

    A freshly written file's ctime is within a clock tick of now; waiting out that tick makes
    any later write get a newer ctime. A ctime further in the future (a file server whose
    clock runs ahead) is not waited for: such a file is simply hashed again next time.
    """
    st = path.stat()
    wait_ns = st.st_ctime_ns + _CTIME_TICK_NS - time.time_ns()
    if 0 < wait_ns <= _CTIME_TICK_NS:
        time.sleep(wait_ns / 1e9)
    return st


def manifest_entry(st, sha256):
    """What the manifest records of a file whose content hashed to `sha256` when it had the
    stat `st` (taken before hashing: a change during or after it shows as another stat)."""
    return {**_stat_key(st), "sha256": sha256}


def trusted(path, entry, size, sha256):
    """True if the manifest vouches for `path` as it is now: no hashing, one stat."""
    if not isinstance(entry, dict) or entry.get("sha256") != sha256 or entry.get("size") != size:
        return False
    try:
        now = _stat_key(path.stat())
    except OSError:
        return False
    return all(entry.get(key) == now[key] for key in _STAT_KEYS)


class DirLock:
    """An exclusive flock on a lock file in the data folder, held while anything is written.

    The lock file is never deleted: removing it would let a third process lock a fresh inode
    while a second one still waits on the old.
    """

    def __init__(self, directory, announce):
        self.path = directory / _LOCK
        self.announce = announce
        self.fd = None

    def __enter__(self):
        if fcntl is None:
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return self  # read-only folder: verifying still works, writing will say why not
            raise DataError(local_failure(Fatal("create the lock file", self.path, e))) from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.announce:
                print(f"Waiting for another process downloading MNIST into {self.path.parent} ...",
                      file=sys.stderr)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def place(part, final):
    """Rename a verified .part into place, with its mtime set one second back.

    File timestamps come from a coarse clock: a rewrite within the same tick would keep the
    mtime the manifest recorded. Backdating our own copy makes any later write visible.
    """
    try:
        st = part.stat()
        os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000_000))
        os.replace(part, final)
    except OSError as e:
        raise Fatal("move into place", part, e) from e
    fsync_dir(final.parent)


def remove(path):
    try:
        path.unlink()
    except OSError:
        pass  # absent, or a read-only folder where nothing of ours can be either

NOT_DOWNLOADED = "not downloaded yet"


def check_cached(path, size, sha256):
    """(None, its stat) if the file on disk is the right one, else (why not, None); hashing
    only when sizes agree. The stat is taken before hashing, for the manifest."""
    try:
        st = settled_stat(path)
    except FileNotFoundError:
        return NOT_DOWNLOADED, None
    except OSError as e:
        return f"unreadable ({e.strerror or e})", None
    if st.st_size != size:
        return f"cached copy is corrupt: {st.st_size} bytes, expected {size}", None
    try:
        got = _sha256_file(path)
    except OSError as e:
        return f"unreadable ({e.strerror or e})", None
    if got != sha256:
        return f"cached copy is corrupt: SHA-256 {got[:16]}..., expected {sha256[:16]}...", None
    return None, st


def data_folder_problem(data_dir, error):
    """One line for a data folder that cannot be made: what is in the way and the way out."""
    blocker = next((p for p in [data_dir, *data_dir.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return (f"cannot use {data_dir} as the data folder: {blocker} is a file, not a folder; "
                f"move it away or choose another folder with {ELSEWHERE}")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot create the data folder {data_dir}: {blocker or data_dir.parent} is not "
                f"writable ({error.strerror or error}); fix its permissions or choose another "
                f"folder with {ELSEWHERE}")
    return (f"cannot create the data folder {data_dir}: {error.strerror or error}; choose "
            f"another folder with {ELSEWHERE}")
