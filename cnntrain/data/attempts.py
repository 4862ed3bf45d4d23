"""One MNIST file from a list of sources: an attempt streams a source's copy into a .part
file through the verifier; a Transient failure is retried with exponential backoff, within
the mirror's patience; a Permanent one moves to the next source; every failed attempt the
download goes on from is told on stderr, one line.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

from cnntrain.data.cache import PART, place, remove
from cnntrain.data.failures import Fatal, Permanent, Transient, local_failure
from cnntrain.data.mirrors import is_http
from cnntrain.data.patience import Watch
from cnntrain.data.stream import open_source
from cnntrain.data.verifier import Verifier
from cnntrain.errors import DataError

# The backoff's wait, looked up at call time so tests can record it instead of waiting.
_sleep = time.sleep


def _fetch_once(source, name, size, sha256, part, session, timeout,
                progress, on_data=lambda count=0: None):
    """One attempt: stream `source`'s copy of `name` into `part`, verified and fsynced.
    `on_data` is called when the response starts and with the size of every chunk received."""
    with open_source(source, name, session, timeout) as (content_type, body):
        on_data(0)
        try:
            out = open(part, "wb")
        except OSError as e:
            raise Fatal("write", part, e) from e
        with out, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                       disable=not progress, leave=False) as bar:
            verifier = Verifier(out, size, sha256, content_type, bar)
            for chunk in body:
                on_data(len(chunk))
                verifier.feed(chunk)
            verifier.finish()
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise Fatal("write", part, e) from e


def _tell(source, name, why, then):
    """One line on stderr for a failed attempt that the download goes on from."""
    where = source + name + ".gz" if is_http(source) else str(source)
    print(f"{where}: {why}; {then}", file=sys.stderr, flush=True)


def fetch_file(name, size, sha256, data_dir, sources, session, timeout, retries, backoff,
               progress, unreachable, waits):
    """Put a verified `name` into `data_dir` from the first source that has it.

    Returns None on success, else one "source: why" line per source. `unreachable` carries
    mirrors that could not be connected to at all, that kept us waiting too long (`waits`) or
    fell below the throughput floor, from one file to the next. Each failed attempt that the
    download goes on from (a retry, the next source) is told on stderr, one line.
    """
    failures = []
    for index, source in enumerate(sources):
        if source in unreachable:
            failures.append(f"{source}: {unreachable[source]} (not tried again)")
            continue
        why = _fetch_from(source, name, size, sha256, data_dir, session, timeout, retries,
                          backoff, progress, unreachable, waits)
        if why is None:
            return None
        failures.append(f"{source}: {why}")
        if any(later not in unreachable for later in sources[index + 1:]):
            _tell(source, name, why, "trying the next mirror")
    return failures


def _fetch_from(source, name, size, sha256, data_dir, session, timeout, retries, backoff,
                progress, unreachable, waits):
    """`name` from one source, retried as the design allows: None on success, else why not."""
    part = data_dir / (name + PART)
    # A local file reads the same the second time: only the network is worth retrying, and
    # only at a mirror that has not already failed a file through all its retries.
    tries = 1 + retries if is_http(source) and source not in waits.exhausted else 1
    attempt = 0
    while True:
        attempt += 1
        try:
            if is_http(source):
                with Watch(waits, source, name) as watch:
                    _fetch_once(source, name, size, sha256, part, session,
                                waits.timeout(source, timeout), progress, watch.data)
            else:
                _fetch_once(source, name, size, sha256, part, session, timeout, progress)
            place(part, data_dir / name)
            return None
        except Transient as e:
            pause = backoff * 2 ** (attempt - 1)
            patient = not is_http(source) or pause < waits.left(source)
            if attempt < tries and patient:
                _tell(source, name, str(e), f"retrying in {pause:g} s "
                                            f"(attempt {attempt + 1} of {tries})")
                _sleep(pause)
                waits.spend(source, pause)
                continue
            why = f"{e} (after {attempt} attempts)" if attempt > 1 else str(e)
            if not patient:
                why = waits.given_up(source, why)
            elif attempt > 1:
                waits.exhausted[source] = f"all {attempt} attempts at {name}.gz"
            elif source in waits.exhausted:
                why += f" (not retried: it failed {waits.exhausted[source]})"
            if e.unreachable or not patient:
                unreachable[source] = why
            return why
        except Permanent as e:
            if e.unreachable:
                unreachable[source] = str(e)
            return str(e)
        except Fatal as e:
            raise DataError(local_failure(e)) from e
        finally:
            remove(part)  # a no-op after success: the rename consumed it
