"""The widget in a real browser: a citizen reports a problem, asks about it, reloads the page;
on a phone, a hand-off on and off staff duty.

Drives Debian's headless Chromium through Playwright against the running app; the page is
served with its strict Content-Security-Policy, so the test waits on DOM attributes the
widget sets (``body[data-ready]``, ``body[data-replies]``) rather than evaluating scripts
in the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.support.domain_text import expected_preview, privacy_notice, utter, utter_buttons
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
PHONE_VIEWPORT = {"width": 390, "height": 844}
TOUCH_TARGET_PX = 44
FAQ = "请问公积金怎么提取出来"
# A Friday evening, Beijing time: with duty 8:30-17:30 staff next answer on Monday 11月30日 8:30.
OFF_DUTY_NOW = "2026-11-27T20:00:00+08:00"
OFF_DUTY_BANNER = utter("utter_handoff_off_duty", hours="8:30-17:30", date="11月30日", start="8:30")
ON_DUTY_NOW = "2026-11-24T10:00:00+08:00"  # a Tuesday morning


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


@contextmanager
def browser_widget(viewport: dict[str, int], **context_options: Any) -> Iterator[Widget]:
    """The widget in a fresh browser profile (empty localStorage), recording console errors."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport=viewport, locale="zh-CN", timezone_id="Asia/Shanghai", **context_options
            )
            page = context.new_page()
            page.set_default_timeout(REPLY_TIMEOUT_MS)
            widget = Widget(page)
            page.on("console", widget.on_console)
            page.on("pageerror", lambda error: widget.problems.append(f"page error: {error}"))
            yield widget
        finally:
            browser.close()


@pytest.fixture
def widget() -> Iterator[Widget]:
    """The widget on a desktop-size window."""
    with browser_widget({"width": 900, "height": 1000}) as desktop:
        yield desktop


@pytest.fixture
def phone() -> Iterator[Widget]:
    """The widget on a phone-size touch screen."""
    with browser_widget(PHONE_VIEWPORT, is_mobile=True, has_touch=True, device_scale_factor=2) as mobile:
        yield mobile


@contextmanager
def app_at(stack: Stack, name: str, moment: str, duty_hours: str) -> Iterator[Stack]:
    """Another app on the stack's engine whose web chat takes `moment` for now (see frozen_clock_app)."""
    app = stack.sibling(name)
    app.app_module = "tests.support.frozen_clock_app"
    app.app_env.update(FROZEN_NOW=moment, STAFF_DUTY_HOURS=duty_hours)
    app.start_app()
    try:
        yield app
    finally:
        app.stop_app()


def test_report_then_query_in_the_browser(stack: Stack, widget: Widget, artifacts_dir: Path) -> None:
    page = widget.page
    widget.open(stack.app_url)
    assert widget.bot_texts() == [privacy_notice(), utter("utter_welcome")]  # told, then greeted, on first open
    assert page.locator(".msg-system .msg-text").all_text_contents() == [privacy_notice()]  # set apart as a notice
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
    assert widget.last_bot_buttons() == ["确认提交", "更正类别", "更正类型", "更正地点", "取消"]
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
    status = utter("utter_status_dispatched") if routed else utter("utter_status_received")
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


