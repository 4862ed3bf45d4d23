"""`cnntrain serve`: a page to draw a digit on, and the JSON API behind it.

The standard library's ThreadingHTTPServer, no framework. Routes:

  GET  /              the drawing page (cnntrain/apps/static/draw.html, shipped in the package)
  GET  /explore       the backprop explorer (cnntrain/apps/static/explore.html): draw, choose
                      the label, see every layer's output and delta (POST /api/explain)
  GET  /api/model     the model's summary (name, epoch, test accuracy, parameters, layers)
  POST /api/predict   {"width": W, "height": H, "pixels": [W*H grey levels 0..255, row-major]}
                      or {"png": "<base64 PNG, or a data: URL>"} (needs Pillow)
                      -> {"prediction", "probabilities", "field"}: the digit, the ten class
                      probabilities and the 28x28 field the network saw (ink high, in [0, 1]);
                      a committee's answer adds every member's ("members")
  POST /api/explain   an image as above plus {"target": k} -> every layer's output, delta and
                      weight gradient for that label (cnntrain/apps/explorer.py)
  POST /api/step      one SGD step on the session's copy of the weights; POST /api/reset
                      restores the copy from the checkpoint

Safe by default: bound to loopback unless asked otherwise; bodies and images are size-limited
before anything is decoded; every refusal is a JSON {"error": one line} with a 4xx code and one
log line, never a traceback; only the page in memory is served (no request path reaches the
file system); the page is static and gets model facts through the API, so nothing from a
request is ever written into HTML. A loopback server also refuses requests whose Host is not a
loopback name, so a web page elsewhere cannot reach it through DNS rebinding. A crowd of
clients waits its turn (a listen queue of REQUEST_QUEUE, at most MAX_CONNECTIONS served at
once) rather than being reset, and every request that reaches the server gets a log line.

The modules: cnntrain/apps/serveapi.py decodes and checks a request and shapes the answer;
cnntrain/apps/servehttp.py is the handler (routes, page, refusals); this one is the server
(its connection slots, its log, stopping on Ctrl-C or SIGTERM) and the `cnntrain serve` command.
"""

import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time

from cnntrain.apps.explorer import Explorer
from cnntrain.apps.serveapi import json_bytes
from cnntrain.apps.servehttp import SOCKET_TIMEOUT, Handler, is_loopback, load_pages
from cnntrain.errors import CnnTrainError

MAX_BODY_BYTES = 2 * 1024 * 1024   # a 280x280 canvas as JSON is about 160 kB
# Connections the kernel completes and holds until the server takes them (listen()'s backlog;
# Linux caps it at net.core.somaxconn). socketserver's 5 made a burst of clients overflow it,
# and the kernel then dropped or reset their connections before the server ever saw them.
REQUEST_QUEUE = 1024
# Connections served at once, one thread each; past that, new ones wait in the queue above
# until one ends, so a flood costs waiting, never unbounded threads or lost requests.
MAX_CONNECTIONS = 256
SLOT_POLL = 0.2                    # seconds between checks for a stop while all slots are taken


def exposure_warning(host):
    """The warning to print when `host` makes the server reachable from other machines."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}, not on loopback: anyone who can reach this machine "
            "can use the server (it has no login); drop --host to keep it local")


class DigitServer(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer serving one predictor. `predictor` has .probabilities(fields)
    (N, 28, 28) -> (N, 10), safe to call from several threads (as a Predictor is), and
    .summary() -> dict; it may be a Committee (cnntrain.apps.committee), whose answers also
    name its members' own. `log` takes one line at a time.

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
        self.explorer = Explorer(predictor)
        self.socket_timeout = socket_timeout
        self.summary_json = json_bytes(predictor.summary())
        self.pages = load_pages()
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


def run(checkpoints, host="127.0.0.1", port=8000, *, combine=None, tta=False, echo=print,
        warn=None):
    """`cnntrain serve`: load the checkpoint, or the committee of several (combine, tta: see
    cnntrain.apps.committee; None combines by its DEFAULT_COMBINE), listen, print the
    address, serve until stopped."""
    from cnntrain.apps.committee import load_model

    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]
    predictor = load_model(list(checkpoints), combine=combine, tta=tta)
    warning = exposure_warning(host)
    if warning:
        (warn or echo)(warning)
    server = open_server(predictor, host, port)
    summary = predictor.summary()
    if "members" in summary:
        what = (f"{summary['name']} (combine {summary['combine']}"
                f"{', tta' if summary['tta'] else ''})")
    else:
        what = f"{summary.get('name', checkpoints[0])} (epoch {summary.get('epoch')})"
    echo(f"serving {what} at {server.url}  (Ctrl-C stops)")
    serve_until_stopped(server, echo)
