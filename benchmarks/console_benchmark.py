"""Benchmark of the staff console: live latency both ways, and the case list at 100,000 cases.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.console_benchmark [--out-dir results] > results/console_benchmark.md

It starts its own engine and app on free loopback ports with a temporary database, tracker
store and secrets (``tests/support/stack.py``), prints a Markdown report on stdout, progress
on stderr, writes every figure to ``console_benchmark.json`` in ``--out-dir``, and stops
both processes at the end, also on errors. Everything goes to 127.0.0.1.

What is measured, as the browser and the console page do it:

1. **Citizen message → staff console.** 20 citizens connect to the web chat websocket
   (``/ws``, with the page's Origin header), say hello and ask for a person (「我要转人工」), so
   their conversations are handed off and the bot stays silent. A supervisor is signed in
   (``/console/login``) with an inbox page and one conversation page per conversation open:
   each page holds its own server-sent-events stream (``/console/events``) and, like
   ``console.js``, on an event for its conversation fetches the new transcript rows
   (``/console/conversations/{id}/messages?after=N``, one fetch at a time per page); the
   inbox page re-fetches its rows on every event. Each citizen then sends its messages one
   after another (a short pause between them), all 20 at once. Per message: the time from
   the websocket send to (a) the page's SSE event for that conversation and (b) the
   message's text being in a fetched transcript fragment, i.e. on the staff member's screen.
2. **Staff reply → citizen page.** For the same 20 conversations at once, the conversation
   page posts replies (``/console/conversations/{id}/reply``, ``X-CSRF-Token`` from the
   page's ``data-csrf``, ``X-Requested-With: fetch``) one after another; per reply, the time
   from the POST to the citizen's websocket receiving the reply frame with that text.
3. **Case list at 100,000 cases.** 100,000 cases (with 20,000 citizens and their web
   identities) are bulk-inserted into the stack's SQLite database while the app runs, with
   a spread of statuses, categories, districts, departments and due dates (open cases
   partly overdue, ~1 % 督办). ``GET /console/cases`` is then timed as a supervisor and as
   an agent of one district bureau: the first page, the page reached by following
   「下一页」 100 times, and filtered lists. The database is not ``ANALYZE``d, as the app
   never does that either.

Times are taken at the client, which shares the machine (and its event loop) with the app
and the engine, so they include client-side scheduling; the report gives the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import html
import json
import os
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

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
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.lifecycle import OPEN_STATUSES, CaseStatus
from crm_backend.models import ChannelIdentity, Citizen, ServiceCase, utcnow
from tests.support import two_factor
from tests.support.stack import APP_PYTHON, ROOT, Stack

ENGINE_TIMEOUT_SECONDS = 30.0  # a slow engine shows as a slow handoff, not as "system busy"
WAIT_SECONDS = 30.0  # longest wait for any one message, event or reply
PHASE_SECONDS = 600.0  # longest any concurrent phase may run
HANDOFF_TEXT = "我要转人工"
SESSION_COOKIE = "console_session"
SUPERVISOR = "bench.supervisor"
AGENT = "bench.agent"
AGENT_DEPARTMENT = "A3-housing"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)

CSRF_INPUT = re.compile(r'name="csrf" value="([^"]+)"')
BODY_CSRF = re.compile(r'data-csrf="([^"]+)"')
NEXT_PAGE = re.compile(r'id="next-page" href="([^"]+)"')
CASE_ROW = re.compile(r'<a href="/console/cases/\d{8}-\d{4,}">')
MESSAGE_ROW = re.compile(r'<li class="msg [^"]*" data-id="(\d+)">.*?<div class="text">(.*?)(?:<em>|</div>)', re.S)

# --- the synthetic case load ---------------------------------------------------------------------

CASES = 100_000
CITIZENS = 20_000
INSERT_BATCH = 5_000
# district → weight; A3区 is the busiest, so its housing bureau (the agent's) has > 100 pages.
DISTRICTS = {
    "A1区": 12,
    "A2区": 13,
    "A3区": 22,
    "A4区": 11,
    "A5区": 10,
    "A6区": 8,
    "A7县": 8,
    "A8县": 8,
    "A9市": 8,
}
CATEGORIES = {  # category → (weight, department code suffix)
    "城乡建设": (32, "housing"),
    "环境保护": (14, "environment"),
    "交通运输": (14, "transport"),
    "教育文体": (7, "education"),
    "劳动和社会保障": (12, "labour"),
    "商贸旅游": (10, "commerce"),
    "卫生计生": (11, "health"),
}
STATUSES = {
    CaseStatus.RECEIVED: 2,
    CaseStatus.RETURNED: 1,
    CaseStatus.DISPATCHED: 6,
    CaseStatus.ACCEPTED: 6,
    CaseStatus.IN_PROGRESS: 15,
    CaseStatus.RESOLVED: 15,
    CaseStatus.REVIEWED: 15,
    CaseStatus.ARCHIVED: 40,
}
QUEUED = {CaseStatus.RECEIVED, CaseStatus.RETURNED}  # waiting for the dispatcher: no department
PROBLEMS = (
    "路灯坏了好几天，晚上很黑",
    "楼下餐馆油烟直排，窗户都不敢开",
    "工地夜间施工噪音扰民",
    "小区门口道路破损积水",
    "公交站台顶棚漏雨",
    "学校门口早高峰乱停车",
    "单位拖欠工资三个月",
    "超市出售过期食品",
    "诊所收费不明码标价",
    "河道有人倾倒垃圾",
)
STREETS = ("人民路", "建设路", "解放路", "中山路", "和平街", "幸福里", "滨河路", "文化路")


# --- statistics and small helpers ---------------------------------------------------------------


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def summary_row(label: str, stats: dict[str, Any]) -> list[Any]:
    return [label, stats.get("n", 0), ms(stats.get("p50_ms")), ms(stats.get("p95_ms")), ms(stats.get("max_ms"))]


async def bounded(awaitable: Awaitable[float], timeout: float = WAIT_SECONDS) -> float | None:
    """The awaited moment, or None if it did not come in time."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        return None


