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


def refuse_overwriting(output, *inputs):
    """ConfigError if `output` is one of the `inputs` files (same file by any path), which
    writing it would destroy."""
    from cnntrain.errors import ConfigError

    for given in inputs:
        if given is None:
            continue
        try:
            same = os.path.samefile(output, given)
        except OSError:  # one of them does not exist: nothing to destroy
            same = False
        if same:
            raise ConfigError(f"{output} is the input {given}; writing it would destroy it, "
                              "choose another output file")


def atomic_write_text(path, text):
    with atomic_writer(path, "w") as f:
        f.write(text)


def append_line(path, line):
    """Append one line and flush it to disk, so a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
