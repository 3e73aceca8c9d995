"""Two-factor sign-in in a real browser against the running app: a supervisor enrols from the
QR page's secret, signs in again with a code the test computes, is refused a wrong one and a
used recovery code, and gets in once with a recovery code. Screenshots go to artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect

from tests.integration.test_console_browser import new_page
from tests.support import two_factor
from tests.support.console import PASSWORD, create_staff
from tests.support.stack import Stack

pytestmark = pytest.mark.browser


def password_step(page: Any, stack: Stack, username: str, lands_on: str) -> None:
    page.goto(f"{stack.app_url}/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(f"{re.escape(lands_on)}$"))


def sign_out(page: Any) -> None:
    page.click("form[action='/console/logout'] button")
    page.wait_for_url(re.compile(r"/console/login$"))


def give_code(page: Any, code: str) -> None:
    page.fill("#code", code)
    page.click("button[type=submit]")


def test_a_supervisor_enrols_then_signs_in_with_codes_and_a_recovery_code_once(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    username = create_staff(stack, "supervisor")
    problems: list[str] = []
    page = new_page(browser, problems)

    # The password alone leads to enrolment, and nowhere else.
    password_step(page, stack, username, two_factor.ENROL_PATH)
    expect(page.locator("#totp-qr svg")).to_be_visible()
    page.goto(f"{stack.app_url}/console/cases")
    page.wait_for_url(re.compile(f"{two_factor.ENROL_PATH}$"))
    secret = page.locator("#totp-secret").inner_text()
    totp = pyotp.TOTP(secret)
    page.screenshot(path=str(artifacts_dir / "two_factor_enrol.png"), full_page=True)

    wrong = f"{(int(totp.now()) + 500_000) % 1_000_000:06d}"
    give_code(page, wrong)
    expect(page.locator(".flash.error")).to_contain_text("验证码不正确")
    give_code(page, two_factor.first_code(username, secret))
    codes = page.locator("#recovery-codes code").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", code) for code in codes)
    page.screenshot(path=str(artifacts_dir / "two_factor_recovery_codes.png"), full_page=True)
    page.click("#continue")
    page.wait_for_url(re.compile(r"/console/inbox$"))
    sign_out(page)

    # Next time: a code. A wrong one is refused; the authenticator's is accepted.
    password_step(page, stack, username, two_factor.CODE_PATH)
    give_code(page, wrong)
    expect(page.locator(".flash.error")).to_contain_text("验证码不正确")
    give_code(page, two_factor.next_code(username))
    page.wait_for_url(re.compile(r"/console/inbox$"))
    sign_out(page)

    # A recovery code stands in for the phone, once.
    password_step(page, stack, username, two_factor.CODE_PATH)
    give_code(page, codes[0])
    page.wait_for_url(re.compile(r"/console/inbox$"))
    sign_out(page)
    password_step(page, stack, username, two_factor.CODE_PATH)
    give_code(page, codes[0])
    expect(page.locator(".flash.error")).to_contain_text("验证码不正确或已使用过")
    page.screenshot(path=str(artifacts_dir / "two_factor_code_refused.png"), full_page=True)
    assert page.url.endswith(two_factor.CODE_PATH)
    assert not [problem for problem in problems if "Content Security Policy" in problem], problems
