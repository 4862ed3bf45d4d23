"""`cnntrain serve`: a page to draw a digit on, and the JSON API behind it.

The standard library's ThreadingHTTPServer, no framework. Routes:

  GET  /              the drawing page (cnntrain/apps/static/draw.html, shipped in the package)
  GET  /api/model     the model's summary (name, epoch, test accuracy, parameters, layers)
  POST /api/predict   {"width": W, "height": H, "pixels": [W*H grey levels 0..255, row-major]}
                      or {"png": "<base64 PNG, or a data: URL>"} (needs Pillow)
                      -> {"prediction", "probabilities", "field"}: the digit, the ten class
                      probabilities and the 28x28 field the network saw (ink high, in [0, 1])

Safe by default: bound to loopback unless asked otherwise; bodies and images are size-limited
before anything is decoded; every refusal is a JSON {"error": one line} with a 4xx code and one
log line, never a traceback; only the page in memory is served (no request path reaches the
file system); the page is static and gets model facts through the API, so nothing from a
request is ever written into HTML. A loopback server also refuses requests whose Host is not a
loopback name, so a web page elsewhere cannot reach it through DNS rebinding. A crowd of
clients waits its turn (a listen queue of REQUEST_QUEUE, at most MAX_CONNECTIONS served at
once) rather than being reset, and every request that reaches the server gets a log line.
"""

import base64
import binascii
import hashlib
import http.server
import io
import ipaddress
import json
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import warnings
from http import HTTPStatus
from importlib import resources

import numpy as np

from cnntrain.errors import CnnTrainError

MAX_BODY_BYTES = 2 * 1024 * 1024   # a 280x280 canvas as JSON is about 160 kB
MAX_SIDE = 2048                    # pixels per side of an image to predict
MAX_PIXELS = 2048 * 2048           # pixels per image (checked before a PNG is decoded)
DRAIN_BYTES = 8 * 1024 * 1024      # an oversized body up to this is read and dropped, so the
                                   # client can finish sending and read the 413
SOCKET_TIMEOUT = 20.0              # seconds a client may stay silent mid-request or idle
# Connections the kernel completes and holds until the server takes them (listen()'s backlog;
# Linux caps it at net.core.somaxconn). socketserver's 5 made a burst of clients overflow it,
# and the kernel then dropped or reset their connections before the server ever saw them.
REQUEST_QUEUE = 1024
# Connections served at once, one thread each; past that, new ones wait in the queue above
# until one ends, so a flood costs waiting, never unbounded threads or lost requests.
MAX_CONNECTIONS = 256
SLOT_POLL = 0.2                    # seconds between checks for a stop while all slots are taken
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOOPBACK_NAMES = ("localhost",)
PILLOW_MISSING = ("PNG input needs Pillow on the server (pip install 'cnntrain[images]'); "
                  "or send {\"width\", \"height\", \"pixels\"} grey levels, which need nothing")
PAGE_RESOURCE = "static/draw.html"


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = HTTPStatus(status)
        self.message = message


# --------------------------------------------------------------------------- the page


def load_page():
    """The page's bytes from the installed package, and the Content-Security-Policy that lets
    exactly its own inline script and style run (by their SHA-256) and nothing else."""
    page = resources.files("cnntrain.apps").joinpath(PAGE_RESOURCE).read_bytes()
    hashes = {}
    for tag in ("script", "style"):
        blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S)
        hashes[tag] = " ".join(
            "'sha256-%s'" % base64.b64encode(hashlib.sha256(block).digest()).decode()
            for block in blocks) or "'none'"
    policy = ("default-src 'none'; "
              f"script-src {hashes['script']}; style-src {hashes['style']}; "
              "connect-src 'self'; img-src 'self' data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, policy


# --------------------------------------------------------------------------- requests


def is_loopback(host):
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host):
    """The warning to print when `host` makes the server reachable from other machines."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}, not on loopback: anyone who can reach this machine "
            "can use the server (it has no login); drop --host to keep it local")


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_body(body):
    """Request bytes -> a JSON object (dict); RequestError 400 for anything else."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text; send JSON") from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply") from None
    except ValueError as exc:
        reason = str(exc).splitlines()[0][:120]
        raise RequestError(400, f"the body is not valid JSON ({reason})") from None
    if not isinstance(value, dict):
        raise RequestError(400, "expected a JSON object: {\"width\", \"height\", \"pixels\"} "
                                "or {\"png\"}")
    return value