def resolve(future: asyncio.Future[float] | None, moment: float) -> None:
    if future is not None and not future.done():
        future.set_result(moment)


# --- the citizen's side: the web chat websocket ------------------------------------------------


@dataclass
class ChatCitizen:
    """One browser tab of the web chat, reading frames as chat.js does."""

    index: int
    ws: aiohttp.ClientWebSocketResponse
    session_token: str = ""
    conversation_id: int = 0
    acks: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    replies: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    handoff: asyncio.Future[float] | None = None
    bot_replies_in_handoff: int = 0
    errors: list[str] = field(default_factory=list)
    in_handoff: bool = False

    async def hello(self) -> None:
        await self.ws.send_str(json.dumps({"type": "hello", "session": None}))
        welcome = await self.ws.receive_json(timeout=WAIT_SECONDS)
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"citizen {self.index}: expected a welcome frame, got {welcome}")
        self.session_token = welcome["session"]

    async def send(self, text: str, msg_id: str) -> asyncio.Future[float]:
        """Send one message; the future resolves when its ack arrives."""
        ack: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.acks[msg_id] = ack
        await self.ws.send_str(json.dumps({"type": "message", "id": msg_id, "text": text}, ensure_ascii=False))
        return ack

    async def read(self) -> None:
        """Route every frame to whoever waits for it, stamped with its arrival time."""
        async for message in self.ws:
            now = time.perf_counter()
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            kind = frame.get("type")
            if kind == "ack":
                resolve(self.acks.pop(frame.get("id", ""), None), now)
            elif kind == "reply":
                if self.in_handoff and frame.get("in_reply_to"):
                    self.bot_replies_in_handoff += 1
                for shown in frame.get("messages", []):
                    text = str(shown.get("text", ""))
                    for token in [token for token in self.replies if token in text]:
                        resolve(self.replies.pop(token), now)
            elif kind == "handoff" and frame.get("active"):
                self.in_handoff = True
                resolve(self.handoff, now)
            elif kind == "error":
                self.errors.append(str(frame))


# --- the staff side: console pages with their event streams ------------------------------------


