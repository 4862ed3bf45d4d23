"""Opening one MNIST file at one source and streaming its bytes: an http(s) mirror through
`requests` (the only module that imports it), with every error it raises classified as
Transient or Permanent, or a local copy (a mirror folder, a file:// URL, a .gz in the data
folder). Each chunk is handed over as soon as it arrives, so the throughput floor sees it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import requests
import urllib3

from cnntrain import __version__
from cnntrain.data.failures import Permanent, Transient
from cnntrain.data.mirrors import is_http

_CHUNK = 1 << 16
# Without urllib3's read1 (urllib3 1.x) a read waits for its whole size: small reads keep a
# trickle from hiding behind one.
_SMALL_CHUNK = 1 << 10
# Statuses worth asking again for; every other 4xx means this mirror will not have the file.
_TRANSIENT_STATUS = frozenset({408, 429})


def new_session():
    """The one HTTP session of a download: cnntrain named in its User-Agent, and no
    Content-Encoding asked for."""
    session = requests.Session()
    agent = session.headers["User-Agent"]
    session.headers["User-Agent"] = f"cnntrain/{__version__} {agent}"
    # The archives are gzip already; asking for identity keeps anything from re-encoding.
    session.headers["Accept-Encoding"] = "identity"
    return session


def _short_reason(exc):
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


def _unreachable(exc):
    """True if no connection could be made at all (refused, no route, no such host)."""
    inner = exc.args[0] if exc.args else None
    return isinstance(getattr(inner, "reason", inner), urllib3.exceptions.NewConnectionError)


def _no_such_host(exc):
    """True if the host name did not resolve (a DNS answer, not a passing network fault)."""
    text = str(exc)
    return "Name or service not known" in text or "nodename nor servname" in text


def _chunks(response):
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


def _cut_at(response):
    """Where the body stopped: "after 1,234 of 9,912,422 bytes" (as sent, before decoding)."""
    got = response.raw.tell()
    length = response.headers.get("Content-Length", "")
    of = f" of {int(length):,}" if length.isdigit() else ""
    return f"after {got:,}{of} bytes"


@contextmanager
def _open_http(session, url, timeout):
    """GET `url`, streamed: yields (content type, iterator over body chunks), errors classified."""
    try:
        response = session.get(url, stream=True, timeout=timeout)
    except requests.exceptions.SSLError as e:
        raise Permanent(f"TLS error: {_short_reason(e)} (behind a TLS-inspecting proxy, point "
                         f"REQUESTS_CA_BUNDLE at its CA bundle)") from e
    except requests.exceptions.ConnectTimeout as e:
        raise Transient("connect timed out", unreachable=True) from e
    except requests.exceptions.ReadTimeout as e:
        raise Transient("read timed out waiting for the response") from e
    except requests.exceptions.ConnectionError as e:
        if _no_such_host(e):
            # Offline machines fail here for every public mirror: retrying only adds minutes.
            raise Permanent(f"host not found: {_short_reason(e)}", unreachable=True) from e
        raise Transient(f"connection failed: {_short_reason(e)}",
                         unreachable=_unreachable(e)) from e
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema, requests.exceptions.TooManyRedirects) as e:
        raise Permanent(f"bad URL: {_short_reason(e)}") from e
    except requests.RequestException as e:
        raise Transient(_short_reason(e)) from e
    with response:
        status = response.status_code
        if status != 200:
            reason = f"HTTP {status} {response.reason or ''}".rstrip()
            if status >= 500 or status in _TRANSIENT_STATUS:
                raise Transient(reason)
            raise Permanent(reason)

        def body():
            try:
                yield from _chunks(response)
            except (requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.ProtocolError) as e:
                reason = _short_reason(e)
                # an IncompleteRead's numbers are the ones _cut_at gives, less readably
                detail = "" if reason.startswith("IncompleteRead") else f" ({reason})"
                raise Transient(f"body cut short {_cut_at(response)}{detail}") from e
            except (requests.exceptions.ConnectionError,
                    urllib3.exceptions.ReadTimeoutError) as e:
                # a read timeout inside the body: urllib3's own, or requests' ConnectionError
                what = "read timed out" if "timed out" in str(e) else "connection lost"
                raise Transient(f"{what} during the body {_cut_at(response)}") from e
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                raise Transient(_short_reason(e)) from e

        yield response.headers.get("Content-Type"), body()


@contextmanager
def _open_file(path):
    """A local copy (a mirror folder's file or a .gz in the data folder), like _open_http."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise Permanent(f"cannot read {path}: {e.strerror or e}") from e

    def body():
        try:
            yield from iter(lambda: f.read(_CHUNK), b"")
        except OSError as e:
            raise Permanent(f"cannot read {path}: {e.strerror or e}") from e

    with f:
        yield None, body()


def open_source(source, name, session, timeout):
    """Open `name` at `source`: a Path is that very file, a string is a mirror."""
    if isinstance(source, Path):
        return _open_file(source)
    if is_http(source):
        return _open_http(session, source + name + ".gz", timeout)
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme == "file":
        folder = Path(urllib.request.url2pathname(parts.path))
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise Permanent(f"unsupported URL scheme {scheme!r} (use http(s)://, file:// or a folder)")
    else:
        folder = Path(os.path.expanduser(source))
    if not folder.is_dir():
        raise Permanent(f"no such folder {folder}")
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return _open_file(candidate)
    raise Permanent(f"neither {name} nor {name}.gz is in {folder}")