def _check_size(width, height):
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise RequestError(413, f"the image is {width}x{height} pixels; the limit is "
                                f"{MAX_SIDE} per side and {MAX_PIXELS:,} in all")


def grey_from_array(request):
    """{"width", "height", "pixels"} -> (H, W) float32 grey levels in [0, 1]."""
    unknown = sorted(set(request) - {"width", "height", "pixels"})
    if unknown:
        raise RequestError(400, f"unknown key '{unknown[0][:40]}'; a grey-level request has "
                                "exactly width, height and pixels")
    size = {}
    for key in ("width", "height"):
        value = request.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(400, f"'{key}' must be a positive integer (pixels)")
        size[key] = value
    width, height = size["width"], size["height"]
    _check_size(width, height)
    pixels = request.get("pixels")
    if not isinstance(pixels, list):
        raise RequestError(400, "'pixels' must be a flat list of width*height grey levels "
                                "0..255, row by row")
    if len(pixels) != width * height:
        raise RequestError(400, f"'pixels' holds {len(pixels)} values; width*height is "
                                f"{width * height}")
    try:
        grey = np.array(pixels)
    except (ValueError, OverflowError):
        grey = None
    if grey is None or grey.ndim != 1 or grey.dtype.kind not in "iuf":
        raise RequestError(400, "'pixels' must hold only numbers (grey levels 0..255)")
    grey = grey.astype(np.float64)
    if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 255:
        raise RequestError(400, "grey levels must lie in 0..255")
    return (grey / 255.0).reshape(height, width).astype(np.float32)


def grey_from_png(request):
    """{"png": base64 text or a data: URL} -> (H, W) float32 grey levels in [0, 1];
    transparent parts count as white paper."""
    unknown = sorted(set(request) - {"png"})
    if unknown:
        raise RequestError(400, f"unknown key '{unknown[0][:40]}'; a PNG request has only 'png'")
    text = request["png"]
    if not isinstance(text, str):
        raise RequestError(400, "'png' must be a string: base64 PNG data or a data: URL")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(
                400, "a data: URL in 'png' must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'png' is not valid base64") from None
    if not data.startswith(PNG_SIGNATURE):
        raise RequestError(400, "'png' does not hold PNG data (wrong signature)")
    if data[12:16] != b"IHDR" or len(data) < 24:
        raise RequestError(400, "'png' is not a readable PNG (no IHDR header)")
    # The size, from the header, before Pillow (or its decompression-bomb check) sees it.
    _check_size(*struct.unpack(">II", data[16:24]))
    try:
        from PIL import Image
    except ImportError:
        raise RequestError(415, PILLOW_MISSING) from None
    from cnntrain.data.inputs import error_reason, picture_grey

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
                _check_size(*picture.size)
                picture.load()
                grey = picture_grey(picture)
    except RequestError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise RequestError(413, "the PNG is too large to decode") from None
    except Exception as exc:  # Pillow signals a corrupt file with many exception types
        raise RequestError(400, f"'png' is not a readable PNG ({error_reason(exc)})") from None
    return grey


def grey_from_request(request):
    """A parsed /api/predict request -> (H, W) float32 grey levels in [0, 1]."""
    if "png" in request:
        return grey_from_png(request)
    if "pixels" in request:
        return grey_from_array(request)
    raise RequestError(400, "send {\"width\": W, \"height\": H, \"pixels\": [...]} or "
                            "{\"png\": \"<base64>\"}")


def predict_grey(predictor, grey):
    """(H, W) grey levels -> the /api/predict answer. The server's threads share `predictor`:
    a Predictor lets their forward passes take turns."""
    from cnntrain.data.preprocess import NoInkError, to_mnist_field

    try:
        field = to_mnist_field(grey)
    except NoInkError as exc:
        raise RequestError(422, str(exc)) from None
    except (CnnTrainError, ValueError) as exc:
        raise RequestError(400, str(exc).splitlines()[0]) from None
    probabilities = np.asarray(predictor.probabilities(field[None]), dtype=np.float64)[0]
    return {
        "prediction": int(np.argmax(probabilities)),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "field": np.round(field.astype(np.float64), 4).tolist(),
    }


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def json_bytes(value):
    return json.dumps(value, default=_json_default).encode("utf-8")


# --------------------------------------------------------------------------- the server


