"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Each write goes to a temporary file in the same folder (so the rename cannot cross file
systems), is flushed and fsynced, renamed over the target, and the folder is fsynced so the
rename itself survives a crash.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(folder):
    """Persist a rename in `folder`; a no-op where a directory cannot be opened or fsynced
    (the rename itself is still atomic)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    # Reading the umask means setting it; a command-line program has no other thread to race.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path, mode="wb"):
    """Yield an open temporary file; on success it replaces `path` atomically, on error it
    is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the result should get the permissions any
        # new file would, so runs, checkpoints and pictures can be shared as usual.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text):
    with atomic_writer(path, "w") as f:
        f.write(text)


def append_line(path, line):
    """Append one whole line and fsync it. A write that fails part-way (a full disk) is cut
    back, so the file never ends in half a line; only a crash inside the write can leave one,
    which repair_torn_tail removes on the next start."""
    data = memoryview((line.rstrip("\n") + "\n").encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def repair_torn_tail(path):
    """Cut a file back to its last newline, dropping a line a crash left unfinished.
    Returns the number of bytes removed (0 for a missing or intact file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        keep, chunk = size, 4096
        while keep > 0:
            start = max(0, keep - chunk)
            block = os.pread(fd, keep - start, start)
            if keep == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return size - keep
    finally:
        os.close(fd)


TEMPORARY_GLOB = ".*.tmp"  # the names atomic_writer gives its temporary files


def remove_temporaries(folder):
    """Delete the temporary files atomic_writer left in `folder` when its process was
    killed mid-write; returns their names. Only safe while no other process writes there."""
    removed = []
    for path in Path(folder).glob(TEMPORARY_GLOB):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