def test_a_new_citizen_is_greeted_with_the_main_services_on_a_phone(
    stack: Stack, phone: Widget, artifacts_dir: Path
) -> None:
    """The chat never opens empty: it says what the assistant does, with the services as buttons."""
    page = phone.page
    phone.open(stack.app_url)
    assert phone.bot_texts() == [privacy_notice(), utter("utter_welcome")]
    titles = [button["title"] for button in utter_buttons("utter_welcome")]
    assert phone.last_bot_buttons() == titles
    heights = [button.bounding_box()["height"] for button in page.locator(".msg-buttons button").all()]
    assert min(heights) >= TOUCH_TARGET_PX, heights
    page.screenshot(path=artifacts_dir / "webchat-phone-welcome.png")

    page.reload()  # the greeting is part of the conversation, said once
    phone.wait_ready()
    assert phone.bot_texts() == [privacy_notice(), utter("utter_welcome")]

    phone.click_button("查询工单进度")  # a greeting button is an offered payload like any other
    assert phone.last_citizen_text() == "查询工单进度"
    assert phone.last_bot_text() in (utter("utter_ask_case_number"), utter("utter_ask_case_number_choices"))
    phone.type_and_enter("算了，取消吧")
    assert phone.last_bot_text() == utter("utter_progress_cancelled")

    phone.type_and_enter("在吗")  # a presence check gets a short answer, not the greeting again
    assert phone.last_bot_text() == utter("utter_presence")
    assert phone.problems == []


# --- hand-off on a phone ---------------------------------------------------------------------
# The page is served by an app whose banner clock is fixed (on duty, or a Friday evening off
# duty). The engine still runs its actions on the stack's own app, so the bot's hand-off bubble
# follows the real clock; these tests look at the banner, the typing indicator and the layout.


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).last.bounding_box()
    assert found is not None, f"{selector} is not shown"
    return dict(found)


def send_during_handoff(widget: Widget, text: str) -> None:
    """A message while staff hold the conversation: stored (acked), never answered by the bot."""
    page = widget.page
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")
    page.wait_for_selector(".msg-in.is-pending", state="detached")
    assert widget.last_citizen_text() == text


def test_off_duty_handoff_on_a_phone_says_when_staff_answer_and_fakes_no_typing(
    stack: Stack, phone: Widget, artifacts_dir: Path
) -> None:
    page = phone.page
    with app_at(stack, "off-duty-app", OFF_DUTY_NOW, "08:30-17:30") as app:
        phone.open(app.app_url)
        phone.type_and_enter("你好")
        heights = [button.bounding_box()["height"] for button in page.locator(".msg-buttons button").all()]
        assert heights and min(heights) >= TOUCH_TARGET_PX, heights
        phone.type_and_enter(FAQ)
        phone.type_and_enter("你好")
        scroller = page.locator("#scroller")
        assert scroller.evaluate("s => s.scrollHeight > s.clientHeight"), "the list must overflow the screen"

        phone.type_and_enter("转人工")
        banner = page.locator("#handoff-banner")
        banner.wait_for(state="visible")
        assert banner.text_content() == OFF_DUTY_BANNER
        last, composer = box(page, "#messages .msg"), box(page, ".composer-area")
        assert last["y"] + last["height"] <= composer["y"], (last, composer)
        page.screenshot(path=artifacts_dir / "webchat-phone-off-duty.png")

        send_during_handoff(phone, "我先留个言：楼道灯坏了")
        assert page.locator("#typing").is_hidden()
        last, composer = box(page, "#messages .msg"), box(page, ".composer-area")
        assert last["y"] + last["height"] <= composer["y"], (last, composer)

        page.reload()
        phone.wait_ready()
        assert banner.text_content() == OFF_DUTY_BANNER
        assert page.locator("#typing").is_hidden()
    assert phone.problems == []


def test_on_duty_handoff_on_a_phone_says_staff_answer_soon(stack: Stack, phone: Widget, artifacts_dir: Path) -> None:
    page = phone.page
    with app_at(stack, "on-duty-app", ON_DUTY_NOW, "09:00-18:00") as app:
        phone.open(app.app_url)
        phone.type_and_enter("转人工")
        banner = page.locator("#handoff-banner")
        banner.wait_for(state="visible")
        assert banner.text_content() == utter("utter_handoff_on_duty")
        send_during_handoff(phone, "好的我等一下")
        assert page.locator("#typing").is_hidden()
        page.screenshot(path=artifacts_dir / "webchat-phone-on-duty.png")
    assert phone.problems == []