def _printable(text):
    """A log-safe one-liner: control characters from a request become escapes."""
    return "".join(c if c.isprintable() else "\\x%02x" % ord(c) if ord(c) < 256
                   else "\\u%04x" % ord(c) for c in text)


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection. Every answer goes through _send; every refusal through _refuse."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    # Headers and body go out in two writes; with Nagle's algorithm on, the second would wait
    # for the client's delayed ACK (tens of milliseconds) on every keep-alive answer.
    disable_nagle_algorithm = True
    server_version = "cnntrain-serve"
    error_message_format = ""  # never used: send_error is replaced below

    def setup(self):
        self.timeout = self.server.socket_timeout
        super().setup()

    # ---- answers

    def _send(self, status, body, content_type, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in extra:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, value, status=200, extra=()):
        self._send(status, json_bytes(value), "application/json", extra)

    def _refuse(self, status, message, extra=()):
        self._refusal = message
        self._send_json({"error": message}, status, extra)

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, unknown method, oversized headers...) as
        JSON too, not its HTML page."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method nobody implements: still the client's
            code, phrase = HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed; use GET or POST"
        elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code, phrase = HTTPStatus.BAD_REQUEST, "unsupported HTTP version; use HTTP/1.1"
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # An unparsable request line leaves the version at 0.9, which would suppress the
            # status line and headers; answer it as HTTP/1.0 instead.
            self.request_version = "HTTP/1.0"
        if not hasattr(self, "command") or self.command is None:
            self.command = ""
        self._refuse(code, phrase.lower() if isinstance(phrase, str) else "error")

    def log_request(self, code="-", size="-"):
        """One line per answer; a refusal's line ends with its reason."""
        code = getattr(code, "value", code)
        reason, self._refusal = getattr(self, "_refusal", None), None
        self.log_message('"%s" %s%s', self.requestline, code, f" {reason}" if reason else "")

    def log_message(self, format, *args):
        self.server.log(f"{self.address_string()} {_printable(format % args)}")

    # ---- routing

    def _host_allowed(self):
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True
        name = host.strip()
        if name.startswith("["):
            name = name[1:name.find("]")] if "]" in name else name
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        return is_loopback(name)

    def _route(self):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if not self._host_allowed():
            raise RequestError(421, "this server answers only requests addressed to a loopback "
                                    "name (127.0.0.1, localhost, [::1])")
        return path

    def _answer(self, route, allow):
        """Run route(); a RequestError becomes its 4xx, anything else (a bug) a 500 with the
        traceback in the log, so the client always gets an answer."""
        try:
            route(self._route())
        except RequestError as exc:
            self._refuse(exc.status, exc.message, [("Allow", allow)] if exc.status == 405 else ())
        except (ConnectionError, TimeoutError):
            raise  # the client went away: handle_error logs one line
        except Exception:
            self.server.log("internal error:\n" + traceback.format_exc().rstrip())
            self.close_connection = True
            self._refuse(500, "internal error; the server's log has the details")

    def do_GET(self):
        self._answer(self._get, allow="POST")

    do_HEAD = do_GET

    def do_POST(self):
        self._answer(self._post, allow="GET")

    def _get(self, path):
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8",
                       [("Content-Security-Policy", self.server.page_policy),
                        ("X-Frame-Options", "DENY")])
        elif path == "/api/model":
            self._send(200, self.server.summary_json, "application/json")
        elif path == "/api/predict":
            raise RequestError(405, "POST your image to /api/predict (JSON)")
        else:
            raise RequestError(404, "no such page; the page is at / and the API at "
                                    "/api/model and /api/predict")

    def _post(self, path):
        if path != "/api/predict":
            if path in ("/", "/index.html", "/api/model"):
                raise RequestError(405, "this path answers GET only")
            raise RequestError(404, "no such API; POST images to /api/predict")
        request = parse_json_body(self._read_body())
        grey = grey_from_request(request)
        self._send_json(predict_grey(self.server.predictor, grey))

    def _refuse_method(self):
        self.close_connection = True
        self._refuse(405, "method not allowed; use GET or POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _read_body(self):
        """The request body, whole; RequestError before reading anything unreasonable."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length, not chunked")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise RequestError(411, "a Content-Length header is required")
        if not length_text.strip().isdigit():
            self.close_connection = True
            raise RequestError(400, "the Content-Length header is not a number")
        length = int(length_text)
        if length > self.server.max_body_bytes:
            self._drain(length)
            raise RequestError(413, f"the body is {length:,} bytes; the limit is "
                                    f"{self.server.max_body_bytes:,}")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Also what keeps other web sites' pages out: a cross-site JSON POST needs a CORS
            # preflight, which this server never grants.
            self._drain(length)
            raise RequestError(415, "send the body as Content-Type: application/json")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, "the body ended before its Content-Length")
        return body

    def _drain(self, length):
        """Read and drop a body we refuse, up to DRAIN_BYTES, so the client can finish
        sending and then read the answer; the connection is closed after it."""
        self.close_connection = True
        remaining = min(length, DRAIN_BYTES) if length <= DRAIN_BYTES else 0
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass


class DigitServer(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer serving one predictor. `predictor` has .probabilities(fields)
    (N, 28, 28) -> (N, 10), safe to call from several threads (as a Predictor is), and
    .summary() -> dict; `log` takes one line at a time.

    At most `max_connections` connections are served at once, each by its own thread; while
    all are taken, the next connection waits for a slot and the ones after it wait, completed
    by the kernel, in a listen queue of REQUEST_QUEUE, so a burst of clients is answered in
    turn instead of being reset."""

    daemon_threads = True      # a stuck client never keeps the process alive after a stop
    allow_reuse_address = True
    request_queue_size = REQUEST_QUEUE

    def __init__(self, predictor, host="127.0.0.1", port=8000, *, log=None,
                 max_body_bytes=MAX_BODY_BYTES, socket_timeout=SOCKET_TIMEOUT,
                 max_connections=MAX_CONNECTIONS):
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self.predictor = predictor
        self.socket_timeout = socket_timeout
        self.summary_json = json_bytes(predictor.summary())
        self.page, self.page_policy = load_page()
        self.max_body_bytes = max_body_bytes
        self.loopback_only = is_loopback(host)
        self._log_stream = log or sys.stderr
        self._log_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), Handler)

    def server_bind(self):
        """Bind without HTTPServer's reverse DNS lookup of the address (slow off loopback)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self):
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def log(self, line):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._log_lock:
            try:
                self._log_stream.write(f"{stamp} {line}\n")
                self._log_stream.flush()
            except (OSError, ValueError):
                pass  # a closed log must not take the server down

    def process_request(self, request, client_address):
        """Serve the connection in a thread once a slot is free; until then nothing more is
        accepted and new clients wait in the listen queue."""
        if not self._slots.acquire(blocking=False):
            self.log(f"all {self.max_connections} connections busy; new ones wait their turn")
            while not self._slots.acquire(timeout=SLOT_POLL):
                if self._stopping.is_set():
                    self.log(f"{client_address[0]} closed unanswered: the server is stopping")
                    self.shutdown_request(request)
                    return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()  # no thread could be started to take the slot
            raise
        # A stop (KeyboardInterrupt, _Stop) may land after the thread started, which then
        # releases the slot itself; and the server stops, so a slot left taken costs nothing.

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown(self):
        self._stopping.set()
        super().shutdown()

    def handle_error(self, request, client_address):
        """A client that went away mid-answer is one log line; anything else is a bug and
        keeps its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            self.log(f"{client_address[0]} connection lost ({type(exc).__name__})")
            return
        super().handle_error(request, client_address)


