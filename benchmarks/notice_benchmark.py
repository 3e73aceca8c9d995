"""Benchmark of progress notices: how fast a burst of case moves reaches 1,000 Telegram citizens,
and how long one move on an idle system takes to reach the citizen (Telegram and the web chat).

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.notice_benchmark [--out-dir results] > results/notice_benchmark.md

It starts its own engine and one app on free loopback ports with a temporary database, tracker
store and secrets (``tests/support/stack.py``); the app has Telegram enabled (webhook mode) with
``TELEGRAM_API_BASE_URL`` pointing at the tests' fake Bot API (``tests/support/fake_telegram.py``),
which runs in a thread of this process on 127.0.0.1 and stamps every call it receives with
``time.monotonic()`` — the same clock the client uses, so "request sent → Telegram received the
message" needs no clock translation. Markdown report on stdout, progress on stderr, every figure
in ``notice_benchmark.json`` in ``--out-dir``. Both processes are stopped at the end, also on
errors. Everything goes to 127.0.0.1.

What is measured:

1. **Burst: notices per second to 1,000 citizens.** 1,000 Telegram citizens (identity, citizen,
   conversation) each get a case, inserted straight into the stack's database with the CRM's own
   services (``resolve_identity``, ``current_conversation``, ``file_case``) and moved to 已派单 at
   one department — no notice is sent for that. A supervisor signed in to the console then
   签收s (``POST /console/cases/{n}/action``, action ``accept``, as the page's script posts it)
   all 1,000 cases, 20 requests in flight at a time. Measured: from the first request sent to the
   1,000th citizen's ``sendMessage`` arriving at the fake Bot API (notices per second), and per
   case the time from its request being sent to the fake receiving that chat's message. Every
   chat must get exactly one message with the expected text (「您的工单 … 有新进展：已签收（…）…」);
   missing, doubled and wrong messages are counted.
2. **Idle: one change at a time.** 50 further Telegram citizens, one 签收 after another (the next
   only after the previous notice arrived, and a 0.2 s pause): request sent → fake receives the
   message. The same for 50 web-chat citizens, each with an open ``/ws`` connection (hello frame,
   like the page) whose identity filed the case: request sent → the notice frame on the socket.
3. **Burst with rate limiting.** The same 1,000 citizens, 开始办理 (action ``start``), while the fake
   Bot API answers every ``--throttle-every``-th ``sendMessage`` with 429 and ``retry_after`` 1 s
   (the app waits it out and retries). Same counts and timings.

Times are taken at the client, which shares the machine with the app and the engine; the report
gives the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import select

from benchmarks.console_benchmark import console_client, create_staff, sign_in, summary_row
from benchmarks.run_benchmarks import (
    log,
    machine_info,
    model_missing,
    summarize,
    table,
    temporary_stack,
    write_report,
)
from bot.channels.webchat import external_id_for
from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.lifecycle import CaseAction
from crm_backend.models import Department
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor, move_case
from tests.support.domain_text import utter
from tests.support.fake_telegram import FakeTelegram
from tests.support.stack import Stack

BOT_TOKEN = "123456789:BENCH-token-of-the-fake-bot-api"
REGISTERED_WEBHOOK = "https://bot.example.org/webhooks/telegram"
SUPERVISOR = "bench.notice.supervisor"
DEPARTMENT_CODE = "A3-housing"
FIRST_CHAT_ID = 910_000_000
ENGINE_TIMEOUT_SECONDS = 30.0
WAIT_SECONDS = 30.0  # longest wait for any one notice in the idle runs
PHASE_SECONDS = 600.0  # longest a burst may take, requests and notices together
STALL_SECONDS = 60.0  # a burst stops waiting once no new notice came for this long
QUIET_SECONDS = 3.0  # after the last expected notice: time for doubled ones to show
IDLE_PAUSE_SECONDS = 0.2
INSERT_BATCH = 100
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)


# --- the fake Bot API, with an optional 429 every N messages -------------------------------------


class ThrottlingTelegram(FakeTelegram):
    """The tests' fake Bot API; when ``every`` > 0, every ``every``-th sendMessage gets a 429."""

    every: int = 0
    retry_after: int = 1
    send_count: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if self.every and request.match_info.get("method") == "sendMessage":
            self.send_count += 1  # only the fake's own event loop thread runs this
            if self.send_count % self.every == 0:
                self.throttle("sendMessage", 1, self.retry_after)
        return await super()._handle(request)


