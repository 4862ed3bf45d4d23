"""Writing files: a reader sees the old file or the new one, never half of either, and no
file, device or link the user had is ever replaced by something else.

Every output cnntrain writes goes through atomic_writer, which follows one rule for what its
path names (resolve_output decides):
  a regular file, a new name, or a symbolic link leading to either
      is written to a temporary file in the folder of the file itself (a link's target, so
      the link stays a link), flushed, fsynced and renamed over it; the folder is then
      fsynced so the rename itself survives a crash;
  a character device, a FIFO, a UNIX socket, or a name of an open file descriptor
  (/dev/stdout, /dev/fd/N, /proc/self/fd/N)
      is written through in place, as a shell's `>` would: `-o /dev/null` discards the
      output, `-o /dev/stdout` sends it down the pipe or into the file stdout is, and the
      node itself is never replaced. Such a target has no old content a rename could keep;
  an empty path, a folder (or a name ending in /), a block device
      is refused with a ConfigError naming the path as given, before anything is written.
An OSError leaving atomic_writer names the path as given, never a temporary file.
"""

import errno
import os
import re
import socket
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cnntrain.errors import ConfigError


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


def file_kind(mode):
    """What a stat mode names, in words for a message: 'a folder', 'a FIFO (named pipe)', ..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


class NotARegularFile(OSError):
    """open_regular_file's refusal of a path that names something else; .kind says what."""

    def __init__(self, kind):
        super().__init__(f"is {kind}, not a regular file")
        self.kind = kind


def open_regular_file(path):
    """`path` opened for binary reading if it is a regular file, else NotARegularFile (or the
    OSError os.open raises). Opened without blocking, so a FIFO or device cannot hang the
    reader, and judged by its descriptor, so every later read is of this one file even if the
    path is replaced meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARegularFile(file_kind(mode))
    return os.fdopen(fd, "rb")


def _umask():
    # Reading the umask means setting it; a command-line program has no other thread to race.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_LINK_HOPS = 40  # the kernel's own limit on symbolic links followed in one lookup
# Where the kernel lists a process's open file descriptors, each entry a link to one of them.
_DESCRIPTOR_FOLDER = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd")

REPLACE, THROUGH, SOCKET, DESCRIPTOR = "replace", "through", "socket", "descriptor"


@dataclass(frozen=True)
class Output:
    """Where writing a path goes. `how` is REPLACE (an atomic rename over `target`), THROUGH
    (open `target` and write into it), SOCKET (connect to the UNIX socket `target`) or
    DESCRIPTOR (write into this process's open file descriptor `descriptor`)."""

    given: str
    target: Path
    how: str
    descriptor: Optional[int] = None


def resolve_output(path):
    """The Output for `path` by the module docstring's rule; ConfigError for a path that rule
    refuses. Nothing is created or written."""
    given = os.fsdecode(os.fspath(path))
    if not given:
        raise ConfigError("the output path '' is empty; give the name of a file to write")
    if given.endswith(os.sep):
        raise ConfigError(f"{given} names a folder (it ends in {os.sep}); give the name of a "
                          "file to write")
    target = Path(given)
    for _ in range(_LINK_HOPS):
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return Output(given, target, REPLACE)
        except OSError as exc:
            raise _naming(exc, given, str(target)) from None
        if not stat.S_ISLNK(info.st_mode):
            return Output(given, target, _how_to_write(given, target, info.st_mode))
        alias = _descriptor_alias(given, target)
        if alias is not None:
            return alias
        target = target.parent / os.readlink(target)
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), given)


def check_output(path):
    """Refuse `path` now, before any work is done for it, if atomic_writer would refuse it."""
    resolve_output(path)


def _how_to_write(given, target, mode):
    if stat.S_ISREG(mode):
        return REPLACE
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return THROUGH
    if stat.S_ISSOCK(mode):
        return SOCKET
    leads = "" if str(target) == given else f" leads to {target}, which"
    if stat.S_ISDIR(mode):
        what = "a folder"
    elif stat.S_ISBLK(mode):
        what = "a block device (a disk, whose data writing would destroy)"
    else:
        what = "neither a file, a character device, a FIFO nor a socket"
    raise ConfigError(f"{given}{leads} is {what}; give the name of a file to write")


def _descriptor_alias(given, link):
    """The Output for `link` if it is one of /proc's links to an open file descriptor, which
    is written through: one of this process's own by its number (sharing the offset and
    flags the shell gave it, so `>>` appends), another process's by opening the link."""
    match = _DESCRIPTOR_FOLDER.fullmatch(os.path.realpath(link.parent))
    if match is None:
        return None
    if int(match.group(1)) == os.getpid() and link.name.isdigit():
        return Output(given, link, DESCRIPTOR, int(link.name))
    return Output(given, link, THROUGH)


def _naming(exc, given, *internal):
    """`exc` with the path the user gave as its file name, in place of none or of a name
    only atomic_writer knows (its temporary file, a link's target)."""
    if exc.filename is None or str(exc.filename) in map(str, internal):
        exc.filename, exc.filename2 = given, None
    return exc


def _text_options(mode):
    return {} if "b" in mode else {"encoding": "utf-8"}


@contextmanager
def atomic_writer(path, mode="wb"):
    """Yield an open file for `path` by the module docstring's rule. Replacing: on success it
    replaces the target atomically, on error it is removed and the target is left as it was.
    Writing through: the bytes go straight into the device, FIFO, socket or descriptor."""
    output = resolve_output(path)
    write = _replacing if output.how == REPLACE else _writing_through
    with write(output, mode) as f:
        yield f


@contextmanager
def _replacing(output, mode):
    target = output.target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # it names the temporary file it could not make
        raise _naming(exc, output.given, exc.filename) from None
    try:
        # mkstemp makes the file private (0600); the result should get the permissions any
        # new file would, so runs, checkpoints and pictures can be shared as usual.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **_text_options(mode)) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, output.given, tmp, str(target))  # noqa: B904 (exc is its context)
        raise
    fsync_dir(target.parent)


@contextmanager
def _writing_through(output, mode):
    _flush_console()
    try:
        with os.fdopen(_open_through(output), mode, **_text_options(mode)) as f:
            yield f
            f.flush()
    except OSError as exc:
        raise _naming(exc, output.given, str(output.target))  # noqa: B904 (as above)


def _flush_console():
    """Lines already printed go out before the data, where they share a stream (-o
    /dev/stdout); console output is best effort, so a failure here is not this write's."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _open_through(output):
    """A new file descriptor writing into the target, without creating or truncating it."""
    if output.how == DESCRIPTOR:
        return os.dup(output.descriptor)
    if output.how == SOCKET:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(output.target))
            return sock.detach()
    # A FIFO's open waits for its reader, as a shell's `>` does.
    return os.open(output.target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)


def refuse_overwriting(output, *inputs):
    """ConfigError if `output` is one of the `inputs` files (same file by any path), which
    writing it would destroy."""
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
