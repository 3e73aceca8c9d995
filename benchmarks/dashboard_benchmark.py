"""Benchmark of the 数据看板 at 100,000 cases: the page for 30 days, and a 100,000-row CSV export.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.dashboard_benchmark [--cases 100000] > results/dashboard_benchmark.md

It needs no engine: a temporary SQLite database is built by the real migrations, the routing
data's departments are loaded, and ``--cases`` cases (default 100,000, over the last 365 days,
with the categories, districts and departments of ``benchmarks.console_benchmark``) are
bulk-inserted with their status events as the life cycle writes them (受理, 派单, some 改派,
签收, 办理, 办结, 回访, 归档), due dates, ratings for most reviewed cases, conversations and
messages. The console's dashboard routes then run in this process on a loopback port
(``aiohttp.test_utils.TestServer``), so the times are the server's own plus a local round trip:

1. ``GET /console/dashboard?period=30d`` as a supervisor (every department) and as an agent
   (one district bureau), ``--repeats`` times each after one warm-up, and the figures service
   alone (``kpi.dashboard``) for the supervisor;
2. ``GET /console/dashboard/export/cases.csv`` for a custom period covering every case: the
   time to the last byte and the rows received;
3. the same export as XLSX, for comparison.

The database is not ``ANALYZE``d, as the app never does that either. Progress goes to stderr,
the Markdown report to stdout, every figure to ``dashboard_benchmark.json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from benchmarks.console_benchmark import CATEGORIES, DISTRICTS, PROBLEMS, STREETS
from benchmarks.run_benchmarks import log, machine_info, summarize, table, write_report
from crm_backend.analytics import kpi
from crm_backend.console.dashboard import DashboardViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.routing import seed_routing
from crm_backend.http import error_middleware
from crm_backend.models import (
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    Message,
    Satisfaction,
    ServiceCase,
    StaffUser,
    utcnow,
)
from crm_backend.services import staff
from crm_backend.settings import normalise_database_url

CITIZENS = 20_000
CONVERSATIONS = 30_000
MESSAGES_PER_CONVERSATION = 4
DAYS = 365
BATCH = 5_000
AGENT_DEPARTMENT = "A3-housing"
CHANNEL_WEIGHTS = {"web": 6, "telegram": 3, "rest": 1}
SERVER_BUDGET_MS = 500
EXPORT_BUDGET_S = 10


def weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def timeline(rng: random.Random, created: dt.datetime, now: dt.datetime) -> list[tuple[str | None, str, dt.datetime]]:
    """A case's status events as the life cycle writes them, cut at now."""
    moments: list[tuple[str | None, str, dt.datetime]] = [(None, "received", created)]
    moment = created + dt.timedelta(hours=rng.uniform(0.2, 30))
    moments.append(("received", "dispatched", moment))
    if rng.random() < 0.05:  # 改派
        moment += dt.timedelta(hours=rng.uniform(1, 24))
        moments.append(("dispatched", "dispatched", moment))
    moment += dt.timedelta(hours=rng.uniform(0.5, 48))
    moments.append(("dispatched", "accepted", moment))
    moment += dt.timedelta(hours=rng.uniform(0.5, 8))
    moments.append(("accepted", "in_progress", moment))
    moment += dt.timedelta(days=rng.uniform(0.5, 14))
    moments.append(("in_progress", "resolved", moment))
    moment += dt.timedelta(days=rng.uniform(0.2, 3))
    moments.append(("resolved", "reviewed", moment))
    moment += dt.timedelta(days=rng.uniform(0.5, 2))
    moments.append(("reviewed", "archived", moment))
    return [event for event in moments if event[2] <= now]