# --- setting up citizens and cases ---------------------------------------------------------------


def async_url(database_url: str) -> str:
    return "sqlite+aiosqlite:///" + database_url.removeprefix("sqlite:///")


async def file_dispatched_cases(database_url: str, owners: list[tuple[str, str]]) -> tuple[list[str], str]:
    """A dispatched case for each (channel, external id), straight into the database; the case
    numbers (in the owners' order) and the department's name."""
    engine = create_engine(async_url(database_url))
    sessions = create_sessionmaker(engine)
    numbers: list[str] = []
    actor = Actor.system("benchmark")
    try:
        async with sessions() as session:
            department = await session.scalar(select(Department).where(Department.code == DEPARTMENT_CODE))
        if department is None:
            raise RuntimeError(f"no department {DEPARTMENT_CODE} in the database")
        for start in range(0, len(owners), INSERT_BATCH):
            async with sessions.begin() as session:
                for index, (channel, external_id) in enumerate(owners[start : start + INSERT_BATCH], start):
                    identity = await resolve_identity(session, channel, external_id)
                    conversation = await current_conversation(session, identity)
                    report = Report(
                        description=f"人民路{index % 300 + 1}号门口的路灯坏了好几天，晚上很黑",
                        location=f"A3区人民路{index % 300 + 1}号",
                        contact_phone=f"138{index:08d}",
                        district="A3区",
                    )
                    case = await file_case(session, identity, report, conversation_id=conversation.id, actor=actor)
                    await move_case(session, actor, case, CaseAction.DISPATCH, department_id=department.id)
                    numbers.append(case.case_number)
        return numbers, department.name
    finally:
        await engine.dispose()


# --- staff moving cases -------------------------------------------------------------------------


@dataclass
class Console:
    """A signed-in supervisor's browser, posting case actions as the page's script does."""

    http: aiohttp.ClientSession
    base_url: str
    csrf: str

    async def act(self, number: str, action: str) -> str | None:
        """Perform an action; None if it worked, else what went wrong."""
        headers = {"X-CSRF-Token": self.csrf, "X-Requested-With": "fetch", "Origin": self.base_url}
        try:
            async with self.http.post(
                f"{self.base_url}/console/cases/{number}/action",
                data={"action": action, "note": ""},
                headers=headers,
                timeout=REQUEST_TIMEOUT,
            ) as resp:
                body = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"{number}: {error!r}"
        if resp.status != 200 or '"ok": true' not in body.replace('"ok":true', '"ok": true'):
            return f"{number}: {resp.status} {body[:200]}"
        return None


# --- what the fake Bot API received -------------------------------------------------------------


def messages_since(fake: FakeTelegram, since: float, chats: set[str]) -> dict[str, list[tuple[float, str]]]:
    """Delivered sendMessage calls (answered 200) to these chats since ``since``: chat → [(at, text)]."""
    found: dict[str, list[tuple[float, str]]] = {}
    for call in fake.calls_of("sendMessage"):
        chat = str(call.params.get("chat_id"))
        if call.at >= since and chat in chats:
            found.setdefault(chat, []).append((call.at, str(call.params.get("text", ""))))
    return found


def throttled_since(fake: FakeTelegram, since: float) -> int:
    return sum(call.at >= since for call in fake.calls_of("sendMessage", answered=429))


async def wait_for_chats(fake: FakeTelegram, since: float, chats: set[str], deadline: float) -> None:
    """Until every chat has a message, no new one came for STALL_SECONDS, or the deadline."""
    seen, last_progress = -1, time.monotonic()
    while time.monotonic() < deadline:
        have = len(messages_since(fake, since, chats))
        if have >= len(chats):
            return
        if have != seen:
            seen, last_progress = have, time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            log(f"  no progress for {STALL_SECONDS:.0f} s with {have}/{len(chats)} chats told; giving up waiting")
            return
        await asyncio.sleep(0.2)


# --- 1 and 3: a burst --------------------------------------------------------------------------------


