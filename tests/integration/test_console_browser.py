"""The console and the citizen's chat in one real browser: a handoff from both sides.

A supervisor signs in to the console and waits on the inbox; a citizen in another
browser profile asks for a person; the escalation appears in the inbox without a
reload; the supervisor opens it and replies; the citizen sees the reply, with the
supervisor's display name; the citizen's next message appears live in the console;
the supervisor files the drafted case in one click and takes it to 已办结.
Screenshots of each step are kept in artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.models import Department, RoutingDecision
from crm_backend.services import handoff
from crm_backend.services.conversations import (
    OutgoingMessage,
    current_conversation,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import normalise_database_url
from tests.integration.test_browser import CHROMIUM, REPLY_TIMEOUT_MS, Widget
from tests.integration.test_console import (
    DRAFT_PHONE,
    citizen_with_a_draft,
    file_case_now,
    resolve_through_the_console,
    routed_case_now,
    run_now,
)
from tests.integration.test_dispatch_conversation import file_beside_an_open_case
from tests.support import two_factor
from tests.support.console import PASSWORD, ConsoleClient, create_staff
from tests.support.domain_text import utter
from tests.support.naming import unique
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]
STAFF_NAME = "值班王"
GREETING = "您好，我是值班王，请问有什么可以帮您？"
PROBLEM = "A6区幸福路和建设路路口的下水道井盖丢了，晚上很危险"


def new_page(browser: Any, problems: list[str]) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN", timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.set_default_timeout(REPLY_TIMEOUT_MS)
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return page


def sign_in(console: Any, stack: Stack, username: str) -> None:
    """Password, then the second factor where the member must give one (codes from `tests.support.two_factor`)."""
    console.goto(f"{stack.app_url}/console/login")
    console.fill("input[name=username]", username)
    console.fill("input[name=password]", PASSWORD)
    console.click("button[type=submit]")
    console.wait_for_url(re.compile(r"/console/(inbox|login/enrol|login/code)$"))
    if console.url.endswith(two_factor.ENROL_PATH):
        secret = console.locator("#totp-secret").inner_text()
        console.fill("#code", two_factor.first_code(username, secret))
        console.click("button[type=submit]")
        console.click("#continue")
    elif console.url.endswith(two_factor.CODE_PATH):
        console.fill("#code", two_factor.next_code(username))
        console.click("button[type=submit]")
    console.wait_for_url(re.compile(r"/console/inbox$"))


def test_staff_take_a_handoff_reply_live_and_resolve_the_drafted_case(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    username = create_staff(stack, "supervisor", display_name=STAFF_NAME)
    staff_problems: list[str] = []
    console = new_page(browser, staff_problems)

    # Sign in and wait on the inbox with the live stream open.
    sign_in(console, stack, username)
    console.wait_for_selector('body[data-live="1"]', state="attached")
    rows = console.locator("#inbox-rows tr[data-conversation]")
    before = rows.count()

    # The citizen asks for a person.
    citizen = Widget(new_page(browser, []))
    citizen.page.on("console", citizen.on_console)
    citizen.open(stack.app_url)
    citizen.type_and_enter("我要转人工")
    expect(citizen.page.locator("#handoff-banner")).to_be_visible()

    # The escalation arrives in the open inbox without a reload (oldest first: it is last).
    expect(rows).to_have_count(before + 1)
    row = rows.last
    expect(row).to_contain_text("我要转人工")
    expect(row).to_contain_text("待认领")
    console.screenshot(path=str(artifacts_dir / "console-inbox-escalation.png"), full_page=True)

    row.get_by_role("link", name="打开").click()
    console.wait_for_url(re.compile(r"/console/conversations/\d+$"))
    console.wait_for_selector('body[data-live="1"]', state="attached")
    expect(console.locator("#messages")).to_contain_text("我要转人工")

    # The reply reaches the citizen's page live, under the staff member's display name.
    console.fill("#reply-text", GREETING)
    console.click("#reply-form button[type=submit]")
    staff_bubble = citizen.page.locator(".msg", has_text=GREETING)
    expect(staff_bubble).to_be_visible()
    expect(staff_bubble.locator(".msg-sender")).to_have_text(STAFF_NAME)
    expect(console.locator("#messages li.staff")).to_contain_text(GREETING)
    expect(console.locator("#reply-text")).to_have_value("")

    # The citizen's next message goes to staff, not to the bot, and shows up live.
    citizen.page.locator("#input").fill(PROBLEM)
    citizen.page.locator("#input").press("Enter")
    expect(console.locator("#messages li.citizen").last).to_contain_text(PROBLEM)
    citizen.page.screenshot(path=str(artifacts_dir / "citizen-chat-staff-reply.png"), full_page=True)
    console.screenshot(path=str(artifacts_dir / "console-conversation.png"), full_page=True)

    # File the drafted case in one click.
    draft = console.locator("#draft-case")
    draft.locator("textarea[name=description]").fill(PROBLEM)
    draft.locator("input[name=location]").fill("A6区幸福路与建设路路口")
    draft.locator("input[name=contact_phone]").fill("13912345678")
    draft.locator("select[name=category]").select_option("城乡建设")
    draft.locator("button[type=submit]").click()
    notice = console.locator(".flash.notice")
    expect(notice).to_contain_text("已登记工单")
    number_match = re.search(r"\d{8}-\d{4,6}", notice.text_content() or "")
    assert number_match, notice.text_content()
    number = number_match.group(0)

    # Hand the conversation back: the citizen is told, and the bot answers again.
    console.get_by_role("button", name="交还机器人").click()
    expect(console.locator(".flash.notice")).to_contain_text("已交还机器人")
    expect(citizen.page.locator(".msg", has_text=utter("utter_handoff_released"))).to_be_visible()
    expect(citizen.page.locator("#handoff-banner")).to_be_hidden()
    citizen.type_and_enter("你好")
    assert citizen.last_bot_text() == utter("utter_greet")

    # Work the case to 已办结 through the life cycle.
    console.goto(f"{stack.app_url}/console/cases/{number}")
    expect(console.locator("#case-status")).to_have_text("已派单")
    for action, label, status in (("accept", "签收", "已签收"), ("start", "开始办理", "办理中")):
        console.locator(f'form[data-action="{action}"] button', has_text=label).click()
        expect(console.locator("#case-status")).to_have_text(status)
    resolve = console.locator('form[data-action="resolve"]')
    resolve.locator("textarea[name=note]").fill("已安排维修人员补装井盖并设置警示标志")
    resolve.locator("button").click()
    expect(console.locator("#case-status")).to_have_text("已办结")
    expect(console.locator("#timeline")).to_contain_text("已安排维修人员补装井盖")
    expect(console.locator("#timeline")).to_contain_text(STAFF_NAME)
    console.screenshot(path=str(artifacts_dir / "console-case-resolved.png"), full_page=True)

    # A refused move says why, and the page stays usable.
    console.goto(f"{stack.app_url}/console/cases?status=resolved")
    expect(console.locator("#case-list")).to_contain_text(number)

    assert staff_problems == [], staff_problems
    assert citizen.problems == [], citizen.problems


def test_the_browser_is_refused_a_csrf_less_post_and_another_departments_case(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    housing_case = file_case_now(stack, "A-housing")[0]
    username = create_staff(stack, "agent", "A-transport", display_name="交通赵")
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    other = console.goto(f"{stack.app_url}/console/cases/{housing_case}")
    assert other is not None and other.status == 404
    console.goto(f"{stack.app_url}/console/cases")
    expect(console.locator("#case-list")).not_to_contain_text(housing_case)

    # The browser's own cookies, but no CSRF token: what a forged cross-site form would send.
    forged = console.request.post(f"{stack.app_url}/console/logout", form={"anything": "1"})
    assert forged.status == 403
    console.goto(f"{stack.app_url}/console/inbox")  # still signed in: the forged logout did nothing
    expect(console.locator("header .me")).to_contain_text("交通赵")
    console.screenshot(path=str(artifacts_dir / "console-agent-inbox.png"), full_page=True)
    unexpected = [p for p in problems if "status of 404" not in p and "status of 403" not in p]
    assert unexpected == [], problems


def test_an_agent_sees_a_masked_draft_phone_and_no_other_departments_case(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    housing_case, transport_case, conversation_id = citizen_with_a_draft(stack, "browser-draft-two-departments")
    username = create_staff(stack, "agent", "A-housing", display_name="住建李")
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    console.goto(f"{stack.app_url}/console/conversations/{conversation_id}")
    expect(console.locator("#draft-case")).to_contain_text("139****5678")
    expect(console.locator("main")).to_contain_text(housing_case)
    expect(console.locator("body")).not_to_contain_text(transport_case)
    assert DRAFT_PHONE not in console.content() and transport_case not in console.content()
    console.screenshot(path=str(artifacts_dir / "console-conversation-scoped.png"), full_page=True)
    assert problems == [], problems


def test_an_agent_returns_a_case_to_the_dispatchers_and_lands_on_the_case_list(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    number = file_case_now(stack, "A-housing")[0]
    username = create_staff(stack, "agent", "A-housing", display_name="住建孙")
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    console.goto(f"{stack.app_url}/console/cases/{number}")
    form = console.locator("form.action-form[data-action=return]")
    form.locator("textarea[name=note]").fill("不属于本部门职责，请重新派单")
    form.locator("button[type=submit]").click()

    # 退回 takes the case out of the agent's department: the agent lands on their list, told it worked.
    console.wait_for_url(re.compile(r"/console/cases$"))
    expect(console.locator(".flash.notice")).to_contain_text("工单已变为「退回」")
    expect(console.locator("#case-list")).not_to_contain_text(number)
    console.screenshot(path=str(artifacts_dir / "console-agent-returned-case.png"), full_page=True)

    # The dispatchers see it waiting in their queue.
    dispatcher = new_page(browser, problems)
    sign_in(dispatcher, stack, create_staff(stack, "supervisor", display_name="值班周"))
    dispatcher.goto(f"{stack.app_url}/console/queue")
    expect(dispatcher.locator("main")).to_contain_text(number)
    assert [p for p in problems if "status of 404" not in p] == [], problems


READ_BACK = f"好的，您的联系电话是 {DRAFT_PHONE}，对吗？"


async def long_handed_off_conversation(stack: Stack, sender: str, exchanges: int) -> int:
    """A REST-channel conversation of ``exchanges`` citizen/bot pairs, the bot reading a phone number
    back in the middle, waiting in the hotline's inbox; its id."""
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await resolve_identity(session, "rest", sender)
            conversation = await current_conversation(session, identity)
            for turn in range(exchanges):
                log_incoming(session, conversation, f"第{turn + 1}条：小区门口的路灯还是不亮", max_chars=10_000)
                answer = READ_BACK if turn == exchanges // 2 else f"收到第{turn + 1}条，请继续说明"
                log_outgoing(session, conversation, [OutgoingMessage(answer)])
            log_incoming(session, conversation, "我要转人工", max_chars=10_000)
            await handoff.request_handoff(session, conversation)
            return conversation.id
    finally:
        await engine.dispose()