def insert_data(url: str, count: int, rng: random.Random) -> dict[str, Any]:
    """Bulk-insert citizens, identities, `count` cases with their events and ratings, conversations, messages."""
    engine = sa.create_engine(url.replace("sqlite+aiosqlite", "sqlite"))
    started = time.perf_counter()
    now = utcnow()
    with engine.begin() as conn:
        departments = {
            code: (d_id, name) for d_id, code, name in conn.execute(sa.text("SELECT id, code, name FROM department"))
        }
    citizens = [{"id": i + 1, "phone": f"13{rng.randrange(10**9):09d}", "created_at": now} for i in range(CITIZENS)]
    identities = [
        {
            "id": i + 1,
            "channel": weighted(rng, CHANNEL_WEIGHTS),
            "external_id": f"bench-{i}",
            "citizen_id": i + 1,
            "created_at": now,
        }
        for i in range(CITIZENS)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(Citizen), citizens)
        conn.execute(sa.insert(ChannelIdentity), identities)
    created_times = sorted(now - dt.timedelta(days=rng.uniform(0, DAYS)) for _ in range(count))
    cases: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    ratings: list[dict[str, Any]] = []
    per_day: dict[str, int] = {}
    for case_id, created in enumerate(created_times, start=1):
        category = weighted(rng, {name: weight for name, (weight, _) in CATEGORIES.items()})
        district = weighted(rng, DISTRICTS)
        owner = rng.randrange(CITIZENS)
        story = timeline(rng, created, now)
        if rng.random() < 0.03 and len(story) > 1:  # still waiting in the dispatch queue
            story = story[:1]
        status = story[-1][1]
        department = None
        if len(story) > 1:
            suffix = CATEGORIES[category][1]
            department = departments[f"{district[:2]}-{suffix}" if rng.random() < 0.9 else f"A-{suffix}"]
        day = created.astimezone(CHINA_TZ).strftime("%Y%m%d")
        per_day[day] = per_day.get(day, 0) + 1
        street = rng.choice(STREETS)
        cases.append(
            {
                "id": case_id,
                "case_number": f"{day}-{per_day[day]:04d}",
                "citizen_id": owner + 1,
                "identity_id": owner + 1,
                "conversation_id": None,
                "description": f"{district}{street}{rng.choice(PROBLEMS)}，希望尽快处理。",
                "location": f"{district}{street}{rng.randrange(1, 300)}号",
                "district": district,
                "contact_phone": citizens[owner]["phone"],
                "category": category,
                "department": department[1] if department else None,
                "department_id": department[0] if department else None,
                "status": status,
                "urgent": rng.random() < 0.02,
                "due_at": created + dt.timedelta(days=rng.uniform(5, 20)) if department else None,
                "duplicate_of_id": case_id - 1 if case_id > 1 and rng.random() < 0.02 else None,
                "supervised": False,
                "created_at": created,
                "updated_at": story[-1][2],
            }
        )
        for source, target, moment in story:
            events.append(
                {
                    "case_id": case_id,
                    "from_status": source,
                    "to_status": target,
                    "kind": "status",
                    "note": "",
                    "actor": "bench",
                    "actor_id": None,
                    "created_at": moment,
                }
            )
            if target == "reviewed" and rng.random() < 0.85:
                ratings.append(
                    {
                        "case_id": case_id,
                        "rating": weighted(rng, {5: 60, 4: 20, 3: 8, 2: 6, 1: 6}),
                        "comment": "",
                        "channel": identities[owner]["channel"],
                        "created_at": moment,
                    }
                )
    with engine.begin() as conn:
        for start in range(0, len(cases), BATCH):
            conn.execute(sa.insert(ServiceCase), cases[start : start + BATCH])
        log(f"  inserted {len(cases)} cases")
        for start in range(0, len(events), BATCH * 4):
            conn.execute(sa.insert(CaseEvent), events[start : start + BATCH * 4])
        log(f"  inserted {len(events)} events")
        conn.execute(sa.insert(Satisfaction), ratings)
        conversations = []
        for conversation_id in range(1, CONVERSATIONS + 1):
            owner = rng.randrange(CITIZENS)
            started_at = now - dt.timedelta(days=rng.uniform(0, DAYS))
            handed = rng.random() < 0.15
            conversations.append(
                {
                    "id": conversation_id,
                    "identity_id": owner + 1,
                    "channel": identities[owner]["channel"],
                    "handoff_status": "closed" if handed else "bot",
                    "handoff_requested_at": started_at if handed else None,
                    "handoff_reason": weighted(rng, {"request": 5, "fallback": 3, "complaint": 1}) if handed else None,
                    "started_at": started_at,
                    "last_message_at": started_at,
                }
            )
        conn.execute(sa.insert(Conversation), conversations)
        messages = [
            {
                "conversation_id": conversation["id"],
                "channel": conversation["channel"],
                "direction": "in" if n % 2 == 0 else "out",
                "sender_kind": "citizen" if n % 2 == 0 else "bot",
                "text": "你好",
                "created_at": conversation["started_at"] + dt.timedelta(seconds=30 * n),
            }
            for conversation in conversations
            for n in range(MESSAGES_PER_CONVERSATION)
        ]
        for start in range(0, len(messages), BATCH * 4):
            conn.execute(sa.insert(Message), messages[start : start + BATCH * 4])
        log(f"  inserted {len(conversations)} conversations, {len(messages)} messages")
    engine.dispose()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "cases": len(cases),
        "events": len(events),
        "ratings": len(ratings),
        "conversations": CONVERSATIONS,
        "messages": CONVERSATIONS * MESSAGES_PER_CONVERSATION,
        "cases_last_30_days": sum(c["created_at"] >= now - dt.timedelta(days=30) for c in cases),
        "agent_department_id": departments[AGENT_DEPARTMENT][0],
    }