def logged_at(database: Path, texts: set[str], wall_minus_monotonic: float) -> dict[str, float]:
    """When each of these notices was written to its conversation (the message row's created_at,
    set by the app when it logs the notice, just before handing it to Telegram), on the monotonic clock."""
    found: dict[str, float] = {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute(
            "SELECT text, created_at FROM message WHERE direction = 'out' AND sender_kind = 'system' ORDER BY id"
        )
        for text, created_at in rows:
            if text in texts:
                moment = dt.datetime.fromisoformat(str(created_at))
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=dt.UTC)
                found.setdefault(text, moment.timestamp() - wall_minus_monotonic)
    return found


async def burst(
    database: Path,
    console: Console,
    fake: ThrottlingTelegram,
    chat_of: dict[str, str],
    action: str,
    expected: dict[str, str],
    concurrency: int,
) -> dict[str, Any]:
    """Move every case in ``chat_of`` with ``concurrency`` requests in flight; what arrived, and when."""
    sent_at: dict[str, float] = {}
    answered_after: list[float] = []
    failures: list[str] = []
    pending = iter(list(chat_of))

    async def worker() -> None:
        for number in pending:  # one iterator shared by the workers: each case once
            started = sent_at[number] = time.monotonic()
            problem = await console.act(number, action)
            if problem is None:
                answered_after.append(time.monotonic() - started)
            else:
                failures.append(problem)

    wall_minus_monotonic = time.time() - time.monotonic()
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), PHASE_SECONDS)
    requests_done = time.monotonic()
    chats = set(chat_of.values())
    await wait_for_chats(fake, started, chats, started + PHASE_SECONDS)
    await asyncio.sleep(QUIET_SECONDS)
    received = messages_since(fake, started, chats)
    logged = await asyncio.to_thread(logged_at, database, set(expected.values()), wall_minus_monotonic)

    latencies: list[float] = []
    to_logged: list[float] = []
    logged_to_sent: list[float] = []
    firsts: list[float] = []
    missing: list[str] = []
    doubled: list[str] = []
    wrong: list[str] = []
    for number, chat in chat_of.items():
        got = received.get(chat, [])
        if not got:
            missing.append(number)
            continue
        first_at, text = got[0]
        firsts.append(first_at)
        if number in sent_at:
            latencies.append(first_at - sent_at[number])
        written = logged.get(expected[number])
        if written is not None and number in sent_at:
            to_logged.append(written - sent_at[number])
            logged_to_sent.append(first_at - written)
        if len(got) > 1:
            doubled.append(f"{number}: {len(got)} messages")
        if any(t != expected[number] for _, t in got):
            wrong.append(f"{number}: {text[:80]}")
    firsts.sort()
    last_notice = firsts[-1] if firsts else None
    span = (last_notice - started) if last_notice is not None else None
    return {
        "cases": len(chat_of),
        "concurrency": concurrency,
        "action": action,
        "requests_seconds": round(requests_done - started, 2),
        "requests_per_second": round(len(chat_of) / (requests_done - started), 1),
        "request_answered": summarize(answered_after),
        "request_failures": failures[:20],
        "request_failure_count": len(failures),
        "notices_received": len(firsts),
        "first_change_to_last_notice_seconds": round(span, 2) if span is not None else None,
        "notices_per_second": round(len(firsts) / span, 1) if span else None,
        "last_notice_after_last_request_seconds": round(last_notice - requests_done, 2) if last_notice else None,
        "change_to_notice": summarize(latencies),
        "change_to_notice_logged": summarize(to_logged),
        "notice_logged_to_telegram": summarize(logged_to_sent),
        "missing": len(missing),
        "missing_cases": missing[:20],
        "doubled": len(doubled),
        "doubled_cases": doubled[:20],
        "wrong_text": len(wrong),
        "wrong_text_cases": wrong[:20],
        "answered_429": throttled_since(fake, started),
    }


# --- 2: one change at a time ----------------------------------------------------------------------