class ConsolePage:
    """One open console page: its SSE stream, and what console.js does on each event."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, conversation_id: int | None) -> None:
        self.http = http
        self.base_url = base_url
        self.conversation_id = conversation_id  # None: the inbox page
        self.stream: aiohttp.ClientResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[None]] = set()
        self.fetch_lock = asyncio.Lock()  # console.js fetches one transcript refresh at a time
        self.last_id = 0
        self.next_event: asyncio.Future[float] | None = None
        self.pending_texts: dict[str, asyncio.Future[float]] = {}
        self.escalations: dict[int, float] = {}
        self.fetch_seconds: list[float] = []
        self.failures: list[str] = []

    async def open(self) -> None:
        """Open the event stream and wait until the server has subscribed it."""
        self.stream = await self.http.get(
            f"{self.base_url}/console/events", headers={"Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT
        )
        if self.stream.status != 200:
            raise RuntimeError(f"/console/events answered {self.stream.status}")
        first = await asyncio.wait_for(self.stream.content.readline(), WAIT_SECONDS)
        if not first.startswith(b"retry:"):  # written right after the feed subscription
            raise RuntimeError(f"unexpected first line of the event stream: {first!r}")
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        tasks = [task for task in (self.reader, *self.background) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.stream is not None:
            self.stream.close()

    async def _read(self) -> None:
        assert self.stream is not None
        kind, data = "", ""
        async for raw in self.stream.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and data:
                self._on_event(kind, json.loads(data), time.perf_counter())
                kind, data = "", ""

    def _on_event(self, kind: str, data: dict[str, Any], now: float) -> None:
        conversation_id = int(data.get("conversation_id", 0))
        if self.conversation_id is None:
            if kind == "escalation":
                self.escalations.setdefault(conversation_id, now)
            self._spawn(self.refresh_inbox())
        elif conversation_id == self.conversation_id:
            if kind == "message":
                resolve(self.next_event, now)
            self._spawn(self.refresh_messages())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _fragment(self, path: str) -> str | None:
        started = time.perf_counter()
        try:
            async with self.http.get(
                f"{self.base_url}{path}", headers={"Accept": "text/html-fragment"}, timeout=REQUEST_TIMEOUT
            ) as resp:
                body = await resp.text()
                if resp.status != 200:
                    self.failures.append(f"GET {path}: {resp.status}")
                    return None
        except (aiohttp.ClientError, TimeoutError) as error:
            self.failures.append(f"GET {path}: {error!r}")
            return None
        self.fetch_seconds.append(time.perf_counter() - started)
        return body

    async def refresh_inbox(self) -> None:
        await self._fragment("/console/inbox/rows")

    async def refresh_messages(self) -> None:
        """New transcript rows after the last one shown; stamps the texts that waited for them."""
        async with self.fetch_lock:
            body = await self._fragment(f"/console/conversations/{self.conversation_id}/messages?after={self.last_id}")
            now = time.perf_counter()
            for row_id, raw_text in MESSAGE_ROW.findall(body or ""):
                self.last_id = max(self.last_id, int(row_id))
                text = html.unescape(raw_text)
                for token in [token for token in self.pending_texts if token in text]:
                    resolve(self.pending_texts.pop(token), now)


# --- signing in ---------------------------------------------------------------------------------


def create_staff(stack: Stack, username: str, role: str, display_name: str, department: str | None = None) -> str:
    """A console account made with the operator CLI (password on stdin); returns the password."""
    password = secrets.token_urlsafe(18)
    command = [str(APP_PYTHON), "-m", "crm_backend", "create-user", "--username", username, "--role", role]
    command += ["--display-name", display_name]
    if department:
        command += ["--department", department]
    done = subprocess.run(
        command, input=password + "\n", text=True, cwd=ROOT, env=stack.env, capture_output=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"create-user {username} failed: {done.stdout}{done.stderr}")
    return password


async def sign_in(http: aiohttp.ClientSession, base_url: str, username: str, password: str) -> str:
    """Sign in as the login page does; returns the session's CSRF token (the pages' data-csrf)."""
    async with http.get(f"{base_url}/console/login") as resp:
        found = CSRF_INPUT.search(await resp.text())
    if found is None:
        raise RuntimeError("no csrf field on the sign-in page")
    form = {"csrf": html.unescape(found.group(1)), "username": username, "password": password}
    async with http.post(f"{base_url}/console/login", data=form, allow_redirects=False) as resp:
        if resp.status != 303 or SESSION_COOKIE not in resp.cookies:
            raise RuntimeError(f"sign-in as {username} failed: {resp.status} {await resp.text()}")
        step = resp.headers.get("Location", "")
    if step in (two_factor.ENROL_PATH, two_factor.CODE_PATH):
        await second_factor(http, base_url, username, step)
    async with http.get(f"{base_url}/console/inbox", headers={"Accept": "text/html"}) as resp:
        page = BODY_CSRF.search(await resp.text())
    if page is None:
        raise RuntimeError("no data-csrf on the inbox page")
    return html.unescape(page.group(1))


async def second_factor(http: aiohttp.ClientSession, base_url: str, username: str, step: str) -> None:
    """Enrol (secret read off the page) or give a code, as the member's authenticator app would."""
    async with http.get(f"{base_url}{step}") as resp:
        page = await resp.text()
    found = CSRF_INPUT.search(page)
    if found is None:
        raise RuntimeError(f"no csrf field on {step}")
    if step == two_factor.ENROL_PATH:
        code = two_factor.first_code(username, two_factor.secret_in(page))
    else:
        code = two_factor.next_code(username)
    form = {"csrf": html.unescape(found.group(1)), "code": code}
    async with http.post(f"{base_url}{step}", data=form, allow_redirects=False) as resp:
        if resp.status not in (200, 303):
            raise RuntimeError(f"second factor of {username} refused: {resp.status}")