TRANSCRIPT_AT_END = "(el) => Math.abs(el.scrollHeight - el.scrollTop - el.clientHeight) <= 2"


def test_a_long_conversation_opens_at_its_latest_message_with_phones_masked_and_no_claim_once_claimed(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    sender = unique("browser-long")
    conversation_id = run_now(long_handed_off_conversation(stack, sender, 30))
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, create_staff(stack, "supervisor", display_name="值班吴"))

    console.goto(f"{stack.app_url}/console/conversations/{conversation_id}")
    console.wait_for_selector('body[data-live="1"]', state="attached")
    transcript = console.locator("#messages")
    assert transcript.evaluate("(el) => el.scrollHeight > el.clientHeight + 200"), "the transcript should overflow"
    console.wait_for_function(
        f"() => {{ const el = document.getElementById('messages'); return ({TRANSCRIPT_AT_END})(el); }}"
    )
    expect(transcript.locator("li").last).to_contain_text("我要转人工")
    expect(transcript).to_contain_text("139****5678")
    assert DRAFT_PHONE not in (transcript.text_content() or "")
    console.screenshot(path=str(artifacts_dir / "console-conversation-latest.png"), full_page=True)

    console.get_by_role("button", name="认领").click()
    expect(console.locator(".flash.notice")).to_contain_text("已认领这个会话")
    expect(console.locator("#holder")).to_have_text("处理人：值班吴")
    expect(console.get_by_role("button", name="认领")).to_have_count(0)
    assert transcript.evaluate(TRANSCRIPT_AT_END)
    console.screenshot(path=str(artifacts_dir / "console-conversation-claimed.png"), full_page=True)

    # A live message keeps the transcript at its end; one that arrives while the agent reads
    # further back leaves them where they are.
    console.wait_for_selector('body[data-live="1"]', state="attached")
    assert stack.rest(sender, "补充一下：灯杆旁边还有积水") == []
    expect(transcript.locator("li").last).to_contain_text("灯杆旁边还有积水")
    assert transcript.evaluate(TRANSCRIPT_AT_END)
    transcript.evaluate("(el) => { el.scrollTop = 0; }")
    assert stack.rest(sender, "晚上八点以后完全看不见路") == []
    expect(transcript.locator("li").last).to_contain_text("完全看不见路")
    assert transcript.evaluate("(el) => el.scrollTop") == 0

    # The audited 显示完整号码 shows the number the bot read back.
    console.get_by_role("button", name="显示完整号码（将记入审计日志）").click()
    expect(transcript).to_contain_text(READ_BACK)
    assert problems == [], problems


