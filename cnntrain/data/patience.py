"""How long a mirror may keep a download waiting, and how slowly it may send: the patience
summed over a mirror's attempts and pauses (each request's timeouts cut to what is left of
it), the throughput floor, and the one stderr line that names a mirror being waited on.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

from cnntrain.data.failures import Permanent

#: How long one mirror may keep a download waiting without sending anything, summed over
#: all its attempts, the pauses between them and all files, before it is given up.
MIRROR_PATIENCE = 30.0
# After this long without a byte, say which mirror is being waited on (once per mirror).
_WAIT_NOTICE = 5.0
#: The throughput floor: a mirror whose download brought less than MIN_RATE bytes a second
#: over the last RATE_WINDOW seconds is given up (not asked again) and the next one tried.
#: At the floor MNIST's 11 MiB take 23 minutes: a slower link is better served by another
#: mirror or by placing the files by hand. A mirror that falls silent meets the read timeout.
MIN_RATE = 8 * 1024
RATE_WINDOW = 20.0

# The clock that measures silence, looked up at call time so tests can fake it.
_clock = time.monotonic


class MirrorWaits:
    """How long each mirror has kept us waiting, within one ensure_mnist call.

    An attempt's silence is the time from its start, or from the last data it received, to
    its end; the pause before a retry is waited too. Each request's connect and read timeouts
    are cut to what is left of the mirror's `patience`, so a mirror that accepts connections
    and never answers costs at most `patience` seconds in all, then is not asked again.
    """

    def __init__(self, patience):
        self.patience = patience
        self.spent = {}
        self.announced = set()
        # mirror -> "all N attempts at FILE": it failed a file through all its retries, so each
        # later file gives it one attempt only
        self.exhausted = {}

    def left(self, source):
        return self.patience - self.spent.get(source, 0.0)

    def spend(self, source, seconds):
        self.spent[source] = self.spent.get(source, 0.0) + max(seconds, 0.0)

    def timeout(self, source, timeout):
        left = max(self.left(source), 0.001)
        return min(timeout[0], left), min(timeout[1], left)

    def given_up(self, source, reason):
        return (f"{reason}; no data for {self.spent.get(source, 0.0):.0f} s in all, "
                f"gave up on this mirror")


def _amount(n):
    if n < 1024:
        return f"{n:,} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


class _Throughput:
    """The throughput floor of one attempt: at each chunk, once the attempt is RATE_WINDOW
    seconds old, the bytes of the last RATE_WINDOW seconds (or a little more, back to the
    chunk that began them) must come to MIN_RATE a second."""

    def __init__(self):
        self.total = 0
        self.marks = deque()  # (time, bytes received up to then), oldest first

    def add(self, now, count):
        self.total += count
        self.marks.append((now, self.total))
        while len(self.marks) > 1 and now - self.marks[1][0] >= RATE_WINDOW:
            self.marks.popleft()
        since, before = self.marks[0]
        elapsed, got = now - since, self.total - before
        if elapsed >= RATE_WINDOW and got < MIN_RATE * elapsed:
            raise Permanent(f"{_amount(got)} in {elapsed:.0f} s, below the "
                             f"{MIN_RATE / 1024:g} KiB/s floor", unreachable=True)


class Watch:
    """One attempt at a mirror: `data(count)` marks bytes received (0 when the response
    starts) and holds them to the throughput floor; after _WAIT_NOTICE seconds without any,
    one line on stderr says which mirror is being waited on (once per mirror)."""

    def __init__(self, waits, source, name):
        self.waits, self.source, self.name = waits, source, name
        self.last = _clock()
        self.throughput = _Throughput()
        self._done = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.source not in self.waits.announced:
            self._thread = threading.Thread(target=self._notice, daemon=True,
                                            name="cnntrain-mirror-wait")
            self._thread.start()
        return self

    def data(self, count=0):
        self.last = _clock()
        self.throughput.add(self.last, count)

    def _notice(self):
        while not self._done.wait(max(self.last + _WAIT_NOTICE - _clock(), 0.05)):
            if _clock() - self.last >= _WAIT_NOTICE:
                self.waits.announced.add(self.source)
                print(f"waiting for {self.source} to send {self.name}.gz (no data for "
                      f"{_WAIT_NOTICE:g} s; giving up on this mirror after "
                      f"{self.waits.patience:g} s without data) ...", file=sys.stderr, flush=True)
                return

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.waits.spend(self.source, _clock() - self.last)
