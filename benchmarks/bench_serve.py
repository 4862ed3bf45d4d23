#!/usr/bin/env python3
"""`cnntrain serve` under load: N clients at once, each sending M requests, against the real
command on a loopback port; latency percentiles, throughput, failures and the server's log.

    python benchmarks/bench_serve.py runs/quick/checkpoints/best.npz --clients 50 --requests 20

The server is `python -m cnntrain serve CHECKPOINT --port 0`, started here and stopped with
SIGTERM at the end. All clients start together (a barrier); each opens a new connection per
request, as a browser page or a script without a session does (--keep-alive: one connection
per client). Four requests in five POST /api/predict with a real MNIST test digit drawn dark
on a 56x56 white page, as grey levels; the fifth is a GET of /api/model or of the page. Every
prediction is compared with the checkpoint's own answer computed here. Latency is from
sending the request to reading the whole answer, failures included; throughput is requests
answered per second of wall time. The machine's load shows in the figures: compare runs made
one after the other.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

GET_EVERY = 5  # one request in five is a GET


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="the .npz to serve, e.g. runs/quick/checkpoints/best.npz")
    ap.add_argument("--clients", type=int, default=50, help="clients at once (default 50)")
    ap.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    ap.add_argument("--keep-alive", action="store_true",
                    help="one connection per client instead of one per request")
    ap.add_argument("--data-dir", help="where MNIST lives (default: as cnntrain fit finds it)")
    ap.add_argument("--mirror", action="append", default=[],
                    help="a folder or URL holding the MNIST files (default: ../shared/mnist "
                         "beside the repository, then cnntrain's own mirrors)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ap.add_argument("--log", help="keep the server's log in this file")
    return ap.parse_args()


def test_digits(data_dir, mirrors, count):
    """The first `count` MNIST test digits as 56x56 pages (dark ink on white), and labels."""
    from cnntrain.data.download import fetch_mnist
    from cnntrain.data.mnist import read_idx

    shared = REPO.parent / "shared" / "mnist"
    mirrors = list(mirrors) or ([str(shared)] if shared.is_dir() else [])
    _, paths = fetch_mnist(data_dir, mirrors, progress=False)
    images = read_idx(paths["t10k-images-idx3-ubyte"])[:count]
    labels = read_idx(paths["t10k-labels-idx1-ubyte"])[:count]
    pages = [255 - np.kron(image, np.ones((2, 2), dtype=np.uint8)) for image in images]
    return pages, labels


def expected_predictions(checkpoint, pages):
    """What the checkpoint answers for each page, computed here as the server would."""
    from cnntrain.apps.inference import Predictor
    from cnntrain.data.preprocess import to_mnist_field

    predictor = Predictor.from_checkpoint(checkpoint)
    fields = np.stack([to_mnist_field((page / 255.0).astype(np.float32)) for page in pages])
    return predictor.probabilities(fields)


def start_server(checkpoint, log_file):
    """`cnntrain serve` on a free loopback port -> (process, port)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "cnntrain", "serve", str(checkpoint), "--port", "0"],
        stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=REPO)
    line = process.stdout.readline()
    match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        process.kill()
        sys.exit(f"the server printed no address: {line!r}")
    return process, int(match.group(1))


class Client:
    """One client's requests, in order; its latencies and failures."""

    def __init__(self, number, port, bodies, expected, args):
        self.number, self.port, self.bodies, self.expected, self.args = (
            number, port, bodies, expected, args)
        self.latencies, self.failures = [], []
        self.conn = None

    def _exchange(self, method, path, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=self.args.timeout)
        headers = {"Content-Type": "application/json"} if body else {}
        if not self.args.keep_alive:
            headers["Connection"] = "close"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        finally:
            if not self.args.keep_alive:
                self.conn.close()
                self.conn = None

    def one(self, k):
        index = (self.number * self.args.requests + k) % len(self.bodies)
        if k % GET_EVERY == GET_EVERY - 1:
            method, path, body = "GET", ("/api/model", "/")[k // GET_EVERY % 2], None
        else:
            method, path, body = "POST", "/api/predict", self.bodies[index]
        started = time.perf_counter()
        try:
            status, payload = self._exchange(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            self.failures.append(type(exc).__name__)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            status, payload = None, b""
        self.latencies.append(time.perf_counter() - started)
        if status is None:
            return
        if status != 200:
            self.failures.append(f"HTTP {status}")
        elif method == "POST":
            got = np.array(json.loads(payload)["probabilities"])
            if np.abs(got - self.expected[index]).max() > 2e-6:
                self.failures.append("wrong answer")

    def run(self, barrier):
        barrier.wait()
        for k in range(self.args.requests):
            self.one(k)
        if self.conn is not None:
            self.conn.close()


def logged_requests(log_path):
    """How many request lines the server logged, and any line about a lost connection or an
    internal error."""
    text = Path(log_path).read_text(errors="replace")
    answered = len(re.findall(r'"(GET|POST) \S+ HTTP/1\.1" \d{3}', text))
    trouble = [line for line in text.splitlines()
               if "connection lost" in line or "internal error" in line or "Traceback" in line]
    return answered, trouble


def main():
    args = parse_args()
    pages, _ = test_digits(args.data_dir, args.mirror, 100)
    expected = expected_predictions(args.checkpoint, pages)
    bodies = [json.dumps({"width": 56, "height": 56, "pixels": page.ravel().tolist()}).encode()
              for page in pages]
    with tempfile.TemporaryDirectory() as tmp:
        log_path = args.log or os.path.join(tmp, "serve.log")
        with open(log_path, "w") as log_file:
            process, port = start_server(args.checkpoint, log_file)
            try:
                clients = [Client(n, port, bodies, expected, args) for n in range(args.clients)]
                barrier = threading.Barrier(args.clients + 1)
                threads = [threading.Thread(target=c.run, args=(barrier,)) for c in clients]
                for thread in threads:
                    thread.start()
                barrier.wait()
                started = time.perf_counter()
                for thread in threads:
                    thread.join()
                wall = time.perf_counter() - started
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        answered, trouble = logged_requests(log_path)
    return 1 if report(args, clients, wall, answered, trouble) else 0


def report(args, clients, wall, answered, trouble):
    latencies = np.array([t for c in clients for t in c.latencies]) * 1000
    failures = Counter(f for c in clients for f in c.failures)
    sent = args.clients * args.requests
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"{args.clients} clients x {args.requests} requests "
          f"({'keep-alive' if args.keep_alive else 'a new connection per request'}), "
          f"{sent} requests in {wall:.2f} s: {sent / wall:.0f} requests/s")
    print(f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {latencies.max():.1f}")
    failed = sum(failures.values())
    print(f"failures: {failed} of {sent}" + (f" ({dict(failures)})" if failed else ""))
    print(f"server log: {answered} answers logged for {sent} requests sent; "
          f"{len(trouble)} lost-connection or error lines")
    return failed


if __name__ == "__main__":
    sys.exit(main())
