"""The drawing page in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium draws real MNIST test digits on the canvas with pointer events (mouse, pen
and touch), traced at 10x as horizontal strokes, and reads the answer from the page.

Skipped only when Chromium or its driver is missing and CNNTRAIN_REQUIRE_BROWSER is not 1
(.ci/run sets it, so CI always runs this test). CNNTRAIN_SCREENSHOT=FILE.png keeps the
screenshot (how docs/draw.png was made).
"""

import io
import os
import shutil
import time

import numpy as np
import pytest

from tests.support.servetools import RunningServer, mnist_test_digits

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
INK_THRESHOLD = 127   # an MNIST pixel above this is traced as ink
MIN_RECOGNISED = 8    # of the 10 traced digits (one of each class)


def browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver))
               if path is None]
    if missing:
        reason = (f"{' and '.join(missing)} not installed (Debian: apt-get install chromium "
                  "chromium-driver)")
        from tests.support.optional import unavailable
        unavailable("BROWSER", reason)
    return chromium, driver


def open_browser(profile_dir, window_size, page_load_timeout):
    """A headless Chromium driver with its own profile folder, the browser's console log kept
    (tests read its SEVERE entries); the caller quits it."""
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}",
                                  f"--window-size={window_size}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(page_load_timeout)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = open_browser(tmp_path / "profile", "860,780", 20)
    try:
        yield driver
    finally:
        driver.quit()


def ink_strokes(image):
    """A 28x28 digit as strokes: one horizontal stroke along each run of ink in a row, with a
    point every other pixel, in MNIST pixel coordinates (x, y)."""
    strokes = []
    for row in range(image.shape[0]):
        edges = np.diff(np.concatenate([[0], (image[row] > INK_THRESHOLD).astype(int), [0]]))
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            columns = list(range(start, stop - 1, 2)) + [stop - 1]
            strokes.append([(column, row) for column in columns])
    return strokes


def handwritten_two():
    """A '2' as a person draws it, one stroke: an arc over the top, a diagonal, a base."""
    angles = np.radians(np.arange(200, 401, 15))
    arc = [(14 + 6 * np.cos(a), 10 + 5 * np.sin(a)) for a in angles]
    diagonal = [(arc[-1][0] + (8 - arc[-1][0]) * t, arc[-1][1] + (21 - arc[-1][1]) * t)
                for t in np.linspace(0.2, 1, 5)]
    base = [(x, 21) for x in np.linspace(11, 21, 5)]
    return [arc + diagonal + base]


def draw(driver, strokes, kind):
    """Draw strokes (lists of (x, y) in MNIST pixels, 28 to the canvas's side) on the page's
    canvas with a pointer of `kind` ("mouse", "pen" or "touch"): pointer down at the first
    point, moves through the others, up at the last."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    left, top, width = driver.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect();"
        "return [r.left, r.top, r.width];")
    scale = width / 28

    def at(point):
        return round(left + (point[0] + 0.5) * scale), round(top + (point[1] + 0.5) * scale)

    actions = ActionBuilder(driver, mouse=PointerInput(kind, f"drawing-{kind}"), duration=0)
    for stroke in strokes:
        actions.pointer_action.move_to_location(*at(stroke[0]))
        actions.pointer_action.pointer_down()
        for point in stroke[1:]:
            actions.pointer_action.move_to_location(*at(point))
        actions.pointer_action.pointer_up()
    actions.perform()


def page_state(driver):
    return driver.execute_script("""
        const status = document.getElementById('status');
        return {
          busy: status.dataset.busy, count: Number(status.dataset.count), error: status.textContent,
          prediction: document.getElementById('prediction').textContent,
          p: [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.p)),
          pct: [...document.querySelectorAll('#bars li .pct')].map(s => s.textContent),
          widths: [...document.querySelectorAll('#bars li .fill')]
              .map(s => s.getBoundingClientRect().width),
          track: document.querySelector('#bars li .track').getBoundingClientRect().width,
        };""")


def settled(driver, previous_count, timeout=15):
    """Wait until the page has no drawing left to predict and has answered at least once
    since `previous_count`; return its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page_state(driver)
        if state["busy"] == "0" and state["count"] > previous_count:
            return state
        time.sleep(0.05)
    raise AssertionError(f"the page never settled: {page_state(driver)}")


