"""Stopping a run on request: Ctrl-C (SIGINT), SIGTERM (Slurm, systemd, `timeout`, Docker, CI
runners) and SIGHUP (a closed terminal) all mean "save the exact position and stop".

The first signal only sets a flag; the trainer looks at it after each whole step, so the
parameters are never left half-updated, and the run saves its position and exits with
128 + the signal's number (130, 143, 129), as a shell reports a process killed by it.

A second signal while the run writes its results (a checkpoint, a metrics line) is noted and
otherwise ignored, so a file is never cut half-way by an impatient user or a supervisor that
repeats its SIGTERM; a second signal anywhere else stops at once (ImmediateStop), leaving the
last checkpoint as it was.
"""

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def signal_name(signum):
    return signal.Signals(signum).name


def describe(signum):
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal_name(signum)


class ImmediateStop(KeyboardInterrupt):
    """A second stop signal outside a write: give up at once, without saving."""

    def __init__(self, signum):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """The flag the trainer polls. signum: the first stop signal received (None: none yet)."""

    def __init__(self):
        self.signum = None
        self._event = threading.Event()
        self._shielded = 0

    def is_set(self):
        return self._event.is_set()

    def request(self, signum):
        if self.signum is None:
            self.signum = signum
        self._event.set()

    @property
    def exit_code(self):
        return 128 + (self.signum or signal.SIGINT)

    @contextmanager
    def shielded(self):
        """A section that writes results: stop signals arriving in it are only recorded."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1

    def _handle(self, signum, frame):
        if self.is_set() and not self._shielded:
            raise ImmediateStop(signum)
        self.request(signum)


@contextmanager
def stop_on_signals():
    """Install the handlers for SIGINT, SIGTERM and SIGHUP while the block runs and yield its
    StopRequest. Off the main thread (where Python cannot handle signals) the request only
    works when set by hand."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop._handle) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