async def timed_get(
    client: TestClient[web.Request, web.Application], url: str, cookie: str, cpu: list[float] | None = None
) -> tuple[float, int, bytes]:
    """Wall time of one request to its last byte; with `cpu`, also this process's CPU seconds for it.

    The server runs in this process (its database calls in aiosqlite's thread), so the CPU time is
    the server's work plus the small client side, and does not grow when other processes load the
    machine, unlike the wall time.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    response = await client.get(url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}", "Accept": "text/html"})
    body = await response.read()
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started, response.status, body


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    url = normalise_database_url(f"sqlite:///{workdir / 'dashboard.db'}")
    await upgrade_database_async(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    results: dict[str, Any] = {"machine": machine_info()}
    try:
        async with sessions.begin() as session:
            await seed_routing(session)
        log(f"inserting {args.cases} cases …")
        results["data"] = await asyncio.to_thread(insert_data, url, args.cases, random.Random(args.seed))
        async with sessions.begin() as session:
            supervisor = StaffUser(username="bench.sup", display_name="值班长", password_hash="-", role="supervisor")
            agent = StaffUser(
                username="bench.agent",
                display_name="坐席",
                password_hash="-",
                role="agent",
                department_id=results["data"]["agent_department_id"],
            )
            session.add_all([supervisor, agent])
            await session.flush()
            tokens = {
                "supervisor": (await staff.open_session(session, supervisor)).token,
                "agent": (await staff.open_session(session, agent)).token,
            }
        app = web.Application(middlewares=[error_middleware])
        DashboardViews(ConsoleBase(sessions, build_templates(), secure_cookies=False), list(DISTRICTS)).add_routes(app)
        async with TestClient(TestServer(app)) as client:
            pages: dict[str, Any] = {}
            for role, token in tokens.items():
                await timed_get(client, "/console/dashboard?period=30d", token)  # warm-up
                seconds: list[float] = []
                cpu: list[float] = []
                for _ in range(args.repeats):
                    elapsed, status, _ = await timed_get(client, "/console/dashboard?period=30d", token, cpu)
                    assert status == 200, status
                    seconds.append(elapsed)
                pages[role] = summarize(seconds)
                pages[f"{role}_cpu"] = summarize(cpu)
                log(f"  dashboard 30 days as {role}: {pages[role]}, CPU {pages[f'{role}_cpu']}")
            service = []
            today = utcnow().astimezone(CHINA_TZ).date()
            filters = kpi.Filters.from_query({"period": "30d"}, today)
            for _ in range(args.repeats):
                async with sessions() as session:
                    started = time.perf_counter()
                    await kpi.dashboard(session, supervisor, filters)
                    service.append(time.perf_counter() - started)
            pages["service_supervisor"] = summarize(service)
            results["dashboard_30_days"] = pages
            since = (today - dt.timedelta(days=DAYS + 1)).isoformat()
            query = f"period=custom&since={since}&until={today.isoformat()}"
            exports: dict[str, Any] = {}
            for extension in ("csv", "xlsx"):
                export_cpu: list[float] = []
                elapsed, status, body = await timed_get(
                    client, f"/console/dashboard/export/cases.{extension}?{query}", tokens["supervisor"], export_cpu
                )
                assert status == 200, status
                rows = (
                    sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8-sig")))) - 1
                    if extension == "csv"
                    else None
                )
                exports[extension] = {
                    "seconds": round(elapsed, 2),
                    "cpu_seconds": round(export_cpu[0], 2),
                    "bytes": len(body),
                    "rows": rows,
                }
                log(f"  export cases.{extension}: {exports[extension]}")
            results["export_all_cases"] = exports
    finally:
        await engine.dispose()
    return results


def render(results: dict[str, Any]) -> str:
    data = results["data"]
    pages = results["dashboard_30_days"]
    exports = results["export_all_cases"]
    lines = [
        "# Dashboard benchmark",
        "",
        f"{data['cases']:,} cases over {DAYS} days ({data['cases_last_30_days']:,} in the last 30), "
        f"{data['events']:,} status events, {data['ratings']:,} ratings, {data['conversations']:,} conversations, "
        f"{data['messages']:,} messages; inserted in {data['seconds']} s. SQLite, not ANALYZEd. "
        f"Machine: {results['machine']}.",
        "",
        "## The dashboard for 30 days (budget < 500 ms)",
        "",
        "Wall time to the last byte, and this process's CPU time per request (server and client share the "
        "process; CPU time does not grow with the other processes' load, wall time does).",
        "",
        table(
            ["who", "n", "p50 ms", "p95 ms", "max ms", "CPU p50 ms"],
            [
                [label, stats.get("n"), stats.get("p50_ms"), stats.get("p95_ms"), stats.get("max_ms"), cpu]
                for label, stats, cpu in (
                    ("supervisor, GET /console/dashboard", pages["supervisor"], pages["supervisor_cpu"].get("p50_ms")),
                    ("agent (one bureau), GET /console/dashboard", pages["agent"], pages["agent_cpu"].get("p50_ms")),
                    ("supervisor, kpi.dashboard() alone", pages["service_supervisor"], "–"),
                )
            ],
        ),
        "",
        "## Export of every case (budget: CSV of 100,000 rows < 10 s)",
        "",
        table(
            ["format", "seconds", "CPU seconds", "bytes", "rows"],
            [
                [
                    ext,
                    value["seconds"],
                    value["cpu_seconds"],
                    value["bytes"],
                    value["rows"] if value["rows"] is not None else "–",
                ]
                for ext, value in exports.items()
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    write_report(results, args.out_dir / "dashboard_benchmark.json", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