async def queued_case(stack: Stack, district: str, suggestions: list[str]) -> str:
    """A case the model was unsure of, waiting in the dispatch queue with its suggestions; its number."""
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await resolve_identity(session, "web", unique("browser-queue"))
            report = Report("河边有人倾倒建筑垃圾", f"{district}滨河路", "13812345678", district)
            case = await file_case(session, identity, report)
            session.add(
                RoutingDecision(
                    case_id=case.id,
                    category=suggestions[0],
                    confidence=0.4,
                    probabilities={name: 0.4 - 0.1 * rank for rank, name in enumerate(suggestions)},
                    suggestions=suggestions,
                    model_version="test",
                    rule="manual queue: confidence 0.40 below threshold",
                    department_id=None,
                    district=district,
                    queued=True,
                    urgent=False,
                )
            )
            return case.case_number
    finally:
        await engine.dispose()


async def department_id(stack: Stack, name: str) -> str:
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine)() as session:
            found = await session.scalar(select(Department.id).where(Department.name == name))
            assert found is not None
            return str(found)
    finally:
        await engine.dispose()


def test_dispatch_dropdowns_preselect_the_suggested_department_and_reassign_never_the_current_one(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    number = run_now(queued_case(stack, "A2区", ["环境保护", "城乡建设", "交通运输"]))
    suggested = run_now(department_id(stack, "A2区生态环境分局"))
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, create_staff(stack, "supervisor", display_name="值班郑"))

    console.goto(f"{stack.app_url}/console/queue")
    row = console.locator("tr", has=console.get_by_role("link", name=number))
    expect(row.locator("select[name=department_id]")).to_have_value(suggested)
    console.screenshot(path=str(artifacts_dir / "console-queue-suggested.png"), full_page=True)

    console.goto(f"{stack.app_url}/console/cases/{number}")
    dispatch = console.locator('form[data-action="dispatch"] select[name=department_id]')
    expect(dispatch).to_have_value(suggested)
    console.locator('form[data-action="dispatch"] button').click()
    expect(console.locator("#case-status")).to_have_text("已派单")
    expect(console.locator("main")).to_contain_text("A2区生态环境分局")

    # 改派 must go elsewhere: the department the case is at is never pre-selected.
    expect(console.locator('form[data-action="reassign"] select[name=department_id]')).to_have_value("")
    console.screenshot(path=str(artifacts_dir / "console-case-reassign.png"), full_page=True)
    assert problems == [], problems


