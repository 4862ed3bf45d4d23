"""The backprop explorer in a real browser: headless Chromium driven by Selenium, as the drawing
page's test (tests/apps/test_serve_browser.py) does it, draws a '3' on /explore, reads the
layers the page shows against the server's own explanation, asks "what if the answer were
another digit?", checks the delta pictures are drawn, takes one SGD step (the chosen label's
probability rises) and resets (it comes back), sees a dropped session announced, and draws by
touch on a phone-sized screen.

Skipped only when Chromium or its driver is missing and CNNTRAIN_REQUIRE_BROWSER is not 1.
CNNTRAIN_SCREENSHOT=FILE.png keeps the screenshot (how docs/explorer.png was made);
CNNTRAIN_EXPLORE_CHECKPOINT=CKPT explores that checkpoint instead of the small one made here.
"""

import math
import os
import time

import numpy as np
import pytest

from cnntrain.apps.explorer import IDLE_SECONDS
from tests.apps.test_serve_browser import draw, open_browser
from tests.support.checkpoints import write_checkpoint
from tests.support.servetools import RunningServer

# Every kind of layer the page draws differently: maps, pooling routes, batch norm's gamma and
# beta, vectors, dense weights, and dropout (the identity here).
LAYERS = ["conv 6 5 pad=2", "maxpool 2", "batchnorm", "relu", "conv 8 3", "maxpool 2",
          "batchnorm", "relu", "flatten", "dense 32", "batchnorm", "relu", "dropout 0.3",
          "dense 10"]
SETTLE_SECONDS = 60   # generous: the machine is shared; nothing here is timed


@pytest.fixture
def browser(tmp_path):
    driver = open_browser(tmp_path / "profile", "1100,1400", 120)  # generous: shared machine
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def checkpoint(tmp_path):
    chosen = os.environ.get("CNNTRAIN_EXPLORE_CHECKPOINT")
    if chosen:
        return chosen
    path = tmp_path / "explore.npz"
    write_checkpoint(path, LAYERS, seed=3)
    return path


def handwritten_three():
    """A '3' in one stroke, in MNIST pixels: an upper arc, then a lower one."""
    upper = [(14 + 5.5 * np.cos(a), 10 + 4.5 * np.sin(a)) for a in np.radians(range(200, 451, 15))]
    lower = [(14 + 6 * np.cos(a), 19 + 4.5 * np.sin(a)) for a in np.radians(range(-90, 161, 15))]
    return [upper + lower]


STATE = """
    const status = document.getElementById('status'), step = document.getElementById('step-result');
    return {
      busy: status.dataset.busy, count: Number(status.dataset.count), error: status.textContent,
      steps: Number(status.dataset.steps),
      p: [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.p)),
      loss: Number(document.getElementById('loss').dataset.loss),
      chosen: [...document.querySelectorAll('#targets button.chosen')].map(b => b.dataset.digit),
      predicted: [...document.querySelectorAll('#targets button.predicted')]
          .map(b => b.dataset.digit),
      layers: [...document.querySelectorAll('#layers .layer')]
          .map(card => [card.dataset.name, card.dataset.kind]),
      step: {target: step.dataset.target, before: Number(step.dataset.before),
             after: Number(step.dataset.after)},
      dropped: !document.getElementById('dropped').hidden,
    };"""

# Each canvas of a class as the set of its distinct colours (as "r,g,b") and a count of the
# red-ish and blue-ish pixels of the diverging scale.
COLOURS = """
    return [...document.querySelectorAll(arguments[0])].map(canvas => {
      const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      const seen = new Set(); let red = 0, blue = 0, orange = 0;
      for (let i = 0; i < d.length; i += 4) {
        seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
        if (d[i] > d[i + 2] + 30 && d[i + 1] < d[i] - 20 && d[i + 1] > d[i + 2] + 30) orange++;
        else if (d[i] > d[i + 2] + 30) red++;
        else if (d[i + 2] > d[i] + 30) blue++;
      }
      return {layer: canvas.closest('.layer') ? canvas.closest('.layer').dataset.name : '',
              colours: seen.size, red, blue, orange};
    });"""


def state(driver):
    return driver.execute_script(STATE)


