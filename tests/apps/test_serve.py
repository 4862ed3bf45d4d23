"""`cnntrain serve`: the JSON API against a real server on a loopback port, serving a LeNet-5
trained on the real MNIST in this session: good requests, every kind of bad one (4xx, a JSON
one-liner, one log line, never a traceback), a bounded load test, the command itself (address
printed, SIGINT and SIGTERM stop it with exit code 0) and the page shipped in the wheel."""

import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from cnntrain.apps import serve
from cnntrain.apps.inference import Predictor
from cnntrain.apps.serveapi import PNG_SIGNATURE
from cnntrain.data.preprocess import to_mnist_field
from tests.support.clitools import invoke
from tests.support.servetools import LogLines, RunningServer, as_paper_scan, mnist_test_digits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def running(digit_checkpoint):
    with RunningServer(digit_checkpoint) as server:
        yield server


@pytest.fixture(scope="module")
def digits(real_mnist_dir):
    return mnist_test_digits(real_mnist_dir, 40)


def request(server, method, path, body=None, headers=None, json_body=None):
    """One request on a fresh connection -> (status, headers, body bytes)."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def raw_exchange(server, data, *, half_close=False):
    """Send raw bytes on a socket and read the whole answer (the server closes after it)."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def grey_request(grey):
    return {"width": grey.shape[1], "height": grey.shape[0],
            "pixels": np.asarray(grey).ravel().tolist()}


def png_bytes(array, mode="L"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_answer(predictor, grey_0_255):
    field = to_mnist_field((np.asarray(grey_0_255, dtype=np.float64) / 255.0).astype(np.float32))
    return field, predictor.probabilities(field[None])[0]


def assert_refusal(status, headers, body, expected_status, fragment):
    assert status == expected_status, body
    assert headers["Content-Type"] == "application/json"
    message = json.loads(body)["error"]
    assert message and "\n" not in message and "Traceback" not in message
    assert fragment in message, message
    assert " object at 0x" not in message, message
    return message


def assert_logged_once_without_traceback(server, mark, status):
    lines = server.log.since(mark)
    assert not any("Traceback" in line or "Exception" in line for line in lines), lines
    assert sum(f'" {status}' in line for line in lines) == 1, lines


# --------------------------------------------------------------------------- good requests


def test_the_page_is_the_shipped_file_with_a_strict_policy(running):
    status, headers, body = request(running, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == resources.files("cnntrain.apps").joinpath("static/draw.html").read_bytes()
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}';", policy), policy
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    # Nothing is fetched from anywhere else: no external script, style, font or image.
    assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", body)
    assert b"@import" not in body and b"url(" not in body


def test_model_summary_names_the_run_its_epoch_and_test_accuracy(running, digit_checkpoint):
    status, headers, body = request(running, "GET", "/api/model")
    assert status == 200 and headers["Content-Type"] == "application/json"
    summary = json.loads(body)
    run_summary = json.loads((digit_checkpoint.parent.parent / "summary.json").read_text())
    assert summary["name"] == "quick"
    assert summary["epoch"] == run_summary["best"]["epoch"]
    assert summary["test_accuracy"] == pytest.approx(run_summary["best"]["test_acc"])
    assert summary["parameters"] == running.predictor.network.n_params
    assert len(summary["layers"]) == 12


def test_grey_levels_are_read_and_answered_as_the_predictor_would(running, digits):
    images, labels = digits
    correct = 0
    for i, (digit, label) in enumerate(zip(images[:20], labels[:20])):
        zoom, offset = 2 + i % 4, (5 + 7 * (i % 3), 11 + 5 * (i % 5))
        page = as_paper_scan(digit, zoom, (170, 180), offset)
        status, _, body = request(running, "POST", "/api/predict", json_body=grey_request(page))
        assert status == 200, body
        answer = json.loads(body)
        field, probabilities = expected_answer(running.predictor, page)
        np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-6)
        np.testing.assert_allclose(answer["field"], field, atol=1e-4)
        assert answer["prediction"] == int(np.argmax(probabilities))
        correct += answer["prediction"] == label
    assert correct >= 19, f"{correct}/20 enlarged, moved test digits recognised"