def test_a_supervisor_reads_the_timeline_routing_and_audit_log_in_chinese(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    number = routed_case_now(stack)
    username = create_staff(stack, "supervisor", display_name="值班吴")
    mover = ConsoleClient(stack)
    assert mover.login(username).status_code == 200
    resolve_through_the_console(mover, number)
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    console.goto(f"{stack.app_url}/console/cases/{number}")
    console.locator("summary", has_text="派单依据").click()
    expect(console.locator("main")).to_contain_text("规则：城乡建设 × A1区")
    timeline = console.locator("#timeline")
    for shown in ("智能助手", "智能分派", "值班吴", "办理中 → 已办结"):
        expect(timeline).to_contain_text(shown)
    case_text = console.locator("main").inner_text()
    for code in ("bot", "dispatch", "rule:", "→ resolved", "case."):
        assert code not in case_text, code
    console.screenshot(path=str(artifacts_dir / "console-case-timeline-chinese.png"), full_page=True)

    console.goto(f"{stack.app_url}/console/audit")
    row = console.locator("tr", has_text=number).filter(has_text="办结工单")
    expect(row).to_contain_text("值班吴")
    expect(row).to_contain_text("办理中 → 已办结")
    expect(row.locator("td[title]").first).to_have_attribute("title", username)  # the username as a tooltip
    audit_text = console.locator("main").inner_text()
    for code in ("case.", "→ resolved", "rule:", "conversation.", "login.failed"):
        assert code not in audit_text, code
    console.screenshot(path=str(artifacts_dir / "console-audit-chinese.png"), full_page=True)
    assert [p for p in problems if "status of 404" not in p] == [], problems


def test_a_case_filed_beside_an_open_one_links_to_it_both_ways(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    original, number = file_beside_an_open_case(stack, unique("dup"), "B2区枫林路农贸市场")
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, create_staff(stack, "supervisor", display_name="值班周"))

    console.goto(f"{stack.app_url}/console/cases/{number}")
    earlier = console.locator("#related-earlier")
    expect(earlier).to_contain_text(f"{original}")
    expect(earlier).to_contain_text("仍选择单独提交")
    console.screenshot(path=str(artifacts_dir / "console-case-related.png"), full_page=True)
    earlier.get_by_role("link", name=original).click()
    console.wait_for_url(re.compile(f"/console/cases/{original}$"))
    expect(console.locator("#related-later")).to_contain_text(number)
    assert problems == [], problems
