"""The widget in a real browser: a citizen reports a problem, asks about it, reloads the page.

Drives Debian's headless Chromium through Playwright against the running app; the page is
served with its strict Content-Security-Policy, so the test waits on DOM attributes the
widget sets (``body[data-ready]``, ``body[data-replies]``) rather than evaluating scripts
in the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.support.domain_text import expected_preview, utter
from tests.support.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPLY_TIMEOUT_MS = 20_000

PROBLEM = "小区门口的路灯坏了一个多星期了晚上很黑"
# Not test_webchat's A3区: the same problem at the same place would be shown as a duplicate of its case.
LOCATION = "A6区阳光花园小区东门"
PHONE = "13812345678"
MARKUP = "<b>粗体</b><script>window.__xss=1</script>"


class Widget:
    """What a person does with the chat widget, and what they see."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console.error: {message.text}")

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.wait_ready()

    def wait_ready(self) -> None:
        self.page.wait_for_selector('body[data-ready="1"]', state="attached")
        self.page.wait_for_selector('#status[data-state="online"]')

    def replies(self) -> int:
        return int(self.page.get_attribute("body", "data-replies") or 0)

    def _wait_for_reply_after(self, before: int) -> None:
        self.page.wait_for_selector(f'body:not([data-replies="{before}"])', state="attached", timeout=REPLY_TIMEOUT_MS)
        assert self.replies() == before + 1

    def type_and_enter(self, text: str) -> None:
        before = self.replies()
        self.page.locator("#input").fill(text)
        self.page.locator("#input").press("Enter")
        self._wait_for_reply_after(before)

    def type_and_click_send(self, text: str) -> None:
        before = self.replies()
        self.page.locator("#input").fill(text)
        self.page.locator("#send").click()
        self._wait_for_reply_after(before)

    def click_button(self, title: str) -> None:
        before = self.replies()
        self.page.locator(".msg-buttons button", has_text=title).last.click()
        self._wait_for_reply_after(before)

    def last_bot_text(self) -> str:
        return self.page.locator(".msg-out .msg-text").last.text_content() or ""

    def bot_texts(self) -> list[str]:
        return self.page.locator(".msg-out .msg-text").all_text_contents()

    def last_bot_buttons(self) -> list[str]:
        """The titles of the buttons under the last bot bubble."""
        return self.page.locator(".msg-out").last.locator(".msg-buttons button").all_text_contents()

    def last_citizen_text(self) -> str:
        return self.page.locator(".msg-in .msg-text").last.text_content() or ""

    def bubbles(self) -> list[tuple[str, str]]:
        """Every message bubble as (its classes, its text), top to bottom."""
        return [
            (str(classes), str(text))
            for classes, text in self.page.locator("#messages .msg").evaluate_all(
                "nodes => nodes.map(n => [n.className, (n.querySelector('.msg-text') || {}).textContent || ''])"
            )
        ]


@pytest.fixture
def widget() -> Iterator[Widget]:
    """The widget in a fresh browser profile (empty localStorage), recording console errors."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 900, "height": 1000}, locale="zh-CN", timezone_id="Asia/Shanghai"
            )
            page = context.new_page()
            page.set_default_timeout(REPLY_TIMEOUT_MS)
            widget = Widget(page)
            page.on("console", widget.on_console)
            page.on("pageerror", lambda error: widget.problems.append(f"page error: {error}"))
            yield widget
        finally:
            browser.close()


def test_report_then_query_in_the_browser(stack: Stack, widget: Widget, artifacts_dir: Path) -> None:
    page = widget.page
    widget.open(stack.app_url)
    assert page.locator("#messages .msg").count() == 0
    assert page.locator("#send").is_disabled()

    widget.type_and_enter(PROBLEM)
    assert widget.last_citizen_text() == PROBLEM
    assert widget.last_bot_text() == utter("utter_ask_location")

    widget.type_and_click_send(LOCATION)
    assert widget.last_bot_text() == utter("utter_ask_contact_phone")

    widget.type_and_enter(PHONE)
    summary, preview = widget.bot_texts()[-2:]
    assert summary == utter("utter_report_summary", description=PROBLEM, location=LOCATION, contact_phone=PHONE)
    assert preview.endswith("确认提交吗？"), preview
    assert widget.last_bot_buttons() == ["确认提交", "更正类别", "更正地点", "取消"]
    bot_bubbles = page.locator(".msg-out")
    assert bot_bubbles.nth(bot_bubbles.count() - 2).locator(".msg-buttons button").count() == 0
    page.screenshot(path=artifacts_dir / "webchat-preview.png", full_page=True)

    widget.click_button("确认提交")
    assert widget.last_citizen_text() == "确认提交"
    match = re.search(r"工单号：(\d{8}-\d{4,6})", widget.last_bot_text())
    assert match, widget.last_bot_text()
    number = match.group(1)
    # Once the citizen has answered, the old buttons can no longer be pressed.
    assert all(button.is_disabled() for button in page.locator(".msg-buttons button").all())
    assert page.locator(".msg-buttons button.is-chosen").all_text_contents() == ["确认提交"]
    case = stack.api("GET", f"/cases/{number}").json()
    assert preview == expected_preview(case)
    routed = not case["routing"][0]["queued"]
    assert case["status"] == ("dispatched" if routed else "received")
    if routed:
        assert f"已转交「{case['department']}」处理" in widget.last_bot_text()
    page.screenshot(path=artifacts_dir / "webchat-report.png", full_page=True)

    widget.type_and_enter("我的工单到哪了")
    assert widget.last_bot_text() == utter("utter_ask_case_number_choices")
    widget.click_button(number)
    progress = page.locator(".msg-out .msg-text").last.text_content() or ""
    status = stack.api("GET", f"/cases/{number}").json()["status_label"]
    assert status == ("已派单" if routed else "已受理")
    assert f"工单 {number} 当前状态：{status}。" in progress
    assert utter("utter_ask_phone_last4") not in [text for _, text in widget.bubbles()]
    page.screenshot(path=artifacts_dir / "webchat-progress.png", full_page=True)

    # Markup a citizen types is shown as text and never runs.
    widget.type_and_enter(MARKUP)
    citizen_text = page.locator(".msg-in .msg-text").last
    assert citizen_text.text_content() == MARKUP
    assert citizen_text.locator("*").count() == 0
    assert page.locator("#messages b, #messages script").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"

    assert page.locator(".msg-in.is-pending, .msg-in.is-failed, .notice-error").count() == 0
    before = widget.bubbles()
    assert sum("msg-in" in classes for classes, _ in before) == 7
    assert sum("msg-out" in classes for classes, _ in before) >= 7

    page.reload()
    widget.wait_ready()
    assert widget.bubbles() == before
    assert page.locator(".msg-in[data-id]").count() == 7
    assert page.locator(".msg-in .msg-text").last.text_content() == MARKUP
    assert page.evaluate("typeof window.__xss") == "undefined"

    assert widget.problems == []
