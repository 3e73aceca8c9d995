"""Background work runs once across app processes: PostgreSQL, Redis, one engine, two apps, nginx.

Both apps run the 回访 loop every second (the test stacks keep it off) and the Telegram channel
in webhook mode against the fake Bot API (`tests.support.fake_telegram`); Telegram's updates
reach the apps through nginx, as in production. Citizens file their cases on Telegram; the
cases are then moved to 已办结 either through one app's API (that app tells the citizen and asks
the 回访 question at once, while both loops look) or in the database by a process that is no
app (then a loop must ask). Each citizen must get each progress notice and the 回访 question
exactly once, counted in the `sendMessage` calls the fake Bot API received for their chat.
The fake takes longer over each send than an outbox pass's interval, so the other app always
looks while a message is in flight. Last, the app whose loop holds the lease is SIGKILLed: the
other takes the loop over and asks the cases resolved since, once, and none asked before is
asked again.

Each of these failed, as it must, with the claims broken on purpose: without the 回访 lease and
the conditional update that marks a question asked, a case was asked twice; without the lease
alone, both loops shared the work; without the outbox row's claim and the shared chat lock,
every notice went twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis
import requests

from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.periodic import LEASE_MARGIN_SECONDS
from crm_backend.services.cases import get_case
from crm_backend.settings import normalise_database_url
from tests.integration.test_dispatch_conversation import case_number_in
from tests.integration.test_telegram import SECRET, TOKEN, TelegramCitizen, answer_form_until_readback
from tests.support.cluster import Cluster
from tests.support.domain_text import utter
from tests.support.encrypted import plain
from tests.support.fake_telegram import FakeTelegram
from tests.support.models import case_type_model
from tests.support.moves import advance
from tests.support.stack import MODEL, Stack

pytestmark = pytest.mark.timeout(420)

LOOP_SECONDS = 1.0  # FOLLOWUP_CHECK_SECONDS of both apps
# Where a case the classifier left in the manual queue is sent (its code for the API, its name here).
DEPARTMENT, DEPARTMENT_NAME = "A3-commerce", "A3区商务局"
RESULT = "已安排人员处理完毕"
SEND_SECONDS = 1.5  # the fake Bot API's answer to a sendMessage, once the cases are filed (see slow_telegram)


@dataclass(frozen=True)
class Report:
    """What one Telegram citizen reports."""

    chat_id: int
    problem: str
    location: str
    phone: str


# Fixed chats and distinct problems (no 「仍然提交」 beside a similar case needed, though it is handled).
REPORTS = [
    Report(710000001, "人民路上的路灯坏了一个星期了，晚上黑漆漆的很危险", "A1区人民路中段", "13800000001"),
    Report(710000002, "小区门口的井盖丢了，晚上走路很容易掉下去", "A2区幸福小区南门", "13800000002"),
    Report(710000003, "菜市场门口的下水道堵了，污水漫到路上", "A3区东风菜市场门口", "13800000003"),
    Report(710000004, "公园里的健身器材断了一根，有安全隐患", "A4区滨江公园", "13800000004"),
    Report(710000005, "学校门口的人行道地砖松动好几块，孩子容易绊倒", "A5区实验小学门口", "13800000005"),
    Report(710000006, "天桥上的照明灯全都不亮了，晚上过天桥很吓人", "A6区中山路天桥", "13800000006"),
    Report(710000007, "广场的音乐喷泉坏了，水一直往外冒", "A7区人民广场", "13800000007"),
]
THROUGH_API = REPORTS[:2]  # resolved through one app's API each: told and asked by that app
BY_THE_LOOP = REPORTS[2:5]  # resolved in the database: asked by whichever loop holds the lease
AFTER_THE_KILL = REPORTS[5:]  # resolved once the lease holder is dead: asked by the other


@pytest.fixture(scope="module")
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram.running(TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, fake_telegram: FakeTelegram) -> Iterator[Cluster]:
    if not MODEL.exists():
        pytest.fail("no trained model: run bin/setup (bin/test does) before the integration tests")
    os.environ.setdefault("CASE_TYPE_MODEL_PATH", str(case_type_model(tmp_path_factory.mktemp("case_types"))))
    running = Cluster(
        Path(tmp_path_factory.mktemp("cluster")),
        apps=2,
        engines=1,
        app_env={
            "FOLLOWUP_CHECK_SECONDS": str(LOOP_SECONDS),  # on in both apps
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        },
    )
    try:
        running.start()
        yield running
    finally:
        print(running.tails(25))
        running.stop()


@pytest.fixture(scope="module")
def case_numbers(cluster: Cluster, fake_telegram: FakeTelegram) -> dict[int, str]:
    """Every citizen's case, filed on Telegram through nginx at once; case number by chat."""

    def file(report: Report) -> tuple[int, str]:
        citizen = TelegramCitizen(fake_telegram, cluster.apps[0])
        citizen.chat_id = report.chat_id
        citizen.webhook = f"{cluster.url}/webhooks/telegram"  # Telegram reaches the apps through nginx
        replies = citizen.say(report.problem)
        readback = answer_form_until_readback(citizen, replies, location={"text": report.location}, phone=report.phone)
        [created] = citizen.press(readback, "确认提交")
        return report.chat_id, case_number_in(created["text"])

    with ThreadPoolExecutor(len(REPORTS)) as pool:
        return dict(pool.map(file, REPORTS))


