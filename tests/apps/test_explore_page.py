"""The backprop explorer's page, GET /explore: the shipped file with the drawing page's security
headers, nothing fetched from elsewhere, nothing the Content-Security-Policy would block, the
drawing page and it linking to each other, and every function and docs section it names real.
(Its use in a browser: tests/apps/test_browser_explore.py.)"""

import base64
import hashlib
import http.client
import re
from importlib import resources
from pathlib import Path

import pytest

from cnntrain.nn import functional
from tests.support.checkpoints import write_checkpoint
from tests.support.servetools import RunningServer

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["conv 4 5 pad=2", "maxpool 2", "batchnorm", "relu", "flatten", "dense 16",
          "dropout 0.3", "dense 10"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("explore") / "small.npz"
    write_checkpoint(checkpoint, LAYERS)
    with RunningServer(checkpoint) as server:
        yield server


def get(server, method, path):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def shipped(name):
    return resources.files("cnntrain.apps").joinpath("static", name).read_bytes()


def test_explore_is_the_shipped_page_with_the_drawing_pages_headers(running):
    status, headers, body = get(running, "GET", "/explore")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == shipped("explore.html")
    _, draw_headers, _ = get(running, "GET", "/")
    for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                 "Cache-Control"):
        assert headers[name] == draw_headers[name], name
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # The policy lets exactly this page's one script and one style run, by their hashes.
    for tag in ("script", "style"):
        (block,) = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), body, re.S)
        digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert policy != draw_headers["Content-Security-Policy"]
    status, head_headers, head_body = get(running, "HEAD", "/explore")
    assert status == 200 and head_body == b"" and head_headers["Content-Length"] == str(len(body))


def test_the_page_fetches_nothing_from_elsewhere_and_has_nothing_the_policy_blocks():
    body = shipped("explore.html")
    assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", body)
    assert b"http://" not in body and b"https://" not in body
    assert b"@import" not in body and b"url(" not in body
    # Inline handlers and style attributes would be refused by the policy (no unsafe-inline).
    assert not re.search(rb"<[^>]*\son[a-z]+\s*=", body)
    assert not re.search(rb"<[^>]*\sstyle\s*=", body)
    assert body.count(b"<script") == 1 and body.count(b"<style") == 1


def test_the_drawing_page_links_to_the_explorer_and_back(running):
    _, _, draw = get(running, "GET", "/")
    _, _, explore = get(running, "GET", "/explore")
    assert re.search(rb'<a [^>]*href="/explore"', draw)
    assert re.search(rb'<a [^>]*href="/"', explore)


@pytest.mark.parametrize("method, path, status", [
    ("POST", "/explore", 405), ("GET", "/explore/", 404), ("GET", "/static/explore.html", 404),
    ("GET", "/explore.html", 404)])
def test_other_paths_near_the_page_are_refused(running, method, path, status):
    conn = http.client.HTTPConnection(running.host, running.port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == status and b"<html" not in response.read()
    finally:
        conn.close()


def test_every_function_and_docs_section_the_page_names_exists():
    text = shipped("explore.html").decode()
    kinds = text[text.index("const KINDS = {"):text.index("};", text.index("const KINDS = {"))]
    names = set(re.findall(r'"([a-z_0-9]+)"\]', kinds))
    assert {"conv_forward", "conv_input_grad", "conv_kernel_grad", "conv_bias_grad",
            "maxpool2d_backward", "batchnorm_eval_backward", "dense_backward"} <= names
    missing = sorted(name for name in names if not hasattr(functional, name))
    assert not missing, missing
    assert "Flatten.backward (cnntrain/nn/flatten.py)" in kinds
    headings = re.findall(r"^## (.+)$", (REPO / "docs" / "maths.md").read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    named = set(re.findall(r"docs/maths\.md#([a-z0-9-]+)", text))
    assert named and named <= anchors, named - anchors
    # Every kind a config can name has its equations on the page.
    from cnntrain.nn.layers import REGISTRY
    from cnntrain.nn.model import grammar_table

    assert grammar_table() and len(REGISTRY) >= 10  # the layer modules are all registered
    assert set(REGISTRY) <= set(re.findall(r"^    ([a-z]+): \[", kinds, re.M))
