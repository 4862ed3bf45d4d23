"""Test helpers: small synthetic MNIST-shaped IDX files, and a loopback HTTP mirror with faults.

The server answers `GET /<any>/<file name>` with the file of that name, so one server plays as
many mirrors as the test likes (`server.mirror("a")`, `server.mirror("b")`), and faults are
injected per path pattern and per request count:

    with MnistServer(files=synthetic.gz) as server:
        server.add_fault("/a/*", "status", code=404)
        server.add_fault("/b/train-labels*", "truncate", times=1)
        ensure_mnist(tmp, [server.mirror("a"), server.mirror("b")], files=synthetic.table)
        assert server.hits("/b/train-labels*") == 2
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import http.server
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

HTML_ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
                   b"<body><h1>Please try again later</h1></body></html>\n")

FAULTS = ("status", "html", "truncate", "stall", "corrupt", "delay", "reset", "trickle")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian dims, payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


@dataclass(frozen=True)
class SyntheticMnist:
    """MNIST-shaped data small enough for tests.

    images are uint8 (N, 28, 28); raw maps each standard decompressed file name to its IDX
    bytes, gz to the gzipped bytes under `<name>.gz`, and table is the checksum table
    (`files=` of ensure_mnist) that accepts exactly these files.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    raw: dict
    gz: dict
    table: dict

    def write(self, folder, compressed: bool = False) -> Path:
        """Write the four files (decompressed, or as .gz) into `folder`; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (self.gz if compressed else self.raw).items():
            (folder / name).write_bytes(data)
        return folder


def _images(labels: np.ndarray, rng: np.random.Generator, first_index: int) -> np.ndarray:
    # Learnable on purpose (a bright block whose place is the class, over faint noise) so a
    # trainer test can see accuracy rise; the top-left two pixels hold the sample's index, so
    # a test can tell which source sample ended up where.
    n = len(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 4 + 7 * row: 10 + 7 * row, 2 + 6 * col: 8 + 6 * col] = 255
    index = np.arange(first_index, first_index + n)
    images[:, 0, 0] = index % 256
    images[:, 0, 1] = index // 256
    return images


def make_synthetic_mnist(n_train: int = 600, n_test: int = 200, seed: int = 0) -> SyntheticMnist:
    """Deterministic synthetic MNIST with `n_train` training and `n_test` test samples."""
    rng = np.random.default_rng(seed)
    train_labels = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    train_images = _images(train_labels, rng, 0)
    test_images = _images(test_labels, rng, 0)
    raw = {
        TRAIN_IMAGES: idx_bytes(train_images),
        TRAIN_LABELS: idx_bytes(train_labels),
        TEST_IMAGES: idx_bytes(test_images),
        TEST_LABELS: idx_bytes(test_labels),
    }
    # mtime=0 keeps the archives byte-identical from run to run
    gz = {name + ".gz": gzip.compress(data, mtime=0) for name, data in raw.items()}
    table = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in raw.items()}
    return SyntheticMnist(train_images, train_labels, test_images, test_labels, raw, gz, table)


def _flip_middle_byte(body: bytes) -> bytes:
    """Same archive format and decompressed size, different content: only a checksum tells."""
    try:
        data = bytearray(gzip.decompress(body))
    except OSError:
        data = bytearray(body)
        data[len(data) // 2] ^= 0xFF
        return bytes(data)
    data[len(data) // 2] ^= 0xFF
    return gzip.compress(bytes(data), mtime=0)


def free_port() -> int:
    """A loopback port nothing listens on (right now): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Fault:
    pattern: str
    kind: str
    times: int | None
    params: dict


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        fault = owner._hit(path)
        kind = fault.kind if fault else None
        params = fault.params if fault else {}
        stop = owner._stopping

        if kind == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "status":
            return self._send(params.get("code", 500), b"error\n", "text/plain")
        if kind == "html":
            return self._send(200, HTML_ERROR_PAGE, "text/html; charset=utf-8")
        if kind == "stall" and params.get("before_headers", False):
            stop.wait(params.get("seconds", 30))
            return
        if kind == "delay":
            stop.wait(params.get("seconds", 0.2))

        body = owner._content(path.rsplit("/", 1)[-1])
        if body is None:
            return self._send(404, b"not found\n", "text/plain")
        if kind == "corrupt":
            body = _flip_middle_byte(body)
        if kind == "truncate":
            keep = params.get("keep", len(body) // 2)
            self._send(200, body[:keep], "application/gzip", length=len(body))
            self.close_connection = True
            return
        if kind == "trickle":
            return self._trickle(body, params, stop)
        if kind == "stall":
            keep = params.get("keep", 16)
            self._send(200, body[:keep], "application/gzip", length=len(body))
            stop.wait(params.get("seconds", 30))
            self.close_connection = True
            return
        self._send(200, body, "application/gzip")

    def _trickle(self, body, params, stop):
        """Headers for the whole file, then chunk= bytes at a time with pause(every) between,
        until keep= bytes (all by default) are sent, the client leaves or the server stops."""
        chunk, every = params.get("chunk", 64), params.get("every", 1.0)
        length, body = len(body), body[:params.get("keep", len(body))]
        pause = params.get("pause", stop.wait)
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            for start in range(0, len(body), chunk):
                if stop.is_set():
                    return
                self.wfile.write(body[start:start + chunk])
                self.wfile.flush()
                pause(every)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on the trickle, as it should

    def _send(self, code, body, content_type, length=None):
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            view = memoryview(body)
            for start in range(0, len(view), 1 << 16):
                self.wfile.write(view[start:start + (1 << 16)])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout under test): nothing to tell it


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "MnistServer"


class MnistServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving MNIST-named files.

    `files` maps a file name (e.g. "train-images-idx3-ubyte.gz") to its bytes; `directory`
    serves the files of a folder instead (read at each request). Any path prefix is accepted,
    so each prefix acts as a separate mirror. Faults: see `add_fault`.
    """

    def __init__(self, files: dict | None = None, directory=None):
        self.files = dict(files or {})
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._hits: Counter = Counter()
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None

    # -- lifecycle
    def start(self) -> "MnistServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05}, name="mnist-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # releases stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> "MnistServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def mirror(self, name: str = "m") -> str:
        """The base URL of the mirror called `name` (a path prefix on this server)."""
        return f"{self.base_url}{name}/"

    # -- faults and bookkeeping
    def add_fault(self, pattern: str, kind: str, *, times: int | None = None, **params) -> None:
        """Answer requests whose path matches the glob `pattern` with a fault.

        The first `times` matching requests (all if None) get it, later ones are served
        normally; the earliest added rule that still applies wins. Kinds and their params:
        status (code=500), html (a 200 HTML page), truncate (Content-Length of the whole file,
        only keep= bytes sent, then close), stall (headers and keep=16 bytes, then silence for
        seconds=30 or until the server stops; before_headers=True stalls before anything),
        corrupt (one byte of the content flipped, sizes kept), delay (seconds=0.2, then served
        normally), reset (connection closed without a response), trickle (headers with the
        whole file's Content-Length, then chunk=64 bytes, pause(every=1.0), chunk=64 bytes...
        to the end, or to keep= bytes and then close; pause is a real wait that the server's
        stop cuts short unless a test passes its own, to move a fake clock instead).
        """
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._lock:
            self._faults.append(_Fault(pattern, kind, times, params))

    def hits(self, pattern: str = "*") -> int:
        """How many requests so far had a path matching the glob `pattern`."""
        with self._lock:
            return sum(n for path, n in self._hits.items() if fnmatch.fnmatchcase(path, pattern))

    def _hit(self, path: str) -> _Fault | None:
        with self._lock:
            self._hits[path] += 1
            for fault in self._faults:
                if fnmatch.fnmatchcase(path, fault.pattern) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _content(self, name: str) -> bytes | None:
        if name in self.files:
            return self.files[name]
        if self.directory is not None and name and not name.startswith("."):
            candidate = self.directory / name
            if candidate.is_file():
                return candidate.read_bytes()
        return None