@pytest.fixture
def slow_telegram(fake_telegram: FakeTelegram, case_numbers: dict[int, str]) -> Iterator[FakeTelegram]:
    """The Bot API takes longer over each sendMessage than an outbox pass's interval: every message
    is still in flight when the other app looks at the outbox, and would go twice unless claimed."""
    fake_telegram.answer_slowly("sendMessage", SEND_SECONDS)
    try:
        yield fake_telegram
    finally:
        fake_telegram.answer_slowly("sendMessage", 0)


@pytest.fixture(scope="module")
def api_key(cluster: Cluster) -> str:
    return cluster.apps[0].create_api_client("background-test")


def database_url(cluster: Cluster) -> str:
    url = cluster.apps[0].database_url
    assert url is not None
    return url


def api(app: Stack, key: str, method: str, path: str, body: dict[str, str] | None = None) -> requests.Response:
    """A call to one app's /api/v1 (not through nginx: the test says which app moves the case)."""
    headers = {"Authorization": f"Bearer {key}"}
    return requests.request(method, f"{app.app_url}/api/v1{path}", headers=headers, json=body, timeout=30)


def resolve_through(app: Stack, key: str, number: str) -> list[str]:
    """Staff's moves to 已办结 through `app`'s API; what each notice says of its status, in order."""
    status = api(app, key, "GET", f"/cases/{number}").json()["status"]
    steps = [("accept", "负责部门已接单"), ("start", "负责部门正在办理"), ("resolve", "已办结")]
    if status == "received":
        steps.insert(0, ("dispatch", "已转交负责部门"))
    else:
        assert status == "dispatched", status
    for action, _label in steps:
        body: dict[str, str] = {"action": action, "note": RESULT if action == "resolve" else ""}
        if action == "dispatch":
            body["department"] = DEPARTMENT
        moved = api(app, key, "POST", f"/cases/{number}/transitions", body)
        assert moved.status_code == 200, moved.text
    return [label for _action, label in steps]


