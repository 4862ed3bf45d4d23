"""Console output is best effort: a closed pipe (`| head`), a full device (`> /dev/full`) or a
vanished terminal never stops a command or costs it a file.

While a command runs, sys.stdout and sys.stderr are wrapped: the first write or flush that
fails marks the stream broken, points its file descriptor at /dev/null (so that nothing later,
not even Python's flush at exit, meets the error again) and every later write is dropped.
`cnntrain eval CKPT | head -1` thus prints its first line and exits 0 without a word, like
any Unix filter, and `cnntrain fit ... | head -1` trains to its end with every checkpoint.

A stream closed before the start (`>&-`, `2>&-`) is treated as one that broke at once: its
file descriptor is pointed at /dev/null first (so that no file cnntrain opens later takes
its number, where a stray write to stdout or stderr would land in a checkpoint), and it is
replaced by a stream to /dev/null, which is not a terminal. `cnntrain fit ... >&-` trains as
it would with its output sent to /dev/null.
"""

import os
import stat
import sys
from contextlib import ExitStack, contextmanager

STANDARD_FDS = (0, 1, 2)


class BestEffortStream:
    """A text stream that swallows its own write errors (see the module docstring)."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text):
        if not self.broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._break()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._break()

    def _break(self):
        self.broken = True
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except OSError:
            return
        try:
            self._stream.flush()  # what was buffered now goes to /dev/null
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def fill_closed_standard_fds():
    """Open /dev/null on each of fds 0, 1 and 2 that is closed; returns the ones filled."""
    filled = []
    for fd in STANDARD_FDS:
        if _is_open(fd):
            continue
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if null != fd:  # the lowest free number is this one unless a lower fd was closed too
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
        filled.append(fd)
    return filled


@contextmanager
def best_effort_output():
    """Wrap sys.stdout and sys.stderr for the duration of the block; a missing one (its
    descriptor was closed when Python started) writes to /dev/null meanwhile."""
    fill_closed_standard_fds()
    saved = sys.stdout, sys.stderr
    with ExitStack() as opened:
        sys.stdout, sys.stderr = _stand_in(sys.stdout, opened), _stand_in(sys.stderr, opened)
        try:
            yield
        finally:
            for wrapped in (sys.stdout, sys.stderr):
                if isinstance(wrapped, BestEffortStream):
                    wrapped.flush()
            sys.stdout, sys.stderr = saved


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _stand_in(stream, opened):
    if stream is None:
        stream = opened.enter_context(open(os.devnull, "w", encoding="utf-8"))
    return BestEffortStream(stream)


def is_stdout(path):
    """True if `path` is the file, pipe, terminal or socket that stdout writes to, other than
    the null device: a line saying it was written then belongs on stderr, not inside it."""
    try:
        written, shown = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no such file, or stdout has no descriptor
        return False
    if not os.path.samestat(written, shown):
        return False
    return not (stat.S_ISCHR(shown.st_mode) and shown.st_rdev == os.stat(os.devnull).st_rdev)
