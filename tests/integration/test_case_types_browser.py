"""The 12345 case type through the real chat, API and console in Chromium.

Two citizens file through the real engine: a broken street light (求助 by the written
criteria) and a complaint about a restaurant's fumes (投诉). The API shows each case's type; a
supervisor filters the console's case list by type, opens a case, sees its type and corrects it
with 「更正类型」, which the timeline records without a status move. Screenshots in artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.integration.test_browser import CHROMIUM
from tests.integration.test_console_browser import new_page, sign_in
from tests.integration.test_dispatch_conversation import answer_until_readback, case_number_in
from tests.support.console import create_staff
from tests.support.naming import unique
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]


def file_through_the_chat(stack: Stack, text: str, place: str, phone: str) -> str:
    sender = unique("type")
    answer_until_readback(stack, sender, text, place, phone)
    return case_number_in(stack.rest(sender, "/affirm")[0]["text"])


def test_staff_see_filter_and_correct_the_type_of_cases_filed_in_the_chat(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    light = file_through_the_chat(stack, "A3区枫叶路28号门口的路灯坏了，晚上一片漆黑", "A3区枫叶路28号", "13712340001")
    fumes = file_through_the_chat(
        stack, "投诉A3区枫叶路30号的烧烤店油烟直排，天天扰民，多次反映没人管", "A3区枫叶路30号", "13712340002"
    )
    assert stack.api("GET", f"/cases/{light}").json()["case_type"] == "求助"
    assert stack.api("GET", f"/cases/{fumes}").json()["case_type"] == "投诉"

    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, create_staff(stack, "supervisor", display_name="值班孙"))

    console.goto(f"{stack.app_url}/console/cases")
    console.locator("select[name=case_type]").select_option("求助")
    console.get_by_role("button", name="筛选").click()
    console.wait_for_url(re.compile(r"case_type="))
    listed = console.locator("#case-list")
    expect(listed.locator("tr", has_text=light).locator("td.case-type")).to_have_text("求助")
    expect(listed).not_to_contain_text(fumes)
    console.screenshot(path=str(artifacts_dir / "console-case-list-by-type.png"), full_page=True)

    console.goto(f"{stack.app_url}/console/cases/{light}")
    expect(console.locator("#case-type")).to_have_text("求助")
    status_before = console.locator("#case-status").inner_text()
    form = console.locator("#case-type-form")
    form.locator("select[name=case_type]").select_option("投诉")
    form.get_by_role("button", name="更正类型").click()
    expect(console.locator("#case-type")).to_have_text("投诉")
    expect(console.locator("#timeline")).to_contain_text("更正类型：求助 → 投诉")
    expect(console.locator("#case-status")).to_have_text(status_before)
    console.screenshot(path=str(artifacts_dir / "console-case-type-corrected.png"), full_page=True)
    assert stack.api("GET", f"/cases/{light}").json()["case_type"] == "投诉"
    assert [p for p in problems if "status of 404" not in p] == [], problems


def test_the_consoles_draft_case_is_filed_with_the_recognised_or_the_chosen_type(stack: Stack) -> None:
    from sqlalchemy import select

    from crm_backend.models import ServiceCase
    from tests.integration.test_console import citizen_with_a_draft, read_database, run_now, signed_in

    _, _, conversation_id = citizen_with_a_draft(stack, unique("draft-type"))
    supervisor = signed_in(stack, create_staff(stack, "supervisor", None, "值班钱"))
    draft = {"description": "路灯坏了好几天", "location": "A1区解放路18号", "contact_phone": ""}

    refused = supervisor.post(f"/conversations/{conversation_id}/file-case", draft | {"case_type": "感谢信"})
    assert refused.status_code == 422 and "类型须为" in refused.text

    numbers = []
    for chosen in ("", "建议"):
        filed = supervisor.post(f"/conversations/{conversation_id}/file-case", draft | {"case_type": chosen})
        found = re.search(r"已登记工单 (\d{8}-\d{4,})", filed.text)
        assert filed.status_code == 200 and found, filed.text[:500]
        numbers.append(found.group(1))
    types = [
        run_now(read_database(stack, select(ServiceCase.case_type).where(ServiceCase.case_number == number)))
        for number in numbers
    ]
    assert types == [["求助"], ["建议"]]
