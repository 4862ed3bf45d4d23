"""MNIST's files: where they live, where they come from, and how they are fetched and verified.

Downloading (`ensure_mnist`, here) and reading (`load_mnist`, cnntrain.data.mnist) are separate
steps: reading never touches the network, so a training run on a machine with the files in
place is fully offline.

The files are kept decompressed in the data folder, each verified by the SHA-256 of its
decompressed content; a small JSON manifest remembers what was verified (size, mtime_ns,
sha256) so a normal start re-hashes nothing. This is the only module that imports `requests`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from cnntrain import __version__
from cnntrain.constants import (
    IDX_UBYTE,
    TEST_IMAGES_FILE,
    TEST_LABELS_FILE,
    TRAIN_IMAGES_FILE,
    TRAIN_LABELS_FILE,
)
from cnntrain.errors import DataError
from cnntrain.fileio import atomic_writer, fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: downloads are simply not serialised
    fcntl = None

__all__ = [
    "MNIST_FILES",
    "DEFAULT_MIRRORS",
    "resolve_data_dir",
    "resolve_mirrors",
    "ensure_mnist",
]

#: Decompressed file name -> (size in bytes, SHA-256 of the decompressed content).
MNIST_FILES: dict[str, tuple[int, str]] = {
    TRAIN_IMAGES_FILE: (
        47040016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    TRAIN_LABELS_FILE: (
        60008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    TEST_IMAGES_FILE: (
        7840016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    TEST_LABELS_FILE: (
        10008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

#: Public mirrors, always tried after the user's own (yann.lecun.com no longer serves the files).
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

ENV_DATA_DIR = "CNNTRAIN_DATA_DIR"
ENV_MIRRORS = "CNNTRAIN_MNIST_MIRRORS"

_MANIFEST = ".cnntrain-verified.json"
_LOCK = ".cnntrain.lock"
_PART = ".part"
_CHUNK = 1 << 16
# Without urllib3's read1 (urllib3 1.x) a read waits for its whole size: small reads keep a
# trickle from hiding behind one.
_SMALL_CHUNK = 1 << 10
_GZIP_MAGIC = b"\x1f\x8b"
# Statuses worth asking again for; every other 4xx means this mirror will not have the file.
_TRANSIENT_STATUS = frozenset({408, 429})

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

# The backoff's wait and the clock that measures silence, looked up at call time so tests can
# record them instead of waiting.
_sleep = time.sleep
_clock = time.monotonic


# --------------------------------------------------------------------------- where and from where


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def resolve_data_dir(cli_dir=None, config_dir=None) -> Path:
    """The MNIST folder; the first of these that is set wins.

    `cli_dir` (`--data-dir`), env `CNNTRAIN_DATA_DIR`, `config_dir` (the config's `[data] dir`),
    `$XDG_CACHE_HOME/cnntrain/mnist`, `~/.cache/cnntrain/mnist`. Empty strings count as unset;
    `~` is expanded. A relative XDG_CACHE_HOME is ignored, as the XDG spec asks.
    """
    for candidate in (cli_dir, _env(ENV_DATA_DIR), config_dir):
        if candidate is not None and str(candidate).strip():
            return Path(os.path.abspath(os.path.expanduser(str(candidate).strip())))
    xdg = _env("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "cnntrain" / "mnist"


def _split_mirrors(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = re.split(r"[,\n]", value)
    return [str(m).strip() for m in value if m is not None and str(m).strip()]


def _normalise_mirror(mirror: str) -> str:
    # A base URL without its trailing slash would lose its last segment when joined.
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https"):
        return mirror if mirror.endswith("/") else mirror + "/"
    if scheme == "file" or len(scheme) > 1:
        return mirror
    return os.path.expanduser(mirror)


def resolve_mirrors(cli_mirrors=(), config_mirrors=()) -> list[str]:
    """The mirrors to try, in order, duplicates removed.

    The user's own come from `cli_mirrors` (`--mirror`) if any, else env `CNNTRAIN_MNIST_MIRRORS`
    (comma-separated), else `config_mirrors` (a sequence, or a comma/newline separated string);
    `DEFAULT_MIRRORS` always follow. A mirror is an http(s) base URL, a file:// URL or a folder
    that holds the files (as .gz or decompressed).
    """
    own = _split_mirrors(cli_mirrors)
    if not own:
        own = _split_mirrors(_env(ENV_MIRRORS))
    if not own:
        own = _split_mirrors(config_mirrors)
    result: list[str] = []
    for mirror in [*own, *DEFAULT_MIRRORS]:
        mirror = _normalise_mirror(mirror)
        if mirror not in result:
            result.append(mirror)
    return result


# --------------------------------------------------------------------------- verification state


def _sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content (the one place cached files are hashed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(data_dir: Path) -> dict:
    try:
        with open(data_dir / _MANIFEST, encoding="utf-8") as f:
            entries = json.load(f).get("files", {})
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # missing or damaged: everything is simply re-verified


def _write_manifest(data_dir: Path, entries: dict) -> None:
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


def _stat_key(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def _settled_stat(path: Path) -> os.stat_result:
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


def _manifest_entry(st: os.stat_result, sha256: str) -> dict:
    """What the manifest records of a file whose content hashed to `sha256` when it had the
    stat `st` (taken before hashing: a change during or after it shows as another stat)."""
    return {**_stat_key(st), "sha256": sha256}


def _trusted(path: Path, entry, size: int, sha256: str) -> bool:
    """True if the manifest vouches for `path` as it is now: no hashing, one stat."""
    if not isinstance(entry, dict) or entry.get("sha256") != sha256 or entry.get("size") != size:
        return False
    try:
        now = _stat_key(path.stat())
    except OSError:
        return False
    return all(entry.get(key) == now[key] for key in _STAT_KEYS)


class _DirLock:
    """An exclusive flock on a lock file in the data folder, held while anything is written.

    The lock file is never deleted: removing it would let a third process lock a fresh inode
    while a second one still waits on the old.
    """

    def __init__(self, directory: Path, announce: bool):
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
            raise DataError(_local_failure(_Fatal("create the lock file", self.path, e))) from e
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


# --------------------------------------------------------------------------- one download


class _Transient(Exception):
    """Worth another attempt at the same mirror (5xx, connection, timeout, truncation)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        # the mirror itself cannot be reached: later files skip it
        self.unreachable = unreachable


class _Permanent(Exception):
    """This mirror will not give us this file (4xx, wrong content): go to the next one."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class _Fatal(Exception):
    """A local problem (disk full, folder not writable) that no mirror can fix."""

    def __init__(self, what: str, path: Path, error: OSError):
        super().__init__(f"cannot {what} {path}: {error.strerror or error}")
        self.path, self.error = path, error


_ELSEWHERE = f"--data-dir DIR, --set data.dir=DIR or {ENV_DATA_DIR}"


def _local_failure(exc: _Fatal) -> str:
    """One line for a write into the data folder that failed: the cause and the way out."""
    folder = exc.path.parent
    code = exc.error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc}; make room in {folder} or choose another folder with {_ELSEWHERE}"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the data folder {folder} is not writable ({exc.error.strerror or exc.error}); "
                f"fix its permissions or choose another folder with {_ELSEWHERE}")
    return f"{exc}; choose another folder with {_ELSEWHERE}"


class _Verifier:
    """Turns a stream of received bytes into the verified decompressed file.

    The first bytes decide the format: gzip is inflated on the fly; raw IDX is taken as is (a
    folder of decompressed files, or a server that decoded a Content-Encoding). Anything else,
    typically an HTML error page served with 200, is refused at once, before reading on.
    """

    def __init__(self, out, size: int, sha256: str, content_type: str | None, bar):
        self.out, self.size, self.sha256 = out, size, sha256
        self.content_type = content_type
        self.bar = bar
        self.head = b""
        self.mode = None  # "gzip" or "raw", decided by the first bytes
        self.inflater = None
        self.written = 0
        self.received = 0
        self.digest = hashlib.sha256()

    def _describe_received(self) -> str:
        ctype = f"Content-Type {self.content_type}; " if self.content_type else ""
        return f"{ctype}first bytes {bytes(self.head[:40])!r}"

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.mode is None:
            self.head += data
            if len(self.head) < 4:
                return
            data, self.head = self.head, self.head[:64]
            if data[:2] == _GZIP_MAGIC:
                self.mode = "gzip"
                self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif data[:3] == bytes([0, 0, IDX_UBYTE]):
                self.mode = "raw"
            else:
                raise _Permanent(f"received neither gzip nor IDX data "
                                 f"({self._describe_received()})")
        if self.mode == "raw":
            self._emit(data)
        else:
            self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            if self.inflater.eof:
                # Concatenated gzip members are legal; zero padding after the last is tolerated.
                if not data.strip(b"\0"):
                    return
                if data[:1] != _GZIP_MAGIC[:1]:
                    raise _Permanent(f"garbage after the end of the gzip data "
                                     f"({self._describe_received()})")
                self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                # Bounded output: a bad archive cannot balloon in memory before the size check.
                self._emit(self.inflater.decompress(data, 1 << 20))
            except zlib.error as e:
                raise _Permanent(f"corrupt gzip data ({e}; {self._describe_received()})") from e
            data = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self.written += len(data)
        if self.written > self.size:
            raise _Permanent(f"more than the expected {self.size} bytes of data "
                             f"({self._describe_received()})")
        self.digest.update(data)
        try:
            self.out.write(data)
        except OSError as e:
            raise _Fatal("write", Path(self.out.name), e) from e
        self.bar.update(len(data))

    def finish(self) -> None:
        if self.mode is None:
            raise _Permanent(f"only {self.received} bytes received ({self._describe_received()})")
        if self.mode == "gzip" and not self.inflater.eof:
            raise _Transient(f"truncated gzip data: the body ended after {self.received} bytes")
        if self.written != self.size:
            raise _Permanent(f"decompressed to {self.written} bytes, expected {self.size}")
        got = self.digest.hexdigest()
        if got != self.sha256:
            raise _Permanent(f"SHA-256 mismatch: got {got[:16]}..., expected {self.sha256[:16]}...")


def _short_reason(exc: BaseException) -> str:
    """One readable clause out of requests' nested exception text."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found[-1].strip()
    for pattern in (r"Read timed out", r"timed out", r"IncompleteRead\([^)]*\)",
                    r"Connection aborted", r"RemoteDisconnected\([^)]*\)"):
        match = re.search(pattern, text)
        if match:
            return match.group(0)
    return text if len(text) <= 160 else text[:157] + "..."


def _unreachable(exc: requests.exceptions.ConnectionError) -> bool:
    """True if no connection could be made at all (refused, no route, no such host)."""
    inner = exc.args[0] if exc.args else None
    return isinstance(getattr(inner, "reason", inner), urllib3.exceptions.NewConnectionError)


def _no_such_host(exc: requests.exceptions.ConnectionError) -> bool:
    """True if the host name did not resolve (a DNS answer, not a passing network fault)."""
    text = str(exc)
    return "Name or service not known" in text or "nodename nor servname" in text


def _chunks(response: requests.Response):
    """The body's chunks, each handed over as soon as it arrives: a read that waited for a
    full buffer would keep a trickling mirror from ever meeting the throughput floor."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_content(_SMALL_CHUNK)
        return
    while True:
        chunk = read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _cut_at(response: requests.Response) -> str:
    """Where the body stopped: "after 1,234 of 9,912,422 bytes" (as sent, before decoding)."""
    got = response.raw.tell()
    length = response.headers.get("Content-Length", "")
    of = f" of {int(length):,}" if length.isdigit() else ""
    return f"after {got:,}{of} bytes"


@contextmanager
def _open_http(session: requests.Session, url: str, timeout):
    """GET `url`, streamed: yields (content type, iterator over body chunks), errors classified."""
    try:
        response = session.get(url, stream=True, timeout=timeout)
    except requests.exceptions.SSLError as e:
        raise _Permanent(f"TLS error: {_short_reason(e)} (behind a TLS-inspecting proxy, point "
                         f"REQUESTS_CA_BUNDLE at its CA bundle)") from e
    except requests.exceptions.ConnectTimeout as e:
        raise _Transient("connect timed out", unreachable=True) from e
    except requests.exceptions.ReadTimeout as e:
        raise _Transient("read timed out waiting for the response") from e
    except requests.exceptions.ConnectionError as e:
        if _no_such_host(e):
            # Offline machines fail here for every public mirror: retrying only adds minutes.
            raise _Permanent(f"host not found: {_short_reason(e)}", unreachable=True) from e
        raise _Transient(f"connection failed: {_short_reason(e)}",
                         unreachable=_unreachable(e)) from e
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema, requests.exceptions.TooManyRedirects) as e:
        raise _Permanent(f"bad URL: {_short_reason(e)}") from e
    except requests.RequestException as e:
        raise _Transient(_short_reason(e)) from e
    with response:
        status = response.status_code
        if status != 200:
            reason = f"HTTP {status} {response.reason or ''}".rstrip()
            if status >= 500 or status in _TRANSIENT_STATUS:
                raise _Transient(reason)
            raise _Permanent(reason)

        def body():
            try:
                yield from _chunks(response)
            except (requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.ProtocolError) as e:
                reason = _short_reason(e)
                # an IncompleteRead's numbers are the ones _cut_at gives, less readably
                detail = "" if reason.startswith("IncompleteRead") else f" ({reason})"
                raise _Transient(f"body cut short {_cut_at(response)}{detail}") from e
            except (requests.exceptions.ConnectionError,
                    urllib3.exceptions.ReadTimeoutError) as e:
                # a read timeout inside the body: urllib3's own, or requests' ConnectionError
                what = "read timed out" if "timed out" in str(e) else "connection lost"
                raise _Transient(f"{what} during the body {_cut_at(response)}") from e
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                raise _Transient(_short_reason(e)) from e

        yield response.headers.get("Content-Type"), body()


@contextmanager
def _open_file(path: Path):
    """A local copy (a mirror folder's file or a .gz in the data folder), like _open_http."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _Permanent(f"cannot read {path}: {e.strerror or e}") from e

    def body():
        try:
            yield from iter(lambda: f.read(_CHUNK), b"")
        except OSError as e:
            raise _Permanent(f"cannot read {path}: {e.strerror or e}") from e

    with f:
        yield None, body()


def _is_http(source) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme.lower() in (
        "http", "https")


def _open_source(source, name: str, session, timeout):
    """Open `name` at `source`: a Path is that very file, a string is a mirror."""
    if isinstance(source, Path):
        return _open_file(source)
    if _is_http(source):
        return _open_http(session, source + name + ".gz", timeout)
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme == "file":
        folder = Path(urllib.request.url2pathname(parts.path))
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise _Permanent(f"unsupported URL scheme {scheme!r} (use http(s)://, file:// or a folder)")
    else:
        folder = Path(os.path.expanduser(source))
    if not folder.is_dir():
        raise _Permanent(f"no such folder {folder}")
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return _open_file(candidate)
    raise _Permanent(f"neither {name} nor {name}.gz is in {folder}")


class _MirrorWaits:
    """How long each mirror has kept us waiting, within one ensure_mnist call.

    An attempt's silence is the time from its start, or from the last data it received, to
    its end; the pause before a retry is waited too. Each request's connect and read timeouts
    are cut to what is left of the mirror's `patience`, so a mirror that accepts connections
    and never answers costs at most `patience` seconds in all, then is not asked again.
    """

    def __init__(self, patience: float):
        self.patience = patience
        self.spent: dict[str, float] = {}
        self.announced: set[str] = set()
        # mirror -> "all N attempts at FILE": it failed a file through all its retries, so each
        # later file gives it one attempt only
        self.exhausted: dict[str, str] = {}

    def left(self, source: str) -> float:
        return self.patience - self.spent.get(source, 0.0)

    def spend(self, source: str, seconds: float) -> None:
        self.spent[source] = self.spent.get(source, 0.0) + max(seconds, 0.0)

    def timeout(self, source: str, timeout: tuple) -> tuple:
        left = max(self.left(source), 0.001)
        return min(timeout[0], left), min(timeout[1], left)

    def given_up(self, source: str, reason: str) -> str:
        return (f"{reason}; no data for {self.spent.get(source, 0.0):.0f} s in all, "
                f"gave up on this mirror")


def _amount(n: int) -> str:
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

    def add(self, now: float, count: int) -> None:
        self.total += count
        self.marks.append((now, self.total))
        while len(self.marks) > 1 and now - self.marks[1][0] >= RATE_WINDOW:
            self.marks.popleft()
        since, before = self.marks[0]
        elapsed, got = now - since, self.total - before
        if elapsed >= RATE_WINDOW and got < MIN_RATE * elapsed:
            raise _Permanent(f"{_amount(got)} in {elapsed:.0f} s, below the "
                             f"{MIN_RATE / 1024:g} KiB/s floor", unreachable=True)


class _Watch:
    """One attempt at a mirror: `data(count)` marks bytes received (0 when the response
    starts) and holds them to the throughput floor; after _WAIT_NOTICE seconds without any,
    one line on stderr says which mirror is being waited on (once per mirror)."""

    def __init__(self, waits: _MirrorWaits, source: str, name: str):
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

    def data(self, count: int = 0) -> None:
        self.last = _clock()
        self.throughput.add(self.last, count)

    def _notice(self) -> None:
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


def _fetch_once(source, name: str, size: int, sha256: str, part: Path, session, timeout,
                progress: bool, on_data=lambda count=0: None) -> None:
    """One attempt: stream `source`'s copy of `name` into `part`, verified and fsynced.
    `on_data` is called when the response starts and with the size of every chunk received."""
    with _open_source(source, name, session, timeout) as (content_type, body):
        on_data(0)
        try:
            out = open(part, "wb")
        except OSError as e:
            raise _Fatal("write", part, e) from e
        with out, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                       disable=not progress, leave=False) as bar:
            verifier = _Verifier(out, size, sha256, content_type, bar)
            for chunk in body:
                on_data(len(chunk))
                verifier.feed(chunk)
            verifier.finish()
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise _Fatal("write", part, e) from e


def _place(part: Path, final: Path) -> None:
    """Rename a verified .part into place, with its mtime set one second back.

    File timestamps come from a coarse clock: a rewrite within the same tick would keep the
    mtime the manifest recorded. Backdating our own copy makes any later write visible.
    """
    try:
        st = part.stat()
        os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000_000))
        os.replace(part, final)
    except OSError as e:
        raise _Fatal("move into place", part, e) from e
    fsync_dir(final.parent)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # absent, or a read-only folder where nothing of ours can be either