CANVAS_GREY = "return Array.from(document.getElementById('pad').getContext('2d')" \
              ".getImageData(0, 0, 280, 280).data.filter((v, i) => i % 4 === 0));"


def canvas_ink(driver):
    """The canvas as (280, 280) grey levels 0..255 (255 = white paper)."""
    return np.array(driver.execute_script(CANVAS_GREY), dtype=np.uint8).reshape(280, 280)


def test_drawing_real_digits_in_chromium(browser, digit_checkpoint, real_mnist_dir, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    from cnntrain.data.preprocess import to_mnist_field

    started = time.monotonic()
    images, labels = mnist_test_digits(real_mnist_dir, 100)
    chosen = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    with RunningServer(digit_checkpoint) as server:
        summary = server.predictor.summary()
        browser.get(server.url)
        deadline = time.monotonic() + 10
        while not browser.find_elements(By.ID, "model-epoch") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [browser.find_element(By.ID, f"model-{part}").text
                for part in ("name", "epoch", "accuracy")] == [
            "quick", f"epoch {summary['epoch']}",
            f"test accuracy {100 * summary['test_accuracy']:.2f}%"]

        mark = server.log.mark()
        drawing_started = time.monotonic()
        recognised, answers = [], 0
        for n, index in enumerate(chosen):
            browser.find_element(By.ID, "clear").click()
            assert canvas_ink(browser).min() == 255
            draw(browser, ink_strokes(images[index]), ("mouse", "pen", "touch")[n % 3])
            state = settled(browser, answers)
            assert not state["error"], state["error"]
            # What the page shows is the server's answer for exactly what is on the canvas.
            field = to_mnist_field(canvas_ink(browser))
            expected = server.predictor.probabilities(field[None])[0]
            np.testing.assert_allclose(state["p"], expected, atol=1e-5)
            assert state["prediction"] == str(int(np.argmax(expected)))
            assert state["pct"] == [f"{100 * p:.1f}%" for p in expected]
            np.testing.assert_allclose(np.array(state["widths"]) / state["track"], expected,
                                       atol=0.01)
            recognised.append(int(state["prediction"]) == labels[index])
            answers = state["count"]
        drawing_seconds = time.monotonic() - drawing_started
        assert sum(recognised) >= MIN_RECOGNISED, (
            f"{sum(recognised)}/10 traced digits recognised: {recognised}")
        # Live: answers came while drawing (more than one per digit), and throttled: at most
        # one request per 100 ms of drawing, plus the last one of each digit.
        requests = sum("POST /api/predict" in line for line in server.log.since(mark))
        # (A request still in flight when Clear is pressed is answered but not shown.)
        assert len(chosen) < answers <= requests <= answers + len(chosen)
        assert requests <= drawing_seconds / 0.1 + len(chosen), (requests, drawing_seconds)

        # The 28x28 field the network saw is drawn enlarged, exactly as the server made it.
        seen = browser.execute_script(
            "return Array.from(document.getElementById('field').getContext('2d')"
            ".getImageData(0, 0, 28, 28).data.filter((v, i) => i % 4 === 0));")
        field = to_mnist_field(canvas_ink(browser))
        np.testing.assert_allclose(np.array(seen).reshape(28, 28) / 255, field, atol=1.01 / 255)
        assert browser.find_element(By.ID, "field").size["width"] >= 100

        # Undo takes back exactly the last stroke.
        before_stroke, count = canvas_ink(browser), page_state(browser)["count"]
        draw(browser, [[(4, 2), (14, 2), (23, 2)]], "mouse")
        assert (canvas_ink(browser) < before_stroke).any()
        settled(browser, count)
        count = page_state(browser)["count"]
        browser.find_element(By.ID, "undo").click()
        assert np.array_equal(canvas_ink(browser), before_stroke)
        state = settled(browser, count)
        assert state["prediction"] == str(int(np.argmax(expected)))

        # A smooth '2' drawn with a pen, as a person would.
        browser.find_element(By.ID, "clear").click()
        draw(browser, handwritten_two(), "pen")
        state = settled(browser, page_state(browser)["count"])
        assert state["prediction"] == "2", state

        # Screenshot: the canvas shows the drawing and the bars are there to see.
        png = browser.get_screenshot_as_png()
        (tmp_path / "page.png").write_bytes(png)
        if os.environ.get("CNNTRAIN_SCREENSHOT"):
            with open(os.environ["CNNTRAIN_SCREENSHOT"], "wb") as keep:
                keep.write(png)
        shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        ratio = browser.execute_script("return window.devicePixelRatio")

        def pixels_of(element_id):
            rect = browser.execute_script(
                "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                "return [r.left, r.top, r.right, r.bottom];", element_id)
            x0, y0, x1, y1 = (round(v * ratio) for v in rect)
            assert 0 <= x0 < x1 <= shot.shape[1] and 0 <= y0 < y1 <= shot.shape[0], rect
            return shot[y0:y1, x0:x1]

        pad = pixels_of("pad")
        dark = (pad.sum(axis=2) < 150).mean()
        assert 0.03 < dark < 0.6 and (pad.min(axis=2) > 240).mean() > 0.3, dark
        bars = pixels_of("bars")
        orange = np.all(np.abs(bars - [0xd9, 0x73, 0x1a]) < 30, axis=2).sum()
        assert orange > 200, "the top bar is not visible in the screenshot"

        # Clear empties canvas, bars and verdict.
        browser.find_element(By.ID, "clear").click()
        state = page_state(browser)
        assert canvas_ink(browser).min() == 255 and state["prediction"] == "\u2013"
        assert max(state["widths"]) == 0

        # A phone-sized screen: everything fits its width, and drawing by touch works.
        browser.set_window_size(390, 844)
        layout = browser.execute_script("""
            const box = id => document.getElementById(id).getBoundingClientRect();
            return {width: window.innerWidth, height: window.innerHeight,
                    scroll: document.documentElement.scrollWidth,
                    pad: box('pad').width, padRight: box('pad').right,
                    barsRight: box('bars').right, barsBottom: box('bars').bottom,
                    barsWidth: box('bars').width};""")
        # No sideways scrolling; canvas and the whole chart on one screen, so the bars can be
        # watched while drawing.
        assert layout["scroll"] <= layout["width"], layout
        assert 250 <= layout["pad"] and layout["padRight"] <= layout["width"], layout
        assert layout["barsRight"] <= layout["width"] and layout["barsWidth"] > 300, layout
        assert layout["barsBottom"] <= layout["height"], layout
        count = page_state(browser)["count"]
        draw(browser, ink_strokes(images[chosen[7]]), "touch")
        state = settled(browser, count)
        assert state["prediction"] == "7"
        heights = browser.execute_script(
            "return [...document.querySelectorAll('#bars li')].map(li => ["
            "li.querySelector('.fill').getBoundingClientRect().height,"
            "li.querySelector('.track').getBoundingClientRect().height]);")
        np.testing.assert_allclose([h / track for h, track in heights], state["p"], atol=0.02)
        phone_png = browser.get_screenshot_as_png()
        (tmp_path / "phone.png").write_bytes(phone_png)
        if os.environ.get("CNNTRAIN_SCREENSHOT"):
            with open(os.environ["CNNTRAIN_SCREENSHOT"].replace(".png", "-phone.png"),
                      "wb") as keep:
                keep.write(phone_png)

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # e.g. a Content-Security-Policy refusal of the page's own script
    assert time.monotonic() - started < 60


def test_a_missing_browser_skips_only_when_not_required(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setenv("CNNTRAIN_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="chromium and chromedriver not installed"):
        browser_paths()
    monkeypatch.delenv("CNNTRAIN_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        browser_paths()