async def resolve_in_the_database(cluster: Cluster, numbers: list[str]) -> None:
    """Move cases to 已办结 by `move_case` in one transaction, as a process that is no app would:
    nobody is told and nobody asked, so only the 回访 loop can ask them."""
    engine = create_engine(normalise_database_url(database_url(cluster)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            for number in numbers:
                if (await get_case(session, number)).status == "received":  # left in the manual queue
                    await advance(session, number, "dispatch", department=DEPARTMENT_NAME)
                await advance(session, number, "accept", "start")
                await advance(session, number, "resolve", note=RESULT)
    finally:
        await engine.dispose()


def question(number: str) -> str:
    return utter("utter_ask_rating", followup_case=number)


def sent_texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [str(params.get("text", "")) for params in fake.sent_to(chat_id)]


def wait_for_question(fake: FakeTelegram, chat_id: int, number: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while question(number) not in sent_texts(fake, chat_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"chat {chat_id} was never asked about {number}: {sent_texts(fake, chat_id)[-3:]}")
        time.sleep(0.1)


def settle() -> None:
    """Long enough for both loops to pass several times and both outbox tasks to look again."""
    time.sleep(5 * LOOP_SECONDS)


def asked_in_log(app: Stack, number: str) -> int:
    """How often this app's log says it put the 回访 question of case `number`."""
    log = (app.workdir / "app.log").read_text(errors="replace")
    return len(re.findall(rf"回访 asked for case {re.escape(number)}\b", log))


async def logged_questions(cluster: Cluster, chat_id: int, number: str) -> tuple[int, list[str]]:
    """How often the question is in the chat's conversation log, and the chat's outbox rows' statuses."""
    connection = await asyncpg.connect(database_url(cluster))
    try:
        sent = await connection.fetch(  # the text is encrypted at rest: compared here, not in SQL
            "SELECT m.text FROM message m JOIN conversation c ON c.id = m.conversation_id "
            "JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.channel = 'telegram' AND i.external_id = $1 AND m.direction = 'out'",
            str(chat_id),
        )
        logged = sum(plain(row["text"], "message.text") == question(number) for row in sent)
        statuses = await connection.fetch("SELECT status FROM telegram_outbox WHERE chat_id = $1", str(chat_id))
    finally:
        await connection.close()
    return int(logged), [row["status"] for row in statuses]


def assert_asked_once(cluster: Cluster, fake: FakeTelegram, chat_id: int, number: str) -> None:
    sent = Counter(sent_texts(fake, chat_id))
    assert sent[question(number)] == 1, sent
    logged, outbox = asyncio.run(logged_questions(cluster, chat_id, number))
    assert logged == 1
    assert outbox and set(outbox) == {"sent"}, outbox  # nothing left waiting to go again


# --- the tests ------------------------------------------------------------------------------------


def test_a_case_resolved_through_either_app_is_told_each_move_once_and_asked_once(
    cluster: Cluster, slow_telegram: FakeTelegram, case_numbers: dict[int, str], api_key: str
) -> None:
    told: dict[int, list[str]] = {}
    before = {report.chat_id: len(slow_telegram.sent_to(report.chat_id)) for report in THROUGH_API}
    for app, report in zip(cluster.apps, THROUGH_API, strict=True):
        told[report.chat_id] = resolve_through(app, api_key, case_numbers[report.chat_id])
    for report in THROUGH_API:
        wait_for_question(slow_telegram, report.chat_id, case_numbers[report.chat_id], timeout=30)
    settle()
    for report in THROUGH_API:
        number = case_numbers[report.chat_id]
        after = sent_texts(slow_telegram, report.chat_id)[before[report.chat_id] :]
        # Each move told once, in order, then the question once: nothing twice, nothing else.
        notices = [text for text in after if text.startswith(f"您的工单 {number}")]
        assert len(notices) == len(told[report.chat_id]), after
        for notice, label in zip(notices, told[report.chat_id], strict=True):
            assert label in notice, (label, notice)
        assert after == [*notices, question(number)], after
        assert_asked_once(cluster, slow_telegram, report.chat_id, number)


def test_cases_resolved_outside_the_apps_are_asked_once_by_the_one_loop_holding_the_lease(
    cluster: Cluster, slow_telegram: FakeTelegram, case_numbers: dict[int, str]
) -> None:
    numbers = [case_numbers[report.chat_id] for report in BY_THE_LOOP]
    asyncio.run(resolve_in_the_database(cluster, numbers))
    for report in BY_THE_LOOP:
        wait_for_question(slow_telegram, report.chat_id, case_numbers[report.chat_id], timeout=30)
    settle()
    for report in BY_THE_LOOP:
        assert_asked_once(cluster, slow_telegram, report.chat_id, case_numbers[report.chat_id])
    # One loop did the work: the app holding the lease asked every one of them.
    asked = [[asked_in_log(app, number) for number in numbers] for app in cluster.apps]
    assert sorted(asked) == [[0] * len(numbers), [1] * len(numbers)], asked


def test_the_other_app_takes_the_loop_over_from_a_killed_holder_and_asks_once(
    cluster: Cluster, slow_telegram: FakeTelegram, case_numbers: dict[int, str]
) -> None:
    earlier = [case_numbers[report.chat_id] for report in BY_THE_LOOP]
    if not any(asked_in_log(app, earlier[0]) for app in cluster.apps):  # run alone: the loop's first cases
        asyncio.run(resolve_in_the_database(cluster, earlier))
        for report in BY_THE_LOOP:
            wait_for_question(slow_telegram, report.chat_id, case_numbers[report.chat_id], timeout=30)
    # The app whose loop asked them holds the lease (it keeps it from pass to pass).
    holder = next(i for i, app in enumerate(cluster.apps) if asked_in_log(app, earlier[0]))
    survivor = cluster.apps[1 - holder]
    cluster.kill_app(holder)  # its lease stays in Redis until it expires
    numbers = [case_numbers[report.chat_id] for report in AFTER_THE_KILL]
    asyncio.run(resolve_in_the_database(cluster, numbers))
    takeover = LOOP_SECONDS + LEASE_MARGIN_SECONDS + 15  # the dead holder's lease runs out, then a pass
    for report in AFTER_THE_KILL:
        wait_for_question(slow_telegram, report.chat_id, case_numbers[report.chat_id], timeout=takeover)
    settle()
    for report in AFTER_THE_KILL:
        assert_asked_once(cluster, slow_telegram, report.chat_id, case_numbers[report.chat_id])
        assert asked_in_log(survivor, case_numbers[report.chat_id]) == 1
    for report in BY_THE_LOOP:  # the new holder does not ask again what the dead one asked
        assert_asked_once(cluster, slow_telegram, report.chat_id, case_numbers[report.chat_id])


# --- a chat's updates in order across apps ---------------------------------------------------------

ORDER_CHAT = 710000099


async def incoming_texts(cluster: Cluster, chat_id: int) -> list[str]:
    """The chat's messages as logged, oldest first."""
    connection = await asyncpg.connect(database_url(cluster))
    try:
        rows = await connection.fetch(
            "SELECT m.text FROM message m JOIN conversation c ON c.id = m.conversation_id "
            "JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.channel = 'telegram' AND i.external_id = $1 AND m.direction = 'in' ORDER BY m.id",
            str(chat_id),
        )
    finally:
        await connection.close()
    return [plain(row["text"], "message.text") or "" for row in rows]


def test_a_chats_updates_stored_by_two_apps_are_handled_in_the_order_telegram_sent_them(
    cluster: Cluster, fake_telegram: FakeTelegram
) -> None:
    cluster.heal()  # both apps up (the test above killed one)
    chat_lock = f"crm12345:lock:telegram-update:{ORDER_CHAT}"
    client = redis.Redis.from_url(cluster.redis.url)
    # The chat's lock held elsewhere (a long turn on another app): both updates are stored and wait.
    assert client.set(chat_lock, "held-by-the-test", px=60_000, nx=True)
    first, second = "你好", "谢谢"
    for app, text in zip(cluster.apps, (first, second), strict=True):
        posted = fake_telegram.post_update(
            f"{app.app_url}/webhooks/telegram", fake_telegram.message_update(ORDER_CHAT, text=text), SECRET
        )
        assert posted.status_code == 200, posted.text  # stored before it was answered
    cluster.kill_app(0)  # the app holding the first update dies before it could handle it
    client.delete(chat_lock)
    client.close()
    deadline = time.monotonic() + 20  # well before the recovery pass (30 s) would find the first
    while len(logged := asyncio.run(incoming_texts(cluster, ORDER_CHAT))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged == [first, second]