def _tell(source, name: str, why: str, then: str) -> None:
    """One line on stderr for a failed attempt that the download goes on from."""
    where = source + name + ".gz" if _is_http(source) else str(source)
    print(f"{where}: {why}; {then}", file=sys.stderr, flush=True)


def _fetch(name, size, sha256, data_dir: Path, sources, session, timeout, retries, backoff,
           progress, unreachable: dict, waits: _MirrorWaits) -> list[str] | None:
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


def _fetch_from(source, name, size, sha256, data_dir: Path, session, timeout, retries, backoff,
                progress, unreachable: dict, waits: _MirrorWaits) -> str | None:
    """`name` from one source, retried as the design allows: None on success, else why not."""
    part = data_dir / (name + _PART)
    # A local file reads the same the second time: only the network is worth retrying, and
    # only at a mirror that has not already failed a file through all its retries.
    tries = 1 + retries if _is_http(source) and source not in waits.exhausted else 1
    attempt = 0
    while True:
        attempt += 1
        try:
            if _is_http(source):
                with _Watch(waits, source, name) as watch:
                    _fetch_once(source, name, size, sha256, part, session,
                                waits.timeout(source, timeout), progress, watch.data)
            else:
                _fetch_once(source, name, size, sha256, part, session, timeout, progress)
            _place(part, data_dir / name)
            return None
        except _Transient as e:
            pause = backoff * 2 ** (attempt - 1)
            patient = not _is_http(source) or pause < waits.left(source)
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
        except _Permanent as e:
            if e.unreachable:
                unreachable[source] = str(e)
            return str(e)
        except _Fatal as e:
            raise DataError(_local_failure(e)) from e
        finally:
            _remove(part)  # a no-op after success: the rename consumed it