def test_png_input_grey_transparent_16_bit_and_as_data_url(running, digits):
    images, labels = digits
    page = as_paper_scan(images[0], 3, (100, 100), (10, 14))
    _, expected = expected_answer(running.predictor, page)
    grey_png = base64.b64encode(png_bytes(page)).decode()
    # A canvas export: black ink on a transparent background (alpha carries the ink).
    rgba = np.zeros(page.shape + (4,), dtype=np.uint8)
    rgba[..., 3] = 255 - page
    clear_png = base64.b64encode(png_bytes(rgba, "RGBA")).decode()
    deep_png = base64.b64encode(png_bytes(page.astype(np.uint16) * 257, None)).decode()
    for payload in (grey_png, "data:image/png;base64," + grey_png, clear_png, deep_png):
        status, _, body = request(running, "POST", "/api/predict", json_body={"png": payload})
        assert status == 200, body
        answer = json.loads(body)
        np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-3)
        assert answer["prediction"] == labels[0] == int(np.argmax(expected))


def test_png_without_pillow_is_a_clear_415_and_arrays_still_work(running, digits, monkeypatch):
    page = as_paper_scan(digits[0][1], 2, (60, 60), (0, 0))
    png = base64.b64encode(png_bytes(page)).decode()
    # Importing PIL.Image now fails, as it does where Pillow is not installed.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    mark = running.log.mark()
    status, headers, body = request(running, "POST", "/api/predict", json_body={"png": png})
    message = assert_refusal(status, headers, body, 415, "needs Pillow")
    # The one wording of a missing extra (cnntrain.errors.require_extra), with its pip command.
    assert message == "PNG input on the server needs Pillow: pip install 'cnntrain[images]'"
    assert_logged_once_without_traceback(running, mark, 415)
    status, _, _ = request(running, "POST", "/api/predict", json_body=grey_request(page))
    assert status == 200


def test_a_bug_is_a_500_answer_with_the_traceback_in_the_log(running, digits, monkeypatch):
    def broken(fields):
        raise RuntimeError("a bug in the network")

    monkeypatch.setattr(running.predictor, "probabilities", broken)
    mark = running.log.mark()
    status, headers, body = request(running, "POST", "/api/predict",
                                    json_body=grey_request(digits[0][0]))
    assert_refusal(status, headers, body, 500, "internal error")
    assert b"a bug" not in body  # the details stay in the log
    log = "\n".join(running.log.since(mark))
    assert "Traceback" in log and "RuntimeError: a bug in the network" in log


