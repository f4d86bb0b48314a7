"""The chat page in headless Chromium (Playwright for Python driving Debian's /usr/bin/chromium): type a
message, see the answer stream in, open and close the thinking block, stop a long answer; a screenshot of the
page goes to docs/serve_page.png when GPTQWEN_SCREENSHOT=1."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from test_serve import TOOLS, script, setup  # noqa: F401 - the module's server fixture, reused

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
                                 reason="chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def page(setup):  # noqa: F811
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(setup.url + "/")
        yield page
        browser.close()


def test_chat_page(setup, page):  # noqa: F811
    setup.model.delay = 0.0
    script(setup, "<think>\nThe user greets me; I should greet back.\n</think>\n\nHello! How can I help you today?")
    page.fill("#input", "Hi there!")
    page.press("#input", "Enter")
    answer = page.locator(".msg.assistant").last
    page.wait_for_function("() => document.querySelector('.msg.assistant')?.dataset.done === '1'", timeout=20_000)
    assert answer.locator(".content").inner_text() == "Hello! How can I help you today?"
    assert page.locator(".msg.user").last.inner_text().endswith("Hi there!")
    thinking = answer.locator("details.thinking")
    assert "The user greets me" in thinking.locator(".reasoning").inner_text()
    thinking.locator("summary").click()  # close it
    assert thinking.get_attribute("open") is None and not thinking.locator(".reasoning").is_visible()
    thinking.locator("summary").click()  # and open it again
    assert thinking.get_attribute("open") is not None and thinking.locator(".reasoning").is_visible()
    if os.environ.get("GPTQWEN_SCREENSHOT") == "1":
        page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "serve_page.png"))


def test_tool_call_shown(setup, page):  # noqa: F811
    script(setup, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    page.click("#tools-box summary")
    page.fill("#tools", json.dumps(TOOLS))
    page.fill("#input", "Weather in Paris?")
    page.press("#input", "Enter")
    page.wait_for_function("() => [...document.querySelectorAll('.msg.assistant')].pop().dataset.done === '1'",
                           timeout=20_000)
    tool = page.locator(".msg.assistant").last.locator(".tool")
    assert tool.inner_text() == 'tool call: get_weather({"city": "Paris"})'
    assert "<tool_call>" not in page.locator(".msg.assistant").last.inner_text()
    page.fill("#tools", "")
    page.click("#tools-box summary")


def test_stop_a_long_answer(setup, page):  # noqa: F811
    setup.model.script, setup.model.delay = None, 0.01  # random tokens, 10 ms a step: ~5 s for 500 tokens
    page.fill("#max-tokens", "500")
    page.fill("#input", "Tell me a very long story.")
    page.click("#send")
    page.wait_for_selector("#stop:not([hidden])")
    last = page.locator(".msg.assistant").last
    page.wait_for_function("() => [...document.querySelectorAll('.msg.assistant .content')].pop().textContent.length > 20",
                           timeout=20_000)
    page.click("#stop")
    page.wait_for_function("() => [...document.querySelectorAll('.msg.assistant')].pop().dataset.done === '1'",
                           timeout=5_000)
    assert "(stopped)" in last.inner_text() and page.locator("#send").is_visible()
    deadline = time.time() + 5
    while setup.sched.stats().running:  # the server let the request go
        assert time.time() < deadline, "the stopped request still holds its slot"
        time.sleep(0.01)
    assert setup.sched.stats().steps < 500 + 200  # it did not run to the end