def console_client() -> aiohttp.ClientSession:
    # unsafe=True: keep cookies set by an IP address host (127.0.0.1); no connection cap,
    # since 21 pages each hold an event stream open.
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), connector=aiohttp.TCPConnector(limit=0), timeout=REQUEST_TIMEOUT
    )


def conversation_of(database: Path, session_token: str) -> int:
    """The conversation the web chat keeps for a session (read from the stack's database)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        row = db.execute(
            "SELECT conversation.id FROM conversation JOIN channel_identity ON channel_identity.id = identity_id "
            "WHERE channel_identity.channel = 'web' AND channel_identity.external_id = ? "
            "ORDER BY conversation.id DESC LIMIT 1",
            (external_id_for(session_token),),
        ).fetchone()
    if row is None:
        raise RuntimeError("no conversation for a citizen's session")
    return int(row[0])


# --- 1 and 2: live latency ----------------------------------------------------------------------


async def pause(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0.2, 0.8))  # a person reading and typing, compressed


async def citizen_messages(
    citizen: ChatCitizen, page: ConsolePage, count: int, rng: random.Random, out: dict[str, list[Any]]
) -> None:
    """One citizen's messages during the handoff, each timed to the console's event and screen."""
    loop = asyncio.get_running_loop()
    for k in range(count):
        token = f"bq{citizen.index:02d}x{k:02d}{secrets.token_hex(3)}"
        text = f"补充一下情况（第{k + 1}条），编号 {token}"
        page.next_event = loop.create_future()
        shown = page.pending_texts[token] = loop.create_future()
        started = time.perf_counter()
        ack = await citizen.send(text, f"m-{token}")
        acked, evented, on_screen = await asyncio.gather(bounded(ack), bounded(page.next_event), bounded(shown))
        for name, moment in (("ack", acked), ("event", evented), ("screen", on_screen)):
            if moment is None:
                out["missing"].append(f"citizen {citizen.index} message {k}: no {name} within {WAIT_SECONDS}s")
            else:
                out[name].append(moment - started)
        await pause(rng)


async def staff_replies(
    http: aiohttp.ClientSession,
    base_url: str,
    csrf: str,
    citizen: ChatCitizen,
    page: ConsolePage,
    count: int,
    rng: random.Random,
    out: dict[str, list[Any]],
) -> None:
    """The conversation page's replies, each timed to the citizen's websocket."""
    loop = asyncio.get_running_loop()
    headers = {"X-CSRF-Token": csrf, "X-Requested-With": "fetch", "Origin": base_url}
    url = f"{base_url}/console/conversations/{citizen.conversation_id}/reply"
    for k in range(count):
        token = f"br{citizen.index:02d}x{k:02d}{secrets.token_hex(3)}"
        arrived = citizen.replies[token] = loop.create_future()
        started = time.perf_counter()
        try:
            async with http.post(
                url, data={"text": f"您好，我们已收到（{k + 1}），编号 {token}"}, headers=headers
            ) as resp:
                answer = await resp.json(content_type=None)
                posted = time.perf_counter()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            out["missing"].append(f"reply {citizen.index}/{k}: POST failed: {error!r}")
            citizen.replies.pop(token, None)
            continue
        if resp.status != 200 or not answer.get("ok"):
            out["missing"].append(f"reply {citizen.index}/{k}: {resp.status} {answer}")
            citizen.replies.pop(token, None)
            continue
        out["post"].append(posted - started)
        if answer.get("notice") != "已发送":
            out["not_live"].append(f"reply {citizen.index}/{k}: {answer.get('notice')}")
        moment = await bounded(arrived)
        if moment is None:
            out["missing"].append(f"reply {citizen.index}/{k}: not on the citizen's page within {WAIT_SECONDS}s")
        else:
            out["citizen"].append(moment - started)
        await page.refresh_messages()  # console.js refreshes the transcript after sending
        await pause(rng)


async def live_benchmarks(stack: Stack, args: argparse.Namespace, password: str) -> dict[str, Any]:
    base_url = stack.app_url
    ws_url = base_url.replace("http", "ws", 1) + "/ws"
    database = stack.workdir / "crm.db"
    rng = random.Random(4)
    results: dict[str, Any] = {"conversations": args.conversations, "messages_each": args.messages}
    citizens: list[ChatCitizen] = []
    pages: list[ConsolePage] = []
    readers: list[asyncio.Task[None]] = []
    async with console_client() as staff_http, aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as chat_http:
        try:
            csrf = await sign_in(staff_http, base_url, SUPERVISOR, password)
            inbox = ConsolePage(staff_http, base_url, None)
            await inbox.open()
            pages.append(inbox)

            log(f"{args.conversations} citizens connect and ask for a person")
            for index in range(args.conversations):
                ws = await chat_http.ws_connect(ws_url, headers={"Origin": base_url}, heartbeat=None)
                citizen = ChatCitizen(index, ws)
                await citizen.hello()
                citizens.append(citizen)
                readers.append(asyncio.create_task(citizen.read()))
            loop = asyncio.get_running_loop()
            sent_at: dict[int, float] = {}
            for citizen in citizens:
                citizen.handoff = loop.create_future()
            for citizen in citizens:
                sent_at[citizen.index] = time.perf_counter()
                await citizen.send(HANDOFF_TEXT, f"h-{citizen.index}")
            handed = await asyncio.gather(*(bounded(c.handoff, 120) for c in citizens if c.handoff is not None))
            failed = [c.index for c, moment in zip(citizens, handed, strict=True) if moment is None]
            if failed:
                raise RuntimeError(f"no handoff frame for citizens {failed} (see engine.log and app.log)")
            for citizen in citizens:
                citizen.conversation_id = await asyncio.to_thread(conversation_of, database, citizen.session_token)
            await asyncio.sleep(1.0)  # let the escalation events reach the inbox page
            handoff_seconds = [m - sent_at[c.index] for c, m in zip(citizens, handed, strict=True) if m]
            escalation_seconds = [
                inbox.escalations[c.conversation_id] - sent_at[c.index]
                for c in citizens
                if c.conversation_id in inbox.escalations
            ]
            results["handoff"] = {
                "citizen_frame": summarize(handoff_seconds),
                "escalation_event": summarize(escalation_seconds),
            }

            for citizen in citizens:
                page = ConsolePage(staff_http, base_url, citizen.conversation_id)
                await page.open()
                await page.refresh_messages()  # the page as first rendered
                pages.append(page)
            log(f"phase 1: {args.conversations} × {args.messages} citizen messages → staff console")
            inbound: dict[str, list[Any]] = {"ack": [], "event": [], "screen": [], "missing": []}
            started = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        citizen_messages(c, p, args.messages, rng, inbound)
                        for c, p in zip(citizens, pages[1:], strict=True)
                    )
                ),
                PHASE_SECONDS,
            )
            results["citizen_to_console"] = {
                "seconds": round(time.perf_counter() - started, 1),
                "ack": summarize(inbound["ack"]),
                "sse_event": summarize(inbound["event"]),
                "on_screen": summarize(inbound["screen"]),
                "missing": inbound["missing"],
                "bot_replies_during_handoff": sum(c.bot_replies_in_handoff for c in citizens),
            }

            log(f"phase 2: {args.conversations} × {args.messages} staff replies → citizen page")
            outbound: dict[str, list[Any]] = {"post": [], "citizen": [], "missing": [], "not_live": []}
            started = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        staff_replies(staff_http, base_url, csrf, c, p, args.messages, rng, outbound)
                        for c, p in zip(citizens, pages[1:], strict=True)
                    )
                ),
                PHASE_SECONDS,
            )
            results["staff_to_citizen"] = {
                "seconds": round(time.perf_counter() - started, 1),
                "post": summarize(outbound["post"]),
                "on_citizen_page": summarize(outbound["citizen"]),
                "missing": outbound["missing"],
                "not_live": outbound["not_live"],
            }
            results["inbox_rows_fetch"] = summarize(inbox.fetch_seconds)
            results["transcript_fetch"] = summarize([s for page in pages[1:] for s in page.fetch_seconds])
            results["fetch_failures"] = [failure for page in pages for failure in page.failures][:20]
            results["citizen_errors"] = [error for citizen in citizens for error in citizen.errors][:20]
        finally:
            for page in pages:
                await page.close()
            for citizen in citizens:
                await citizen.ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return results


# --- 3: the case list with 100,000 cases --------------------------------------------------------


def weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def insert_cases(database: Path, count: int, rng: random.Random) -> dict[str, Any]:
    """Bulk-insert citizens, their web identities and `count` cases; returns what went in."""
    engine = sa.create_engine(f"sqlite:///{database}", connect_args={"timeout": 60})
    started = time.perf_counter()
    now = utcnow()
    try:
        with engine.begin() as conn:
            departments = {
                code: (d_id, name)
                for d_id, code, name in conn.execute(sa.text("SELECT id, code, name FROM department"))
            }
            existing = {row[0] for row in conn.execute(sa.text("SELECT case_number FROM service_case"))}
            first_citizen = int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM citizen")).scalar_one()) + 1
            first_identity = (
                int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM channel_identity")).scalar_one()) + 1
            )
        citizens = [
            {
                "id": first_citizen + i,
                "phone": f"13{rng.randrange(10**9):09d}",
                "created_at": now - dt.timedelta(days=rng.uniform(0, 400)),
            }
            for i in range(CITIZENS)
        ]
        identities = [
            {
                "id": first_identity + i,
                "channel": "web",
                "external_id": secrets.token_hex(20),
                "citizen_id": citizen["id"],
                "created_at": citizen["created_at"],
            }
            for i, citizen in enumerate(citizens)
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(Citizen), citizens)
            conn.execute(sa.insert(ChannelIdentity), identities)

        drafts: list[dict[str, Any]] = []
        for _ in range(count):
            status = weighted(rng, STATUSES)
            category = weighted(rng, {name: weight for name, (weight, _) in CATEGORIES.items()})
            district = weighted(rng, DISTRICTS)
            owner = rng.randrange(CITIZENS)
            if status in QUEUED:
                created = now - dt.timedelta(days=rng.uniform(0, 3))
                department, due = None, None
            else:
                open_case = status in OPEN_STATUSES
                created = now - dt.timedelta(days=rng.uniform(0, 20) if open_case else rng.uniform(10, 365))
                suffix = CATEGORIES[category][1]
                code = f"{district[:2]}-{suffix}" if rng.random() < 0.9 else f"A-{suffix}"
                department = departments[code]
                due = created + dt.timedelta(days=rng.uniform(10, 25))
            street = rng.choice(STREETS)
            drafts.append(
                {
                    "citizen_id": citizens[owner]["id"],
                    "identity_id": identities[owner]["id"],
                    "conversation_id": None,
                    "description": f"{district}{street}{rng.choice(PROBLEMS)}，希望尽快处理。",
                    "location": f"{district}{street}{rng.randrange(1, 300)}号",
                    "district": district,
                    "contact_phone": citizens[owner]["phone"],
                    "category": category,
                    "department": department[1] if department else None,
                    "department_id": department[0] if department else None,
                    "status": status.value,
                    "urgent": rng.random() < 0.02,
                    "due_at": due,
                    "duplicate_of_id": None,
                    "supervised": rng.random() < 0.01,
                    "created_at": created,
                    "updated_at": created,
                }
            )
        drafts.sort(key=lambda draft: draft["created_at"])  # ids grow with time, as in real life
        per_day: dict[str, int] = {}
        for draft in drafts:
            day = draft["created_at"].astimezone(CHINA_TZ).strftime("%Y%m%d")
            number = ""
            while not number or number in existing:
                per_day[day] = per_day.get(day, 0) + 1
                number = f"{day}-{per_day[day]:04d}"
            draft["case_number"] = number
        for start in range(0, len(drafts), INSERT_BATCH):
            with engine.begin() as conn:
                conn.execute(sa.insert(ServiceCase), drafts[start : start + INSERT_BATCH])
            log(f"  inserted {min(start + INSERT_BATCH, len(drafts))} cases")
        agent_department = departments[AGENT_DEPARTMENT][0]
        with engine.connect() as conn:
            total = int(conn.execute(sa.text("SELECT COUNT(*) FROM service_case")).scalar_one())
    finally:
        engine.dispose()
    open_values = {s.value for s in OPEN_STATUSES}
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "cases_inserted": count,
        "cases_total": total,
        "citizens_inserted": CITIZENS,
        "by_status": {s.value: sum(d["status"] == s.value for d in drafts) for s in CaseStatus},
        "open": sum(d["status"] in open_values for d in drafts),
        "overdue": sum(d["status"] in open_values and d["due_at"] < now for d in drafts),
        "supervised": sum(d["supervised"] for d in drafts),
        "agent_department_id": agent_department,
        "agent_department_cases": sum(d["department_id"] == agent_department for d in drafts),
    }


@dataclass
class ListTiming:
    """One case-list scenario: how long its page took, and how many cases it showed."""

    role: str
    scenario: str
    query: str
    rows: int = 0
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def get_page(http: aiohttp.ClientSession, url: str) -> tuple[float, int, str]:
    started = time.perf_counter()
    async with http.get(url, headers={"Accept": "text/html"}, allow_redirects=False) as resp:
        body = await resp.text()
    return time.perf_counter() - started, resp.status, body


async def walk_pages(http: aiohttp.ClientSession, base_url: str, depth: int) -> tuple[str, int, list[float]]:
    """Follow 「下一页」 up to `depth` times from the first page; the last URL, pages followed, times."""
    url = f"{base_url}/console/cases"
    times: list[float] = []
    followed = 0
    while followed < depth:
        seconds, status, body = await get_page(http, url)
        times.append(seconds)
        found = NEXT_PAGE.search(body) if status == 200 else None
        if found is None:
            break
        url = base_url + html.unescape(found.group(1))
        followed += 1
    return url, followed, times


async def time_scenario(http: aiohttp.ClientSession, timing: ListTiming, url: str, repeats: int) -> None:
    for attempt in range(repeats + 1):  # the first one warms up and is not counted
        seconds, status, body = await get_page(http, url)
        if status != 200:
            timing.errors.append(f"{status}: {body[:200]}")
            continue
        timing.rows = len(CASE_ROW.findall(body))
        if attempt:
            timing.seconds.append(seconds)


async def case_list_benchmarks(
    stack: Stack, args: argparse.Namespace, passwords: dict[str, str], loaded: dict[str, Any]
) -> dict[str, Any]:
    base_url = stack.app_url
    department = loaded["agent_department_id"]
    filters = [
        ("状态 办理中", "status=in_progress"),
        ("状态 已归档 (the largest status)", "status=archived"),
        ("分类 城乡建设", "category=%E5%9F%8E%E4%B9%A1%E5%BB%BA%E8%AE%BE"),
        ("区县 A3区", "district=A3%E5%8C%BA"),
        ("已超期", "overdue=1"),
        ("督办", "supervised=1"),
        (f"承办部门 {AGENT_DEPARTMENT}", f"department={department}"),
        ("办理中 + A3区 + 已超期", "status=in_progress&district=A3%E5%8C%BA&overdue=1"),
        (
            "A9市 + 教育文体 + 督办 (rare)",
            "district=A9%E5%B8%82&category=%E6%95%99%E8%82%B2%E6%96%87%E4%BD%93&supervised=1",
        ),
    ]
    timings: list[ListTiming] = []
    walks: dict[str, Any] = {}
    for role, username in (("supervisor", SUPERVISOR), ("agent", AGENT)):
        async with console_client() as http:
            await sign_in(http, base_url, username, passwords[username])
            log(f"case list as {role}: first page, {args.depth} pages deep, filters")
            first = ListTiming(role, "first page", "")
            await time_scenario(http, first, f"{base_url}/console/cases", args.repeats)
            deep_url, followed, walk_times = await walk_pages(http, base_url, args.depth)
            walks[role] = {"pages_followed": followed, "each_page": summarize(walk_times)}
            deep = ListTiming(role, f"page {followed + 1} (下一页 × {followed})", deep_url.split("?", 1)[-1])
            await time_scenario(http, deep, deep_url, args.repeats)
            timings += [first, deep]
            for label, query in filters:
                timing = ListTiming(role, label, query)
                await time_scenario(http, timing, f"{base_url}/console/cases?{query}", args.repeats)
                timings.append(timing)
    return {
        "repeats": args.repeats,
        "walks": walks,
        "scenarios": [
            {
                "role": t.role,
                "scenario": t.scenario,
                "query": t.query,
                "rows_on_page": t.rows,
                "errors": t.errors[:5],
                **summarize(t.seconds),
            }
            for t in timings
        ],
    }


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info()}
    started = time.perf_counter()
    with temporary_stack("bench-console-", engine_timeout_seconds=ENGINE_TIMEOUT_SECONDS) as stack:
        workdir = Path(stack.workdir)
        log("starting engine and app")
        t0 = time.perf_counter()
        stack.start()
        results["stack_start_seconds"] = round(time.perf_counter() - t0, 1)
        passwords = {
            SUPERVISOR: create_staff(stack, SUPERVISOR, "supervisor", "值班长甲"),
            AGENT: create_staff(stack, AGENT, "agent", "A3住建坐席", AGENT_DEPARTMENT),
        }
        results["live"] = asyncio.run(live_benchmarks(stack, args, passwords[SUPERVISOR]))
        results["machine"]["loadavg_after_live"] = os.getloadavg()
        log(f"inserting {args.cases} cases into the running stack's database")
        results["case_load"] = insert_cases(workdir / "crm.db", args.cases, random.Random(12345))
        results["case_list"] = asyncio.run(case_list_benchmarks(stack, args, passwords, results["case_load"]))
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


# --- the report ---------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    m = results["machine"]

    def load(values: Any) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    live = results["live"]
    inbound, outbound = live["citizen_to_console"], live["staff_to_citizen"]
    headers = ["Measured", "n", "p50 ms", "p95 ms", "max ms"]
    parts = [
        "## Staff console benchmark\n",
        f"Run on {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_total_gb']} GB RAM, {m['os']}. "
        f"Load average (1, 5, 15 min) at start {load(m['loadavg_at_start'])}; after the live phases "
        f"{load(m['loadavg_after_live'])}; at end {load(m['loadavg_at_end'])}. Engine, app and this client share "
        "the machine; times are taken at the client. SQLite database.\n",
        f"### Citizen message → staff console ({live['conversations']} conversations at once, "
        f"{live['messages_each']} messages each, handed off)\n",
        table(
            headers,
            [
                summary_row("websocket send → ack (message stored)", inbound["ack"]),
                summary_row("websocket send → SSE event on the conversation page", inbound["sse_event"]),
                summary_row("websocket send → text in the fetched transcript (on screen)", inbound["on_screen"]),
                summary_row("transcript fragment fetch (`/messages?after=N`)", live["transcript_fetch"]),
                summary_row("inbox rows re-fetch (`/console/inbox/rows`), on every event", live["inbox_rows_fetch"]),
            ],
        ),
        f"\nMissing: {len(inbound['missing'])}; bot replies while handed off: {inbound['bot_replies_during_handoff']} "
        f"(must be 0); phase wall time {inbound['seconds']} s. Before it, the handoff itself "
        "(「我要转人工」 through the engine and `action_handoff`):\n",
        table(
            headers,
            [
                summary_row("send → handoff frame on the citizen's page", live["handoff"]["citizen_frame"]),
                summary_row("send → escalation event on the inbox page", live["handoff"]["escalation_event"]),
            ],
        ),
        f"\n### Staff reply → citizen page ({live['conversations']} conversations at once, "
        f"{live['messages_each']} replies each)\n",
        table(
            headers,
            [
                summary_row("POST /reply → reply frame on the citizen's websocket", outbound["on_citizen_page"]),
                summary_row("POST /reply → its JSON answer", outbound["post"]),
            ],
        ),
        f"\nMissing: {len(outbound['missing'])}; not delivered live: {len(outbound['not_live'])}; "
        f"phase wall time {outbound['seconds']} s.\n",
    ]
    loaded, listing = results["case_load"], results["case_list"]
    parts.append(
        f"### Case list (`GET /console/cases`) with {loaded['cases_total']:,} cases\n\n"
        f"{loaded['cases_inserted']:,} cases for {loaded['citizens_inserted']:,} citizens bulk-inserted in "
        f"{loaded['seconds']} s: {loaded['open']:,} open ({loaded['overdue']:,} overdue), "
        f"{loaded['supervised']:,} 督办; the agent's department ({AGENT_DEPARTMENT}) has "
        f"{loaded['agent_department_cases']:,}. 50 cases a page; {listing['repeats']} timed requests per row "
        "after one warm-up. "
        f"Walking 「下一页」: supervisor {listing['walks']['supervisor']['pages_followed']} pages "
        f"(p50 {ms(listing['walks']['supervisor']['each_page'].get('p50_ms'))} ms a page), agent "
        f"{listing['walks']['agent']['pages_followed']} pages "
        f"(p50 {ms(listing['walks']['agent']['each_page'].get('p50_ms'))} ms a page).\n"
    )
    rows = [
        [
            s["role"],
            s["scenario"],
            s["rows_on_page"],
            s.get("n", 0),
            ms(s.get("p50_ms")),
            ms(s.get("p95_ms")),
            ms(s.get("max_ms")),
        ]
        for s in listing["scenarios"]
    ]
    parts.append(table(["Role", "List", "Cases shown", "n", "p50 ms", "p95 ms", "max ms"], rows))
    problems = [
        *inbound["missing"],
        *outbound["missing"],
        *outbound["not_live"],
        *live["fetch_failures"],
        *live["citizen_errors"],
        *(f"{s['role']} {s['scenario']}: {e}" for s in listing["scenarios"] for e in s["errors"]),
    ]
    if problems:
        parts.append("\nProblems seen:\n\n" + "\n".join(f"- {p}" for p in problems[:30]))
    parts.append(
        f"\n_Whole run {results['total_seconds']} s, of which stack start {results['stack_start_seconds']} s._\n"
    )
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="where console_benchmark.json goes")
    parser.add_argument("--conversations", type=int, default=20, help="concurrent handed-off conversations")
    parser.add_argument("--messages", type=int, default=12, help="messages (and replies) per conversation")
    parser.add_argument("--cases", type=int, default=CASES, help="cases to insert for the case list")
    parser.add_argument("--depth", type=int, default=100, help="「下一页」 clicks for the deep page")
    parser.add_argument("--repeats", type=int, default=20, help="timed requests per case-list scenario")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if model_missing():
        return 2
    results = run(args)
    out = write_report(results, args.out_dir / "console_benchmark.json", render)
    log(f"done in {results['total_seconds']} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