class _Stop(BaseException):
    """Raised in the main thread by the SIGTERM handler to leave serve_forever. A
    BaseException, as KeyboardInterrupt is: socketserver hands every Exception raised while
    it dispatches a request to handle_error and serves on, which would swallow the stop."""


def serve_until_stopped(server, echo=print):
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then close the socket and return normally."""
    def on_sigterm(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    reason = "stopped"
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        reason = "interrupted (Ctrl-C); stopped"
    except _Stop:
        reason = "terminated (SIGTERM); stopped"
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    echo(reason)


def open_server(predictor, host, port, *, log=None):
    """DigitServer on host:port; CnnTrainError (one line) when the address cannot be had."""
    try:
        return DigitServer(predictor, host, port, log=log)
    except socket.gaierror as exc:
        raise CnnTrainError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                            "check --host") from None
    except OSError as exc:
        hint = ("choose another with --port (or --port 0 for any free one)"
                if exc.errno in (98, 48) else "check --host")
        raise CnnTrainError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") \
            from None


def run(checkpoint, host="127.0.0.1", port=8000, *, echo=print, warn=None):
    """`cnntrain serve`: load the checkpoint, listen, print the address, serve until stopped."""
    from cnntrain.apps.inference import load_predictor

    predictor = load_predictor(checkpoint)
    warning = exposure_warning(host)
    if warning:
        (warn or echo)(warning)
    server = open_server(predictor, host, port)
    summary = predictor.summary()
    echo(f"serving {summary.get('name', checkpoint)} (epoch {summary.get('epoch')}) at "
         f"{server.url}  (Ctrl-C stops)")
    serve_until_stopped(server, echo)