def test_ipv6_loopback_works_when_the_machine_has_it(digit_checkpoint):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = RunningServer(digit_checkpoint, host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server:
        assert server.url == f"http://[::1]:{server.port}/"
        status, _, body = request(server, "GET", "/api/model",
                                  headers={"Host": f"[::1]:{server.port}"})
        assert status == 200 and json.loads(body)["name"] == "quick"
        status, _, _ = request(server, "GET", "/", headers={"Host": "example.com"})
        assert status == 421


def test_head_answers_the_headers_of_get_without_a_body(running):
    status, headers, body = request(running, "HEAD", "/")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == len(request(running, "GET", "/")[2])


def test_keep_alive_connection_answers_many_requests(running, digits):
    conn = http.client.HTTPConnection(running.host, running.port, timeout=30)
    try:
        for digit in digits[0][:5]:
            conn.request("POST", "/api/predict", body=json.dumps(grey_request(digit)),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and "prediction" in json.loads(response.read())
            conn.request("GET", "/api/model")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["name"] == "quick"
    finally:
        conn.close()


# --------------------------------------------------------------------------- bad requests


def png_header_only(width, height, colour_type=0):
    """A PNG whose header claims width x height: a decompression bomb's first bytes (with an
    invalid colour type, a PNG Pillow cannot identify)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (PNG_SIGNATURE + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\0\0\0\0IEND\xaeB`\x82")


B64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
JSON = {"Content-Type": "application/json"}
ZEROS_4 = {"width": 2, "height": 2, "pixels": [0, 0, 0, 0]}

BAD_JSON_BODIES = [
    ("malformed JSON", b'{"width": 2,', 400, "not valid JSON"),
    ("not UTF-8", b'{"width": "\xff"}', 400, "not UTF-8"),
    ("not an object", b"[1, 2, 3]", 400, "expected a JSON object"),
    ("NaN literal", b'{"width": 1, "height": 1, "pixels": [NaN]}', 400, "NaN"),
    ("nested too deeply", b"[" * 200000 + b"]" * 200000, 400, "nested too deeply"),
    ("no image keys", b"{}", 400, "send {"),
    ("unknown key", json.dumps(dict(ZEROS_4, colour=1)).encode(), 400, "unknown key 'colour'"),
    ("zero width", json.dumps(dict(ZEROS_4, width=0)).encode(), 400, "'width' must be"),
    ("width as text", json.dumps(dict(ZEROS_4, width="2")).encode(), 400, "'width' must be"),
    ("width as bool", json.dumps(dict(ZEROS_4, height=True)).encode(), 400, "'height' must be"),
    ("fractional width", json.dumps(dict(ZEROS_4, width=2.5)).encode(), 400, "'width' must be"),
    ("too few pixels", json.dumps(dict(ZEROS_4, pixels=[0, 0, 0])).encode(), 400, "holds 3 values"),
    ("pixels not a list", json.dumps(dict(ZEROS_4, pixels="0000")).encode(), 400, "flat list"),
    ("nested pixels", json.dumps(dict(ZEROS_4, pixels=[[0, 0], [0, 0], [0, 0], [0, 0]])).encode(),
     400, "only numbers"),
    ("ragged pixels", json.dumps(dict(ZEROS_4, pixels=[[0], 0, 0, 0])).encode(), 400,
     "only numbers"),
    ("text pixels", json.dumps(dict(ZEROS_4, pixels=["0", "0", "0", "0"])).encode(), 400,
     "only numbers"),
    ("null pixels", json.dumps(dict(ZEROS_4, pixels=[None] * 4)).encode(), 400, "only numbers"),
    ("bool pixels", json.dumps(dict(ZEROS_4, pixels=[True] * 4)).encode(), 400, "only numbers"),
    ("huge integer pixel", b'{"width": 1, "height": 1, "pixels": [1' + b"0" * 40 + b"]}", 400,
     "only numbers"),
    ("pixel above 255", json.dumps(dict(ZEROS_4, pixels=[0, 256, 0, 0])).encode(), 400, "0..255"),
    ("negative pixel", json.dumps(dict(ZEROS_4, pixels=[0, -1, 0, 0])).encode(), 400, "0..255"),
    ("infinite pixel", b'{"width": 1, "height": 1, "pixels": [1e999]}', 400, "0..255"),
    ("huge image", json.dumps({"width": 100000, "height": 100000, "pixels": []}).encode(), 413,
     "the limit is 2048 per side"),
    ("too many pixels", json.dumps({"width": 2048, "height": 4096, "pixels": []}).encode(), 413,
     "the limit is"),
    ("blank image", json.dumps(ZEROS_4).encode(), 422, "no ink"),
    ("blank white image", json.dumps(dict(ZEROS_4, pixels=[255] * 4)).encode(), 422, "no ink"),
    ("png not text", json.dumps({"png": 12}).encode(), 400, "must be a string"),
    ("png and pixels", json.dumps(dict(ZEROS_4, png="")).encode(), 400, "unknown key"),
    ("png not base64", json.dumps({"png": "%%% not base64 %%%"}).encode(), 400, "not valid base64"),
    ("png data URL not base64", json.dumps({"png": "data:image/png,abc"}).encode(), 400,
     "must be base64"),
    ("non-image bytes", json.dumps({"png": B64(b"hello, I am not a picture")}).encode(), 400,
     "does not hold PNG data"),
    ("a GIF, not a PNG", json.dumps({"png": B64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}).encode(),
     400, "does not hold PNG data"),
    ("truncated PNG", None, 400, "not a readable PNG"),
    # Pillow's own message names its in-memory file ('<_io.BytesIO object at 0x...>')
    ("PNG of no known colour type", json.dumps({"png": B64(png_header_only(4, 4, 7))}).encode(),
     400, "cannot identify image file)"),
    ("PNG bomb header", json.dumps({"png": B64(png_header_only(60000, 60000))}).encode(), 413,
     "60000x60000"),
]


@pytest.mark.parametrize("name, body, status, fragment", BAD_JSON_BODIES,
                         ids=[case[0] for case in BAD_JSON_BODIES])
def test_bad_predict_requests_are_refused_in_one_line(running, name, body, status, fragment):
    if body is None:  # a real PNG cut in half
        page = np.full((40, 40), 255, dtype=np.uint8)
        page[10:30, 18:22] = 0
        data = png_bytes(page)
        body = json.dumps({"png": B64(data[:len(data) // 2])}).encode()
    mark = running.log.mark()
    assert_refusal(*request(running, "POST", "/api/predict", body=body, headers=JSON),
                   status, fragment)
    assert_logged_once_without_traceback(running, mark, status)


BAD_ROUTES = [
    ("GET", "/nope", None, {}, 404, "no such page"),
    ("GET", "/static/draw.html", None, {}, 404, "no such page"),
    ("GET", "/../cnntrain/apps/serve.py", None, {}, 404, "no such page"),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd", None, {}, 404, "no such page"),
    ("GET", "//etc/passwd", None, {}, 404, "no such page"),
    ("GET", "/<script>alert(1)</script>", None, {}, 404, "no such page"),
    ("GET", "/api/predict", None, {}, 405, "POST your image"),
    ("POST", "/api/model", b"{}", JSON, 405, "GET only"),
    ("POST", "/api/other", b"{}", JSON, 404, "no such API"),
    ("PUT", "/", b"", {}, 405, "method not allowed"),
    ("DELETE", "/api/model", None, {}, 405, "method not allowed"),
    ("BREW", "/", None, {}, 405, "method not allowed"),
    ("POST", "/api/predict", b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/api/predict", b"{}", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "application/json"),
    ("GET", "/", None, {"Host": "attacker.example:8000"}, 421, "loopback name"),
    ("POST", "/api/predict", b"{}", dict(JSON, Host="rebind.example"), 421, "loopback name"),
]


@pytest.mark.parametrize("method, path, body, headers, status, fragment", BAD_ROUTES,
                         ids=[f"{c[0]} {c[1]} {c[4]}" for c in BAD_ROUTES])
def test_unknown_paths_and_methods_are_refused_without_touching_files(
        running, method, path, body, headers, status, fragment):
    mark = running.log.mark()
    got_status, got_headers, got_body = request(running, method, path, body, headers)
    assert_refusal(got_status, got_headers, got_body, status, fragment)
    assert b"<script" not in got_body and b"passwd" not in got_body
    assert b"alert" not in got_body and b"attacker" not in got_body
    assert_logged_once_without_traceback(running, mark, status)


def test_a_body_over_the_limit_is_refused_before_it_is_read(running):
    mark = running.log.mark()
    # Only the headers are sent: the 413 must come without waiting for 50 MB.
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    started = time.perf_counter()
    answer = raw_exchange(running, head)
    assert time.perf_counter() - started < 5
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[:2] == [b"HTTP/1.1", b"413"]
    assert b'"error": "the body is 50,000,000 bytes; the limit is 2,097,152"' in rest
    # A client that sends a body just over the limit in full still reads its 413.
    body = b"0" * (serve.MAX_BODY_BYTES + 1)
    assert_refusal(*request(running, "POST", "/api/predict", body, JSON), 413, "the limit is")
    lines = running.log.since(mark)
    assert sum('" 413 ' in line for line in lines) == 2 and not any("Traceback" in line
                                                                    for line in lines)


RAW_REQUESTS = [
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("bad HTTP version", b"GET / HTTP/9.9\r\n\r\n", 400),
    ("no Content-Length", b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nConnection: close\r\n\r\n{}", 411),
    ("chunked body", b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\n\r\n", 411),
    ("Content-Length not a number", b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: -5\r\n\r\n",
     400),
    ("a header line of 70 kB", b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("body shorter than announced", b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                                    b"\r\n{}", 400),
]


@pytest.mark.parametrize("name, data, status", RAW_REQUESTS, ids=[c[0] for c in RAW_REQUESTS])
def test_broken_http_gets_a_json_4xx_and_one_log_line(running, name, data, status):
    mark = running.log.mark()
    answer = raw_exchange(running, data, half_close=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode(), answer[:300]
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]
    assert b"<" not in body
    deadline = time.monotonic() + 5
    while not running.log.since(mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert_logged_once_without_traceback(running, mark, status)


def test_a_client_that_vanishes_mid_body_costs_one_log_line(running):
    mark = running.log.mark()
    with socket.create_connection((running.host, running.port), timeout=10) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"wid")
    deadline = time.monotonic() + 5
    while not running.log.since(mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = running.log.since(mark)
    assert '" 400 the body ended before its Content-Length' in lines[0], lines
    assert not any("Traceback" in line for line in lines), lines


def test_silent_clients_are_dropped_after_the_timeout_with_one_log_line(digit_checkpoint):
    with RunningServer(digit_checkpoint, socket_timeout=0.3) as server:
        for opening in (b"GET / HT",  # stalls in the request line
                        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        b"application/json\r\nContent-Length: 50\r\n\r\n{\"width\""):  # mid-body
            mark = server.log.mark()
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(opening)
                started = time.perf_counter()
                assert sock.recv(1000) == b""  # the server hangs up on its own
                assert time.perf_counter() - started < 5
            deadline = time.monotonic() + 5
            while not server.log.since(mark) and time.monotonic() < deadline:
                time.sleep(0.01)
            lines = server.log.since(mark)
            assert len(lines) == 1 and "Request timed out" in lines[0], lines
        status, _, _ = request(server, "GET", "/api/model")
        assert status == 200  # and it still serves


# --------------------------------------------------------------------------- load


def test_load_2000_requests_from_8_threads_all_answered_exactly(running, digits, capsys):
    """Every answer equals the predictor's own for its input (so the threads never mix up
    the network's state); the latencies go to the terminal for the README and the report."""
    images, _ = digits
    inputs = [np.kron(image, np.ones((2, 2), dtype=np.uint8)) for image in images[:16]]
    bodies = [json.dumps(grey_request(page)).encode() for page in inputs]
    expected = [np.round(expected_answer(running.predictor, page)[1], 6) for page in inputs]
    n_threads, per_thread = 8, 250
    latencies, failures = [], []

    def worker(worker_id):
        conn = http.client.HTTPConnection(running.host, running.port, timeout=30)
        mine = []
        try:
            for k in range(per_thread):
                index = (worker_id * per_thread + k) % len(bodies)
                asks_model = k % 10 == 9
                started = time.perf_counter()
                if asks_model:
                    conn.request("GET", "/api/model")
                else:
                    conn.request("POST", "/api/predict", body=bodies[index], headers=JSON)
                response = conn.getresponse()
                payload = response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200:
                    failures.append((response.status, payload[:200]))
                elif not asks_model:
                    got = np.array(json.loads(payload)["probabilities"])
                    if np.abs(got - expected[index]).max() > 2e-6:
                        failures.append(("wrong answer", index, got, expected[index]))
        finally:
            conn.close()
        return mine

    started = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as pool:
        for mine in pool.map(worker, range(n_threads)):
            latencies.extend(mine)
    wall = time.perf_counter() - started
    assert not failures, failures[:3]
    assert len(latencies) == n_threads * per_thread == 2000
    median, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    with capsys.disabled():
        print(f"\n[serve load] 2000 requests (1800 predictions of 56x56 digits, 200 model "
              f"summaries) from 8 threads in {wall:.1f} s: median {median:.1f} ms, "
              f"p99 {p99:.1f} ms")


# --------------------------------------------------------------------------- the command


def start_cli_server(checkpoint, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "cnntrain", "serve", str(checkpoint), "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = process.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", line)
    if not match:
        process.kill()
        raise AssertionError(f"no address printed: {line!r} {process.stderr.read()}")
    return process, line, int(match.group(2))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_its_address_and_stops_cleanly_on_a_signal(digit_checkpoint, stop):
    process, line, port = start_cli_server(digit_checkpoint)
    try:
        assert line.startswith("serving quick (epoch 3) at http://127.0.0.1:")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/model")
        assert json.loads(conn.getresponse().read())["name"] == "quick"
        conn.close()
        process.send_signal(stop)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    reason = "terminated (SIGTERM)" if stop == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert out.strip().splitlines()[-1] == f"{reason}; stopped"
    assert "Traceback" not in err
    assert '"GET /api/model HTTP/1.1" 200' in err  # the request log goes to stderr
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_sigterm_landing_while_a_request_is_dispatched_still_stops_the_server(
        digit_checkpoint):
    """socketserver hands any Exception raised while it dispatches a connection to
    handle_error and serves on: a SIGTERM landing there was swallowed, and the server never
    stopped (seen as a hang in CI)."""
    class SignalledWhileDispatching(serve.DigitServer):
        def process_request(self, request, client_address):
            os.kill(os.getpid(), signal.SIGTERM)
            super().process_request(request, client_address)

    server = SignalledWhileDispatching(Predictor.from_checkpoint(digit_checkpoint),
                                       "127.0.0.1", 0, log=LogLines())

    def one_request():
        try:
            conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
            conn.request("GET", "/api/model")
            conn.getresponse().read()
        except OSError:
            pass  # the stopping server may close it unanswered

    watchdog = threading.Timer(20, server.shutdown)  # a server that serves on is ended here
    client = threading.Thread(target=one_request)
    said = []
    watchdog.start()
    client.start()
    try:
        serve.serve_until_stopped(server, echo=said.append)
    finally:
        watchdog.cancel()
        client.join(timeout=20)
    assert said == ["terminated (SIGTERM); stopped"]


def test_serve_refuses_a_busy_port_and_a_missing_checkpoint_in_one_line(digit_checkpoint,
                                                                         tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", digit_checkpoint, "--port", port)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another with "
        "--port (or --port 0 for any free one)"]
    result = invoke("serve", tmp_path / "missing.npz")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing.npz'}: no such checkpoint file"]


def test_a_host_off_loopback_is_warned_about(digit_checkpoint):
    assert serve.exposure_warning("127.0.0.1") is None
    assert serve.exposure_warning("::1") is None and serve.exposure_warning("localhost") is None
    assert serve.exposure_warning("0.0.0.0").startswith("warning: listening on 0.0.0.0")
    # 192.0.2.1 is reserved for documentation: no machine has it, so nothing ever listens.
    result = invoke("serve", digit_checkpoint, "--host", "192.0.2.1", "--port", 0)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 2, result.output
    assert lines[0].startswith("warning: listening on 192.0.2.1, not on loopback")
    assert lines[1].startswith("error: cannot listen on 192.0.2.1:0: ") and "--host" in lines[1]


# --------------------------------------------------------------------------- packaging


def test_the_wheel_ships_the_page(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cnntrain", source / "cnntrain",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("cnntrain-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("cnntrain/apps/static/draw.html")
    assert shipped == (REPO / "cnntrain" / "apps" / "static" / "draw.html").read_bytes()
