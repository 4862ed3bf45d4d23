"""How one attempt at an MNIST file can fail, which decides what the download does next:
Transient (ask the same mirror again), Permanent (go to the next mirror) or Fatal (a local
problem in the data folder that no mirror can fix, worded by local_failure).
"""

from __future__ import annotations

import errno

from cnntrain.data.mirrors import ELSEWHERE


class Transient(Exception):
    """Worth another attempt at the same mirror (5xx, connection, timeout, truncation)."""

    def __init__(self, message, unreachable=False):
        super().__init__(message)
        # the mirror itself cannot be reached: later files skip it
        self.unreachable = unreachable


class Permanent(Exception):
    """This mirror will not give us this file (4xx, wrong content): go to the next one."""

    def __init__(self, message, unreachable=False):
        super().__init__(message)
        self.unreachable = unreachable


class Fatal(Exception):
    """A local problem (disk full, folder not writable) that no mirror can fix."""

    def __init__(self, what, path, error):
        super().__init__(f"cannot {what} {path}: {error.strerror or error}")
        self.path, self.error = path, error


def local_failure(exc):
    """One line for a write into the data folder that failed: the cause and the way out."""
    folder = exc.path.parent
    code = exc.error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc}; make room in {folder} or choose another folder with {ELSEWHERE}"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the data folder {folder} is not writable ({exc.error.strerror or exc.error}); "
                f"fix its permissions or choose another folder with {ELSEWHERE}")
    return f"{exc}; choose another folder with {ELSEWHERE}"
