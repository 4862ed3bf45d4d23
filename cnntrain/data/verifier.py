"""What was received, made into the verified file: a stream of bytes, gzip or raw IDX,
inflated on the fly within bounds and checked against the expected size and SHA-256 before
the download may be moved into place.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from cnntrain.constants import IDX_UBYTE
from cnntrain.data.failures import Fatal, Permanent, Transient

_GZIP_MAGIC = b"\x1f\x8b"


class Verifier:
    """Turns a stream of received bytes into the verified decompressed file.

    The first bytes decide the format: gzip is inflated on the fly; raw IDX is taken as is (a
    folder of decompressed files, or a server that decoded a Content-Encoding). Anything else,
    typically an HTML error page served with 200, is refused at once, before reading on.
    """

    def __init__(self, out, size, sha256, content_type, bar):
        self.out, self.size, self.sha256 = out, size, sha256
        self.content_type = content_type
        self.bar = bar
        self.head = b""
        self.mode = None  # "gzip" or "raw", decided by the first bytes
        self.inflater = None
        self.written = 0
        self.received = 0
        self.digest = hashlib.sha256()

    def _describe_received(self):
        ctype = f"Content-Type {self.content_type}; " if self.content_type else ""
        return f"{ctype}first bytes {bytes(self.head[:40])!r}"

    def feed(self, data):
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
                raise Permanent(f"received neither gzip nor IDX data "
                                 f"({self._describe_received()})")
        if self.mode == "raw":
            self._emit(data)
        else:
            self._inflate(data)

    def _inflate(self, data):
        while data:
            if self.inflater.eof:
                # Concatenated gzip members are legal; zero padding after the last is tolerated.
                if not data.strip(b"\0"):
                    return
                if data[:1] != _GZIP_MAGIC[:1]:
                    raise Permanent(f"garbage after the end of the gzip data "
                                     f"({self._describe_received()})")
                self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                # Bounded output: a bad archive cannot balloon in memory before the size check.
                self._emit(self.inflater.decompress(data, 1 << 20))
            except zlib.error as e:
                raise Permanent(f"corrupt gzip data ({e}; {self._describe_received()})") from e
            data = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail

    def _emit(self, data):
        if not data:
            return
        self.written += len(data)
        if self.written > self.size:
            raise Permanent(f"more than the expected {self.size} bytes of data "
                             f"({self._describe_received()})")
        self.digest.update(data)
        try:
            self.out.write(data)
        except OSError as e:
            raise Fatal("write", Path(self.out.name), e) from e
        self.bar.update(len(data))

    def finish(self):
        if self.mode is None:
            raise Permanent(f"only {self.received} bytes received ({self._describe_received()})")
        if self.mode == "gzip" and not self.inflater.eof:
            raise Transient(f"truncated gzip data: the body ended after {self.received} bytes")
        if self.written != self.size:
            raise Permanent(f"decompressed to {self.written} bytes, expected {self.size}")
        got = self.digest.hexdigest()
        if got != self.sha256:
            raise Permanent(f"SHA-256 mismatch: got {got[:16]}..., expected {self.sha256[:16]}...")