def settled(driver, previous_count, timeout=SETTLE_SECONDS):
    """Wait until the page has nothing left to ask and has shown an explanation since
    `previous_count`; return its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = state(driver)
        if now["error"]:
            raise AssertionError(f"the page shows an error: {now['error']}")
        if now["busy"] == "0" and now["count"] > previous_count:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the page never settled: {state(driver)}")


def canvas_grey(driver):
    return np.array(driver.execute_script(
        "return Array.from(document.getElementById('pad').getContext('2d')"
        ".getImageData(0, 0, 280, 280).data.filter((v, i) => i % 4 === 0));"),
        dtype=np.uint8).reshape(280, 280)


def keep_screenshots(driver, tmp_path):
    """The page's top, and the first max-pooling layer's card, in tmp_path and, with
    CNNTRAIN_SCREENSHOT=FILE.png, as FILE.png and FILE-maxpool.png."""
    from selenium.webdriver.common.by import By

    driver.execute_script("window.scrollTo(0, 0)")
    shots = {"": driver.get_screenshot_as_png()}
    card = driver.find_element(By.CSS_SELECTOR, '#layers .layer[data-kind="maxpool"]')
    driver.execute_script("arguments[0].scrollIntoView()", card)
    shots["-maxpool"] = card.screenshot_as_png
    driver.execute_script("window.scrollTo(0, 0)")
    keep = os.environ.get("CNNTRAIN_SCREENSHOT")
    for suffix, png in shots.items():
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        (tmp_path / f"explore{suffix}.png").write_bytes(png)
        if keep:
            with open(keep.replace(".png", f"{suffix}.png"), "wb") as out:
                out.write(png)


def test_explore_a_drawn_three_choose_a_label_step_and_reset(browser, checkpoint, tmp_path):
    from selenium.webdriver.common.by import By

    from cnntrain.data.preprocess import to_mnist_field

    with RunningServer(checkpoint) as server:
        predictor = server.predictor
        browser.get(server.url + "explore")
        deadline = time.monotonic() + 30
        while not browser.find_elements(By.ID, "model-epoch") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert browser.find_element(By.CSS_SELECTOR, 'h1 a[href="/"]').is_displayed()

        draw(browser, handwritten_three(), "mouse")
        first = settled(browser, 0)
        # The page shows the server's answer for exactly what is on the canvas, against the
        # predicted digit by default.
        # (as the page sends it: ink high, 255 - the canvas's grey level)
        field = to_mnist_field(((255.0 - canvas_grey(browser)) / 255.0).astype(np.float32))
        expected = predictor.probabilities(field[None])[0]
        np.testing.assert_allclose(first["p"], expected, rtol=1e-4, atol=1e-9)
        predicted = int(np.argmax(expected))
        assert first["chosen"] == first["predicted"] == [str(predicted)]
        assert first["loss"] == pytest.approx(-math.log(expected[predicted]), rel=1e-4)
        # Every layer, in the network's order, named as the network names it.
        assert first["layers"] == [[name, layer.kind] for name, layer in
                                   predictor.network.layers]

        # What if the answer were the runner-up? (A label whose probability is not rounded
        # away in the JSON, so the step's change can be read.)
        other = int(np.argsort(expected)[-2])
        browser.find_element(By.CSS_SELECTOR, f'#targets button[data-digit="{other}"]').click()
        chosen = settled(browser, first["count"])
        assert chosen["chosen"] == [str(other)] and chosen["predicted"] == [str(predicted)]
        np.testing.assert_allclose(chosen["p"], first["p"], atol=1e-9)
        assert chosen["loss"] == pytest.approx(-math.log(expected[other]), rel=1e-4)
        assert chosen["loss"] > first["loss"]
        assert str(other) in browser.find_element(By.ID, "question").text

        # The deltas are drawn: varied colours in every layer's delta picture, and at the last
        # layer (softmax - onehot) blue at the chosen label and red at the others.
        deltas = browser.execute_script(COLOURS, "#layers canvas.delta")
        assert [d["layer"] for d in deltas] == [name for name, _ in chosen["layers"]]
        assert all(d["colours"] >= 3 and d["red"] + d["blue"] > 0 for d in deltas), deltas
        assert deltas[-1]["blue"] > 0 and deltas[-1]["red"] > 0, deltas[-1]
        (input_delta,) = browser.execute_script(COLOURS, "#input-delta")
        assert input_delta["colours"] >= 10 and input_delta["red"] and input_delta["blue"]
        # Max pooling marks where each delta goes; conv and dense show their weight gradients.
        routes = browser.execute_script(COLOURS, "#layers canvas.routes")
        assert len(routes) == 2 and all(r["orange"] > 0 for r in routes), routes
        grads = browser.execute_script(COLOURS, "#layers canvas.weight-grad")
        kinds_with_weights = [k for _, k in chosen["layers"] if k in ("conv", "dense",
                                                                     "batchnorm")]
        assert len(grads) == len(kinds_with_weights)
        assert all(g["colours"] >= 3 for g in grads), grads
        note = browser.find_element(By.ID, "eval-note").text.lower()
        assert "evaluation mode" in note and "running statistics" in note
        assert "dropout is the identity" in note and "cross-entropy" in note

        # One SGD step on this image and label raises the label's probability.
        browser.find_element(By.ID, "step").click()
        stepped = settled(browser, chosen["count"])
        assert stepped["steps"] == 1 and not stepped["dropped"]
        assert stepped["step"]["target"] == str(other)
        assert stepped["step"]["before"] == pytest.approx(chosen["p"][other], rel=1e-4)
        assert stepped["step"]["after"] > stepped["step"]["before"]
        assert stepped["chosen"] == [str(other)]  # the label stays the one stepped for
        assert stepped["p"][other] == pytest.approx(stepped["step"]["after"], rel=1e-4)
        assert stepped["loss"] < chosen["loss"]
        keep_screenshots(browser, tmp_path)

        # The checkpoint the server serves is untouched: /api/predict's model still answers
        # as before.
        np.testing.assert_allclose(predictor.probabilities(field[None])[0], expected,
                                   atol=1e-7)

        # Reset: back to the checkpoint's weights and the first probabilities.
        browser.find_element(By.ID, "reset").click()
        reset = settled(browser, stepped["count"])
        assert reset["steps"] == 0 and reset["step"]["target"] == ""
        np.testing.assert_allclose(reset["p"], first["p"], rtol=1e-4, atol=1e-9)
        assert reset["loss"] == pytest.approx(chosen["loss"], rel=1e-5)

        # A copy the server has dropped (here: idle for longer than IDLE_SECONDS): the page
        # says so and starts again from the checkpoint.
        browser.find_element(By.ID, "step").click()
        again = settled(browser, reset["count"])
        assert again["steps"] == 1 and again["p"][other] > reset["p"][other]
        server.server.explorer.sessions.clock = lambda: time.monotonic() + IDLE_SECONDS + 1
        browser.find_element(By.CSS_SELECTOR, f'#targets button[data-digit="{other}"]').click()
        dropped = settled(browser, again["count"])
        assert dropped["dropped"] and dropped["steps"] == 0
        assert "dropped this page's weight copy" in browser.find_element(By.ID, "dropped").text
        np.testing.assert_allclose(dropped["p"], first["p"], rtol=1e-4, atol=1e-9)

        # A phone-sized screen: no sideways scrolling, and drawing by touch still explains.
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        browser.find_element(By.ID, "clear").click()
        layout = browser.execute_script("""
            const box = id => document.getElementById(id).getBoundingClientRect();
            return {width: window.innerWidth, scroll: document.documentElement.scrollWidth,
                    pad: box('pad').width, padRight: box('pad').right,
                    targetsRight: box('targets').right};""")
        assert layout["width"] == 390 and layout["scroll"] <= layout["width"], layout
        assert layout["pad"] >= 250 and layout["padRight"] <= layout["width"], layout
        assert layout["targetsRight"] <= layout["width"], layout
        draw(browser, handwritten_three(), "touch")
        phone = settled(browser, dropped["count"])
        assert phone["chosen"] == phone["predicted"]
        assert len(phone["layers"]) == len(predictor.network.layers)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
        (tmp_path / "phone.png").write_bytes(browser.get_screenshot_as_png())

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # e.g. a Content-Security-Policy refusal of the page's own script


def test_a_committee_offers_its_members_and_explains_the_one_chosen(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from cnntrain.data.preprocess import to_mnist_field

    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    write_checkpoint(paths[0], LAYERS, seed=3)
    write_checkpoint(paths[1], ["conv 4 3 pad=1", "maxpool 2", "relu", "flatten", "dense 10"],
                     seed=4)
    with RunningServer(paths) as served:
        members = served.predictor.members
        browser.get(served.url + "explore")
        deadline = time.monotonic() + 30
        while not browser.find_element(By.ID, "member-box").is_displayed() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        select = Select(browser.find_element(By.ID, "member"))
        names = [member["name"] for member in served.predictor.summary()["members"]]
        assert [o.text for o in select.options] == [f"{i + 1}. {n}" for i, n in enumerate(names)]

        draw(browser, handwritten_three(), "mouse")
        first = settled(browser, 0)
        field = to_mnist_field(((255.0 - canvas_grey(browser)) / 255.0).astype(np.float32))
        expected = [m.probabilities(field[None])[0] for m in members]
        np.testing.assert_allclose(first["p"], expected[0], rtol=1e-4, atol=1e-9)
        assert first["layers"] == [[n, layer.kind] for n, layer in members[0].network.layers]

        select.select_by_value("1")
        second = settled(browser, first["count"])
        np.testing.assert_allclose(second["p"], expected[1], rtol=1e-4, atol=1e-9)
        assert second["layers"] == [[n, layer.kind] for n, layer in members[1].network.layers]
        label = second["chosen"][0]

        # A step moves only the chosen member's copy.
        browser.find_element(By.ID, "step").click()
        stepped = settled(browser, second["count"])
        assert stepped["steps"] == 1 and stepped["step"]["after"] > stepped["step"]["before"]
        assert stepped["p"][int(label)] > second["p"][int(label)]
        select.select_by_value("0")
        back = settled(browser, stepped["count"])
        np.testing.assert_allclose(back["p"], expected[0], rtol=1e-4, atol=1e-9)

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