_NOT_DOWNLOADED = "not downloaded yet"


def _check_cached(path: Path, size: int, sha256: str):
    """(None, its stat) if the file on disk is the right one, else (why not, None); hashing
    only when sizes agree. The stat is taken before hashing, for the manifest."""
    try:
        st = _settled_stat(path)
    except FileNotFoundError:
        return _NOT_DOWNLOADED, None
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


def _normalise_timeout(timeout):
    values = timeout if isinstance(timeout, (tuple, list)) else (timeout, timeout)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise ValueError(f"timeout must be a positive number or a (connect, read) pair, "
                         f"got {timeout!r}")
    return tuple(float(v) for v in values)


def _data_folder_problem(data_dir: Path, error: OSError) -> str:
    """One line for a data folder that cannot be made: what is in the way and the way out."""
    blocker = next((p for p in [data_dir, *data_dir.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return (f"cannot use {data_dir} as the data folder: {blocker} is a file, not a folder; "
                f"move it away or choose another folder with {_ELSEWHERE}")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot create the data folder {data_dir}: {blocker or data_dir.parent} is not "
                f"writable ({error.strerror or error}); fix its permissions or choose another "
                f"folder with {_ELSEWHERE}")
    return (f"cannot create the data folder {data_dir}: {error.strerror or error}; choose "
            f"another folder with {_ELSEWHERE}")


def ensure_mnist(data_dir, mirrors, *, progress=True, files=None, timeout=(10, 30),
                 retries=3, backoff=1.0, patience=MIRROR_PATIENCE,
                 verify=False) -> dict[str, Path]:
    """Make sure every file of `files` is in `data_dir`, decompressed and verified.

    `files` maps a decompressed file name to (size, sha256), MNIST_FILES when None (looked up
    at each call, so tests can put a table of small synthetic files in its place); each is
    fetched as `<name>.gz`
    from the `mirrors` in order (http(s) base URLs, file:// URLs or folders holding the .gz or
    decompressed files; a `<name>.gz` already in `data_dir` is used first). Transient failures
    (5xx, connection errors, timeouts, truncated bodies) are retried `retries` times, waiting
    `backoff`, 2*`backoff`, 4*`backoff`... seconds; a mirror that failed one file through all
    its retries gets a single attempt at each later file. A 4xx or wrong content moves to the
    next mirror at once. Each failed attempt that the download goes on from is told on
    stderr, one line. `timeout` is (connect, read) seconds for every request; a mirror that
    keeps us waiting without data for `patience` seconds in all (attempts and pauses summed)
    is given up, and after 5 s of silence stderr says which mirror is being waited on; a
    mirror that sends less than MIN_RATE bytes a second over the last RATE_WINDOW seconds
    of a download is given up too (later files do not ask either again). A file
    lands in place only after its decompressed size and SHA-256 match; a lock file serialises
    processes sharing the folder. What was verified is recorded, so a later call costs one
    stat per file (a file changed since, even with its mtime set back, is hashed again);
    `verify=True` hashes every file regardless. A cached file found corrupt is reported on
    stderr, one line, and fetched again.

    Returns {name: path}. Raises DataError, naming every mirror and why it failed and how to
    place the files by hand, when a file cannot be obtained.
    """
    files = MNIST_FILES if files is None else files
    data_dir = Path(os.path.expanduser(str(data_dir)))
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    sources = [_normalise_mirror(m) for m in _split_mirrors(mirrors)]
    timeout = _normalise_timeout(timeout)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(f"backoff must be a non-negative number, got {backoff!r}")
    if not isinstance(patience, (int, float)) or not patience > 0:
        raise ValueError(f"patience must be a positive number of seconds, got {patience!r}")
    paths = {name: data_dir / name for name in files}

    manifest = _read_manifest(data_dir)
    if not verify and all(_trusted(paths[n], manifest.get(n), s, h)
                          for n, (s, h) in files.items()):
        return paths

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(_data_folder_problem(data_dir, e)) from e

    with _DirLock(data_dir, announce=progress):
        # Re-read under the lock: another process may have finished the work meanwhile.
        manifest = _read_manifest(data_dir)
        verified, todo = set(), {}
        for name, (size, sha256) in files.items():
            _remove(data_dir / (name + _PART))  # left by a process that died mid-download
            if not verify and _trusted(paths[name], manifest.get(name), size, sha256):
                verified.add(name)
                continue
            problem, st = _check_cached(paths[name], size, sha256)
            if problem is None:
                manifest[name] = _manifest_entry(st, sha256)
                verified.add(name)
                continue
            todo[name] = problem
            manifest.pop(name, None)
            if problem != _NOT_DOWNLOADED:
                print(f"{paths[name]}: {problem}; fetching it again", file=sys.stderr,
                      flush=True)
        if not todo:
            _write_manifest(data_dir, manifest)
            return paths

        unreachable: dict[str, str] = {}
        waits = _MirrorWaits(float(patience))
        with requests.Session() as session:
            agent = session.headers["User-Agent"]
            session.headers["User-Agent"] = f"cnntrain/{__version__} {agent}"
            # The archives are gzip already; asking for identity keeps anything from re-encoding.
            session.headers["Accept-Encoding"] = "identity"
            for name, problem in todo.items():
                size, sha256 = files[name]
                local_gz = data_dir / (name + ".gz")
                here = [local_gz] if local_gz.is_file() else []
                failures = _fetch(name, size, sha256, data_dir, here + sources, session, timeout,
                                  retries, backoff, progress, unreachable, waits)
                if failures is not None:
                    _write_manifest(data_dir, manifest)  # forget what was found corrupt
                    missing = [n for n in files if n not in verified]
                    raise DataError(_failure_message(name, problem, failures, data_dir, missing))
                manifest[name] = _manifest_entry(_settled_stat(paths[name]), sha256)
                verified.add(name)
                _write_manifest(data_dir, manifest)  # progress survives a later failure
    return paths


def fetch_mnist(data_dir=None, mirrors=(), *, config_dir=None, config_mirrors=(), progress=True,
                verify=False) -> tuple[Path, dict[str, Path]]:
    """MNIST where the user wants it: the folder and the mirrors resolved from the flags
    (`data_dir`, `mirrors`), the environment and the config (`config_dir`, `config_mirrors`),
    then every file fetched if needed and verified (ensure_mnist). Returns (folder, paths)."""
    folder = resolve_data_dir(data_dir, config_dir)
    paths = ensure_mnist(folder, resolve_mirrors(mirrors, config_mirrors), progress=progress,
                         verify=verify)
    return folder, paths


def _failure_message(name, problem, failures, data_dir, missing) -> str:
    lines = [f"Could not get MNIST file {name} ({problem}) from any mirror:"]
    lines += [f"  {line}" for line in failures] or ["  (no mirror was given)"]
    lines.append(f"To place the files by hand, put these in {data_dir} "
                 f"(decompressed, or as .gz):")
    lines += [f"  {n}" for n in missing]
    lines.append(f"or give a reachable mirror (a URL or a folder holding them) with --mirror "
                 f"or {ENV_MIRRORS}.")
    return "\n".join(lines)
