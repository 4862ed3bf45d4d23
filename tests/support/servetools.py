"""Helpers for `cnntrain serve` tests: a DigitServer on a loopback port in a thread, whose log
lines the test can read, and real MNIST digits redrawn as a person would give them."""

import threading

import numpy as np

from cnntrain.apps.committee import load_model
from cnntrain.apps.inference import Predictor
from cnntrain.apps.serve import DigitServer
from cnntrain.data.mnist import read_idx


class LogLines:
    """A file-like log that keeps each line, for checking what the server wrote."""

    def __init__(self):
        self.lines = []
        self._lock = threading.Lock()

    def write(self, text):
        with self._lock:
            self.lines.extend(text.splitlines())

    def flush(self):
        pass

    def since(self, mark):
        with self._lock:
            return list(self.lines[mark:])

    def mark(self):
        with self._lock:
            return len(self.lines)


class RunningServer:
    """DigitServer(Predictor.from_checkpoint(checkpoint)) serving on 127.0.0.1:<free port>
    in a thread until the `with` block ends; a list of checkpoints serves their committee
    (cnntrain.apps.committee.load_model with `combine` and `tta`)."""

    def __init__(self, checkpoint, host="127.0.0.1", *, combine="vote", tta=False, **options):
        if isinstance(checkpoint, (list, tuple)):
            self.predictor = load_model(checkpoint, combine=combine, tta=tta)
        else:
            self.predictor = Predictor.from_checkpoint(checkpoint)
        self.log = LogLines()
        self.server = DigitServer(self.predictor, host, 0, log=self.log, **options)
        self.url = self.server.url
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def mnist_test_digits(data_dir, count):
    """The first `count` MNIST test images (uint8, 28x28) and their labels."""
    images = read_idx(data_dir / "t10k-images-idx3-ubyte")[:count]
    labels = read_idx(data_dir / "t10k-labels-idx1-ubyte")[:count]
    return images, labels


def as_paper_scan(digit, zoom, canvas, offset):
    """A 28x28 MNIST digit (white ink on black) as a person would hand it over: enlarged
    `zoom` times (nearest neighbour), dark on a white (H, W) `canvas`, at (top, left) `offset`."""
    big = np.kron(digit, np.ones((zoom, zoom), dtype=np.uint8))
    page = np.full(canvas, 255, dtype=np.uint8)
    top, left = offset
    page[top:top + big.shape[0], left:left + big.shape[1]] = 255 - big
    return page
