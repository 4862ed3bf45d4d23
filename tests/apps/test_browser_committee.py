"""The drawing page serving a committee, in headless Chromium (as tests/apps/test_serve_browser.py,
whose browser fixture and drawing helpers this reuses): the page names the members and the
rule, shows the committee's answer with its mean probabilities, and each member's own answer.

Skipped only when Chromium or its driver is missing and CNNTRAIN_REQUIRE_BROWSER is not 1.
CNNTRAIN_SCREENSHOT=FILE.png keeps the screenshot (how docs/serve-committee.png was made).
"""

import os
import time

import numpy as np

from cnntrain.data.preprocess import to_mnist_field
from tests.apps import test_serve_browser as page_tools
from tests.apps.test_serve_committee import mlp_checkpoint
from tests.support.servetools import RunningServer, mnist_test_digits

browser = page_tools.browser  # the fixture: headless Chromium, closed after the test

MEMBERS_STATE = """
    return [...document.querySelectorAll('#members li')].map(li => ({
      name: li.querySelector('.member-name').textContent,
      answer: li.querySelector('.member-answer').textContent,
      dissent: li.classList.contains('dissent'),
      shown: li.getBoundingClientRect().height > 0,
    }));"""


def header(driver, timeout=60):
    """The model line's parts, once the page has loaded them."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while not driver.find_elements(By.ID, "model-combine") and time.monotonic() < deadline:
        time.sleep(0.05)
    return [span.text for span in driver.find_elements(By.CSS_SELECTOR, "#model span")]


def test_the_page_names_the_members_and_shows_their_answers(browser, digit_checkpoint,
                                                            real_mnist_dir, tmp_path):
    from selenium.webdriver.common.by import By

    images, labels = mnist_test_digits(real_mnist_dir, 100)
    checkpoints = [digit_checkpoint, mlp_checkpoint(tmp_path)]
    with RunningServer(checkpoints, combine="vote") as server:
        committee = server.predictor
        browser.get(server.url)
        parameters = sum(m.network.n_params for m in committee.members)
        assert header(browser) == ["committee of 2", "by vote", f"{parameters:,} parameters"]
        members = browser.execute_script(MEMBERS_STATE)
        assert [m["name"] for m in members] == ["quick", "mlp"]
        assert all(m["shown"] and m["answer"] == "\u2013" for m in members), members

        answers, seen_dissent = 0, False
        for digit in (0, 3, 7):
            index = int(np.flatnonzero(labels == digit)[0])
            browser.find_element(By.ID, "clear").click()
            page_tools.draw(browser, page_tools.ink_strokes(images[index]), "mouse")
            state = page_tools.settled(browser, answers, timeout=60)
            answers = state["count"]
            assert not state["error"], state["error"]
            field = to_mnist_field(page_tools.canvas_ink(browser))
            expected = committee.answer(field[None])
            best = int(expected["predictions"][0])
            # The verdict is the committee's, the bars its mean probabilities.
            assert state["prediction"] == str(best)
            np.testing.assert_allclose(state["p"], expected["probabilities"][0], atol=1e-5)
            agree = int((expected["member_predictions"][:, 0] == best).sum())
            confidence = browser.find_element(By.ID, "confidence").text
            assert confidence == (f"{100 * expected['probabilities'][0][best]:.1f}% sure, "
                                  f"{agree} of 2 members agree")
            # Each member's row: its own answer and its probability, dissent marked.
            members = browser.execute_script(MEMBERS_STATE)
            for k, member in enumerate(members):
                said = int(expected["member_predictions"][k, 0])
                p = expected["members"][k, 0, said]
                assert member["answer"] == f"{said} \u00b7 {100 * p:.0f}%", member
                assert member["dissent"] == (said != best)
                seen_dissent |= member["dissent"]
        assert int(state["prediction"]) == 7  # the trained member carries the committee here
        assert seen_dissent  # the untrained member answers otherwise at least once, marked

        png = browser.get_screenshot_as_png()
        (tmp_path / "committee.png").write_bytes(png)
        if os.environ.get("CNNTRAIN_SCREENSHOT"):
            with open(os.environ["CNNTRAIN_SCREENSHOT"], "wb") as keep:
                keep.write(png)
        # Clear empties the members' answers too.
        browser.find_element(By.ID, "clear").click()
        members = browser.execute_script(MEMBERS_STATE)
        assert [m["answer"] for m in members] == ["\u2013", "\u2013"]
        assert not any(m["dissent"] for m in members)

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # e.g. a Content-Security-Policy refusal of the page's own script


def test_one_checkpoint_shows_no_members(browser, digit_checkpoint):
    from selenium.webdriver.common.by import By

    with RunningServer(digit_checkpoint) as server:
        browser.get(server.url)
        deadline = time.monotonic() + 60
        while not browser.find_elements(By.ID, "model-epoch") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert browser.find_element(By.ID, "model-name").text == "quick"
        assert not browser.find_element(By.ID, "members").is_displayed()