async def idle_telegram(
    console: Console, fake: FakeTelegram, chat_of: dict[str, str], expected: dict[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    problems: list[str] = []
    for number, chat in chat_of.items():
        started = time.monotonic()
        problem = await console.act(number, "accept")
        if problem is not None:
            problems.append(problem)
            continue
        deadline = started + WAIT_SECONDS
        got: list[tuple[float, str]] = []
        while time.monotonic() < deadline:
            got = messages_since(fake, started, {chat}).get(chat, [])
            if got:
                break
            await asyncio.sleep(0.01)
        if not got:
            problems.append(f"{number}: no message within {WAIT_SECONDS:.0f} s")
        else:
            latencies.append(got[0][0] - started)
            if got[0][1] != expected[number]:
                problems.append(f"{number}: unexpected text {got[0][1][:80]}")
        await asyncio.sleep(IDLE_PAUSE_SECONDS)
    await asyncio.sleep(QUIET_SECONDS)
    doubled = sum(len(fake.sent_to(int(chat))) > 1 for chat in chat_of.values())  # these chats get one message
    return {"changes": len(chat_of), "change_to_notice": summarize(latencies), "problems": problems, "doubled": doubled}


@dataclass
class WebCitizen:
    """One web chat tab: a websocket that said hello, and futures for the notices it waits for."""

    ws: aiohttp.ClientWebSocketResponse
    session_token: str = ""
    waiting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    notices: Counter[str] = field(default_factory=Counter)

    async def hello(self) -> None:
        await self.ws.send_str(json.dumps({"type": "hello", "session": None}))
        welcome = await self.ws.receive_json(timeout=WAIT_SECONDS)
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected a welcome frame, got {welcome}")
        self.session_token = welcome["session"]

    async def read(self) -> None:
        async for message in self.ws:
            now = time.monotonic()
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("type") != "reply":
                continue
            for shown in frame.get("messages", []):
                text = str(shown.get("text", ""))
                self.notices[text] += 1
                for number in [n for n in self.waiting if n in text]:
                    future = self.waiting.pop(number)
                    if not future.done():
                        future.set_result(now)


async def idle_web(stack: Stack, console: Console, count: int) -> dict[str, Any]:
    ws_url = stack.app_url.replace("http", "ws", 1) + "/ws"
    citizens: list[WebCitizen] = []
    readers: list[asyncio.Task[None]] = []
    latencies: list[float] = []
    problems: list[str] = []
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        try:
            for _ in range(count):
                ws = await http.ws_connect(ws_url, headers={"Origin": stack.app_url}, heartbeat=None)
                citizen = WebCitizen(ws)
                await citizen.hello()
                citizens.append(citizen)
            owners = [("web", external_id_for(c.session_token)) for c in citizens]
            assert stack.database_url is not None
            numbers, department = await file_dispatched_cases(stack.database_url, owners)
            readers = [asyncio.create_task(c.read()) for c in citizens]
            loop = asyncio.get_running_loop()
            for citizen, number in zip(citizens, numbers, strict=True):
                arrived = citizen.waiting[number] = loop.create_future()
                started = time.monotonic()
                problem = await console.act(number, "accept")
                if problem is not None:
                    problems.append(problem)
                    continue
                try:
                    latencies.append(await asyncio.wait_for(arrived, WAIT_SECONDS) - started)
                except TimeoutError:
                    problems.append(f"{number}: no notice frame within {WAIT_SECONDS:.0f} s")
                await asyncio.sleep(IDLE_PAUSE_SECONDS)
            await asyncio.sleep(QUIET_SECONDS)
            for citizen, number in zip(citizens, numbers, strict=True):
                expected = utter("utter_case_notice", case_number=number, status="已签收", detail=f"（{department}）")
                if citizen.notices[expected] != 1:
                    problems.append(f"{number}: the notice arrived {citizen.notices[expected]} times")
        finally:
            for citizen in citizens:
                await citizen.ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return {"changes": count, "change_to_notice": summarize(latencies), "problems": problems[:20]}


# --- the run ------------------------------------------------------------------------------------


def outbox_counts(database: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM telegram_outbox GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def app_log_problems(path: Path) -> dict[str, Any]:
    """Warnings and errors the app logged, counted by their first 120 characters."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"lines": 0, "warnings": 0, "errors": 0, "examples": []}
    flagged = [line for line in lines if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    return {
        "lines": len(lines),
        "warnings": sum(" WARNING " in line for line in flagged),
        "errors": sum(" ERROR " in line or "Traceback" in line for line in flagged),
        "examples": [line[:240] for line in flagged[:10]],
    }


async def measure(stack: Stack, fake: ThrottlingTelegram, args: argparse.Namespace, password: str) -> dict[str, Any]:
    assert stack.database_url is not None
    results: dict[str, Any] = {}
    database = stack.workdir / "crm.db"
    chats = [str(FIRST_CHAT_ID + i) for i in range(args.citizens + args.idle)]
    log(f"filing {len(chats)} dispatched cases for Telegram citizens straight into the database")
    t0 = time.perf_counter()
    numbers, department = await file_dispatched_cases(stack.database_url, [("telegram", chat) for chat in chats])
    results["setup_seconds"] = round(time.perf_counter() - t0, 1)
    results["department"] = department
    chat_of = dict(zip(numbers, chats, strict=True))
    burst_cases = dict(list(chat_of.items())[: args.citizens])
    idle_cases = dict(list(chat_of.items())[args.citizens :])

    def notice(status: str, cases: dict[str, str]) -> dict[str, str]:
        return {n: utter("utter_case_notice", case_number=n, status=status, detail=f"（{department}）") for n in cases}

    async with console_client() as http:
        console = Console(http, stack.app_url, await sign_in(http, stack.app_url, SUPERVISOR, password))
        log(f"burst: 签收 of {args.citizens} cases, {args.concurrency} requests in flight")
        results["burst"] = await burst(
            database, console, fake, burst_cases, "accept", notice("已签收", burst_cases), args.concurrency
        )
        log(f"  {results['burst']['notices_per_second']} notices/s; {results['burst']['missing']} missing")
        await asyncio.sleep(2.0)
        log(f"idle: {args.idle} single 签收 on Telegram")
        results["idle_telegram"] = await idle_telegram(console, fake, idle_cases, notice("已签收", idle_cases))
        log(f"idle: {args.idle} single 签收 on the web chat")
        results["idle_web"] = await idle_web(stack, console, args.idle)
        if args.throttle_every > 0:
            await asyncio.sleep(2.0)
            fake.every, fake.retry_after = args.throttle_every, 1
            log(f"burst with a 429 (retry_after 1 s) every {args.throttle_every} sendMessage: 开始办理")
            try:
                results["burst_throttled"] = await burst(
                    database, console, fake, burst_cases, "start", notice("办理中", burst_cases), args.concurrency
                )
            finally:
                fake.every = 0
            results["burst_throttled"]["throttle_every"] = args.throttle_every
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info()}
    started = time.perf_counter()
    fake = ThrottlingTelegram(BOT_TOKEN)
    fake.start()
    try:
        with temporary_stack("bench-notice-", engine_timeout_seconds=ENGINE_TIMEOUT_SECONDS) as stack:
            workdir = Path(stack.workdir)
            log("starting engine and app (Telegram on, against the fake Bot API)")
            t0 = time.perf_counter()
            stack.start_engine()
            stack.start_app(
                extra_env={
                    "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
                    "TELEGRAM_WEBHOOK_SECRET": secrets.token_urlsafe(24),
                    "TELEGRAM_API_BASE_URL": fake.base_url,
                    "TELEGRAM_WEBHOOK_URL": REGISTERED_WEBHOOK,
                }
            )
            fake.wait_for_call("setWebhook", timeout=30)
            results["stack_start_seconds"] = round(time.perf_counter() - t0, 1)
            password = create_staff(stack, SUPERVISOR, "supervisor", "通知测速值班长")
            results.update(asyncio.run(measure(stack, fake, args, password)))
            results["outbox"] = outbox_counts(workdir / "crm.db")
            results["app_log"] = app_log_problems(workdir / "app.log")
    finally:
        fake.stop()
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


# --- the report ---------------------------------------------------------------------------------


def render_burst(title: str, b: dict[str, Any]) -> str:
    rows = [
        ["cases moved", b["cases"]],
        ["requests in flight", b["concurrency"]],
        ["all requests answered after", f"{b['requests_seconds']} s ({b['requests_per_second']} requests/s)"],
        ["notices received (chats told)", b["notices_received"]],
        ["first change sent → last chat's notice", f"{b['first_change_to_last_notice_seconds']} s"],
        ["**notices per second**", f"**{b['notices_per_second']}**"],
        ["last notice after the last request was answered", f"{b['last_notice_after_last_request_seconds']} s"],
        ["missing / doubled / wrong text", f"{b['missing']} / {b['doubled']} / {b['wrong_text']}"],
        ["sendMessage answered 429", b["answered_429"]],
        ["failed requests", b["request_failure_count"]],
    ]
    parts = [title, table(["", "value"], rows), ""]
    parts.append(
        table(
            ["Measured", "n", "p50 ms", "p95 ms", "max ms"],
            [
                summary_row("change request sent → its answer", b["request_answered"]),
                summary_row("change request sent → Telegram received the chat's notice", b["change_to_notice"]),
                summary_row("… of which: request sent → notice logged in the database", b["change_to_notice_logged"]),
                summary_row("… of which: notice logged → Telegram received it", b["notice_logged_to_telegram"]),
            ],
        )
    )
    problems = [*b["request_failures"], *b["missing_cases"], *b["doubled_cases"], *b["wrong_text_cases"]]
    if problems:
        parts.append("\nProblems seen:\n\n" + "\n".join(f"- {p}" for p in problems[:20]))
    return "\n".join(parts) + "\n"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]

    def load(values: Any) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    parts = [
        "## Progress notice benchmark\n",
        f"Run on {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_total_gb']} GB RAM, {m['os']}. "
        f"Load average (1, 5, 15 min) at start {load(m['loadavg_at_start'])}; at end {load(m['loadavg_at_end'])}. "
        "Engine, app, the fake Bot API and this client share the machine; the fake stamps each call it "
        "receives on the client's clock. SQLite database. Changes are 签收 (accept) posted to the console "
        f"as a signed-in supervisor; cases dispatched to {results['department']}; "
        f"{results['setup_seconds']} s to insert the citizens and cases.\n",
        render_burst(
            f"### Burst: {results['burst']['cases']:,} Telegram citizens, one change each\n", results["burst"]
        ),
    ]
    tg, webchat = results["idle_telegram"], results["idle_web"]
    parts.append(
        f"### One change at a time on an idle system ({tg['changes']} each, {IDLE_PAUSE_SECONDS} s apart)\n\n"
        + table(
            ["Measured", "n", "p50 ms", "p95 ms", "max ms"],
            [
                summary_row("Telegram: request sent → fake Bot API received sendMessage", tg["change_to_notice"]),
                summary_row("web chat: request sent → notice frame on the open /ws", webchat["change_to_notice"]),
            ],
        )
        + f"\n\nProblems: Telegram {len(tg['problems'])} (doubled {tg['doubled']}), web chat "
        f"{len(webchat['problems'])}.\n"
    )
    for problem in [*tg["problems"], *webchat["problems"]][:20]:
        parts.append(f"- {problem}")
    if "burst_throttled" in results:
        b = results["burst_throttled"]
        parts.append(
            render_burst(
                f"### Burst with rate limiting: a 429 (retry_after 1 s) every {b['throttle_every']}th sendMessage, "
                "开始办理 on the same citizens\n",
                b,
            )
        )
    outbox = ", ".join(f"{k} {v}" for k, v in sorted(results["outbox"].items())) or "empty"
    app_log = results["app_log"]
    parts.append(
        f"Telegram outbox at the end: {outbox}. App log: {app_log['lines']} lines, {app_log['warnings']} warnings, "
        f"{app_log['errors']} errors."
    )
    if app_log["examples"]:
        parts.append("\n```\n" + "\n".join(app_log["examples"]) + "\n```")
    parts.append(
        f"\n_Whole run {results['total_seconds']} s, of which stack start {results['stack_start_seconds']} s._\n"
    )
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="where notice_benchmark.json goes")
    parser.add_argument("--citizens", type=int, default=1000, help="Telegram citizens in the bursts")
    parser.add_argument("--concurrency", type=int, default=20, help="change requests in flight during a burst")
    parser.add_argument("--idle", type=int, default=50, help="single changes on the idle system, per channel")
    parser.add_argument(
        "--throttle-every", type=int, default=50, help="a 429 every N sendMessage in the last burst (0: skip it)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if model_missing():
        return 2
    results = run(args)
    out = write_report(results, args.out_dir / "notice_benchmark.json", render)
    log(f"done in {results['total_seconds']} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
