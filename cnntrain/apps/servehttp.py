"""The HTTP side of `cnntrain serve`: the request handler with its routes, the pages and their
Content-Security-Policy, and the loopback checks.

  GET  /              the drawing page (cnntrain/apps/static/draw.html, shipped in the package)
  GET  /explore       the backprop explorer (cnntrain/apps/static/explore.html)
  GET  /api/model     the model's summary
  POST /api/predict   a JSON image -> the prediction (cnntrain/apps/serveapi.py decodes it)
  POST /api/explain, /api/step, /api/reset   the backprop explorer (cnntrain/apps/explorer.py)

Every answer goes through one method and every refusal is a JSON {"error": one line} with a
4xx code and one log line, never a traceback (a bug is a 500, its traceback in the log). Bodies
are size- and type-checked before they are read; only the pages in memory are served (PAGES
maps their few paths to the package's files), so no request path reaches the file system. The
server these handlers run in is cnntrain/apps/serve.py.
"""

import base64
import hashlib
import http.server
import ipaddress
import re
import traceback
from http import HTTPStatus
from importlib import resources

from cnntrain.apps import explorer
from cnntrain.apps.serveapi import (
    RequestError,
    grey_from_request,
    json_bytes,
    parse_json_body,
    predict_grey,
)

DRAIN_BYTES = 8 * 1024 * 1024      # an oversized body up to this is read and dropped, so the
                                   # client can finish sending and read the 413
SOCKET_TIMEOUT = 20.0              # seconds a client may stay silent mid-request or idle
LOOPBACK_NAMES = ("localhost",)
# Request path -> the page (a file of cnntrain/apps/static/) it answers with; nothing else is
# ever read for a request.
PAGES = {"/": "draw.html", "/index.html": "draw.html", "/explore": "explore.html"}


def load_pages():
    """Every page of PAGES once: {file name: (bytes, Content-Security-Policy)}."""
    return {name: load_page(name) for name in sorted(set(PAGES.values()))}


def load_page(name="draw.html"):
    """A page's bytes from the installed package (cnntrain/apps/static/NAME), and the
    Content-Security-Policy that lets exactly its own inline script and style run (by their
    SHA-256) and nothing else."""
    page = resources.files("cnntrain.apps").joinpath("static", name).read_bytes()
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


def is_loopback(host):
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        if path in PAGES:
            page, policy = self.server.pages[PAGES[path]]
            self._send(200, page, "text/html; charset=utf-8",
                       [("Content-Security-Policy", policy), ("X-Frame-Options", "DENY")])
        elif path == "/api/model":
            self._send(200, self.server.summary_json, "application/json")
        elif path == "/api/predict":
            raise RequestError(405, "POST your image to /api/predict (JSON)")
        elif path in explorer.ROUTES:
            raise RequestError(405, f"POST JSON to {path}")
        else:
            raise RequestError(404, "no such page; the pages are / and /explore and the API "
                                    "is under /api/")

    def _post(self, path):
        if path in explorer.ROUTES:
            request = parse_json_body(self._read_body())
            self._send(200, self.server.explorer.answer(path, request), "application/json")
            return
        if path != "/api/predict":
            if path in PAGES or path == "/api/model":
                raise RequestError(405, "this path answers GET only")
            raise RequestError(404, "no such API; POST images to /api/predict, or to "
                                    + ", ".join(sorted(explorer.ROUTES)))
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

