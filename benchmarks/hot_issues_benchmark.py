"""Benchmark of hot-issue discovery: the real 4,326 messages, and 100,000 made from them.

Run from the project root::

    .venv/bin/python -m benchmarks.hot_issues_benchmark [--sweep] [--size 100000]

Prints, in Markdown:

1. the top 10 issues of the real board messages (`citizen_messages_hot_issues.csv`, whole
   period), with their sizes, places and time ranges, and the time taken;
2. the time to rank 100,000 messages made deterministically from the real ones: copy k of
   each message (k = 1, 2, ...) is moved k × 37 days later (wrapped into the real messages'
   year), its user id is suffixed with k (a different citizen), every 9th character of its
   text is dropped from a different offset, and its city letter changed (A市 → B市 ...), so
   copies of a complaint resemble each other as re-posts do without being identical;
3. with ``--database``, the background job's own path: the same messages bulk-inserted as
   cases into a fresh, migrated SQLite database, then `refresh_snapshot` timed (one query
   for the window's cases, the ranking off the event loop, the snapshot stored) and the
   dashboard's `top_issues` read of the cache;
4. with ``--sweep``, how the linking parameters score on six issues marked by keywords a
   reader can check (mean F1 of the issue holding most of each), the measurement behind
   the parameters in `crm_backend.hotissues.core`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import date, timedelta

import sqlalchemy as sa

from crm_backend.data.history import HOT_ISSUES_FILE, history_file
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.hotissues import core, service
from crm_backend.hotissues.core import Decisions, HotRecord, find_groups, hot_issues
from crm_backend.hotissues.sources import gazetteer_locate, read_board_csv
from crm_backend.models import ChannelIdentity, Citizen, ServiceCase
from crm_backend.settings import normalise_database_url

REAL_UNTIL = date(2020, 1, 26)  # the last message of the real file
LETTERS = "BCDEFGHJKLMNPQRSTUVWXYZ"
# Issues a reader can check in the file: (name, a place or subject pattern, a problem pattern).
MARKED_ISSUES = (
    ("伊景园滨河苑捆绑车位", "伊景园|滨河苑", "车位"),
    ("丽发新城搅拌站", "丽发", "搅拌"),
    ("魅力之城油烟夜宵", "魅力之城", "油烟|夜宵|噪音|商铺|门面|底层"),
    ("58车贷", "58车贷", ""),
    ("魅力之城开裂", "魅力之城", "开裂"),
    ("泉星公园", "泉星公园", ""),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def grown(records: list[HotRecord], size: int) -> list[HotRecord]:
    """`size` records: the real ones, then perturbed copies (see the module's docstring)."""
    first = min(r.time for r in records)
    span = (max(r.time for r in records) - first).days + 1
    out = list(records)
    copy = 0
    while len(out) < size:
        copy += 1
        letter = LETTERS[(copy - 1) % len(LETTERS)]
        for index, record in enumerate(records):
            if len(out) >= size:
                break
            offset = (record.time - first + timedelta(days=37 * copy)).days % span
            moved = first + timedelta(days=offset, seconds=(record.time - first).seconds)
            drop = (index + copy) % 9
            text = "".join(ch for i, ch in enumerate(record.text) if i % 9 != drop)
            out.append(
                replace(
                    record,
                    key=f"{record.key}-{copy}",
                    citizen=f"{record.citizen}-{copy}",
                    title=record.title.replace("A市", f"{letter}市"),
                    text=text.replace("A市", f"{letter}市"),
                    time=moved,
                )
            )
    return out


def insert_cases(database: str, records: list[HotRecord]) -> float:
    """The records as cases (one citizen and web identity per writer); returns the seconds taken."""
    started = time.perf_counter()
    writers = sorted({r.citizen for r in records})
    number = {citizen: index + 1 for index, citizen in enumerate(writers)}
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(Citizen), [{"id": number[c]} for c in writers])
            conn.execute(
                sa.insert(ChannelIdentity),
                [{"id": number[c], "channel": "web", "external_id": c, "citizen_id": number[c]} for c in writers],
            )
            conn.execute(
                sa.insert(ServiceCase),
                [
                    {
                        "case_number": r.key,
                        "citizen_id": number[r.citizen],
                        "identity_id": number[r.citizen],
                        "description": f"{r.title}\n{r.text}",
                        "location": "",
                        "contact_phone": "13800000000",
                        "status": "received",
                        "created_at": r.time,
                        "updated_at": r.time,
                    }
                    for r in records
                ],
            )
    finally:
        engine.dispose()
    return time.perf_counter() - started


async def time_job(database: str, since: date, until: date, locate: core.Locate) -> tuple[float, float, int]:
    """Seconds for the job's refresh and for the dashboard's read of the cache, and the cases ranked."""
    engine = create_engine(normalise_database_url(f"sqlite:///{database}"))
    try:
        sessions = create_sessionmaker(engine)
        started = time.perf_counter()
        snapshot = await service.refresh_snapshot(sessions, since, until, locate=locate)
        refresh = time.perf_counter() - started
        started = time.perf_counter()
        async with sessions() as session:
            top = await service.top_issues(session, since=since, until=until)
        read = time.perf_counter() - started
        assert top, "the cache holds the ranking"
        return refresh, read, snapshot.message_count
    finally:
        await engine.dispose()


def where(issue: core.HotIssue) -> str:
    """The issue's place, else its key terms (an issue about a group of people has no place)."""
    return issue.place or "、".join(issue.terms) or "—"


def top_table(issues: list[core.HotIssue]) -> list[str]:
    lines = [
        "| # | heat | messages | citizens | likes | from | to | place (or key terms) | description | 预警 |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- |",
    ]
    for rank, issue in enumerate(issues, 1):
        lines.append(
            f"| {rank} | {issue.heat} | {issue.messages} | {issue.citizens} | {issue.likes} "
            f"| {issue.first_at:%Y-%m-%d} | {issue.last_at:%Y-%m-%d} | {where(issue)} "
            f"| {issue.description} | {'预警' if issue.alert else ''} |"
        )
    return lines


def sweep(records: list[HotRecord]) -> list[str]:
    """Mean F1 over the marked issues for each setting (restores the module's values after)."""
    full = [r.title + "".join(r.text.split()) for r in records]
    marked = {
        name: {r.key for r, text in zip(records, full, strict=True) if re.search(a, text) and re.search(b, text)}
        for name, a, b in MARKED_ISSUES
    }
    saved = (core.TITLE_WEIGHT, core.DETAIL_CHARS, core.THRESHOLD, core.LINK_DAYS, core.MAX_DF)
    lines = [
        "| title weight | text chars | threshold | link days | max df | mean F1 | " + " | ".join(marked) + " |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |" + " --- |" * len(marked),
    ]
    settings = [(w, d, t, 30, 0.02) for w, d in ((1.0, 0), (0.5, 200), (0.7, 200)) for t in (0.15, 0.2, 0.25, 0.3)]
    settings += [(0.5, 200, 0.2, days, 0.02) for days in (7, 14, 60)]
    settings += [(0.5, 200, 0.2, 30, df) for df in (0.05, 0.1)]
    try:
        for setting in settings:
            core.TITLE_WEIGHT, core.DETAIL_CHARS, core.THRESHOLD, core.LINK_DAYS, core.MAX_DF = setting
            groups = find_groups(records, Decisions())
            group_of = {m.key: index for index, group in enumerate(groups) for m in group.members}
            sizes = [len(group.members) for group in groups]
            cells = []
            scores = []
            for keys in marked.values():
                best, hits = Counter(group_of.get(key, -1) for key in keys).most_common(1)[0]
                recall = hits / len(keys) if best >= 0 else 1 / len(keys)
                precision = hits / sizes[best] if best >= 0 else 1.0
                scores.append(2 * recall * precision / (recall + precision))
                cells.append(f"{recall:.2f}/{precision:.2f}")
            f1 = sum(scores) / len(scores)
            lines.append("| " + " | ".join(str(v) for v in setting) + f" | {f1:.3f} | " + " | ".join(cells) + " |")
            log(lines[-1])
    finally:
        core.TITLE_WEIGHT, core.DETAIL_CHARS, core.THRESHOLD, core.LINK_DAYS, core.MAX_DF = saved
    lines.append("")
    lines.append("Cells: recall/precision of the issue holding most of the marked messages.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hot_issues_benchmark")
    parser.add_argument("--size", type=int, default=100_000, help="messages for the timing run")
    parser.add_argument("--sweep", action="store_true", help="also score the linking parameters")
    parser.add_argument("--database", action="store_true", help="also time the job on the messages as cases")
    args = parser.parse_args(argv)

    records = read_board_csv(history_file(HOT_ISSUES_FILE))
    locate = gazetteer_locate()
    locate("A1区人民路", None)  # build the gazetteer pipeline before timing
    started = time.perf_counter()
    top = hot_issues(records, until=REAL_UNTIL, limit=10, locate=locate)
    real_seconds = time.perf_counter() - started
    print(f"# Hot issues\n\n## The real board messages ({len(records):,}, whole period)\n")
    print("\n".join(top_table(top)))
    print(f"\nRanked in {real_seconds:.1f} s.\n")

    many = grown(records, args.size)
    log(f"ranking {len(many):,} messages")
    started, cpu_started = time.perf_counter(), time.process_time()
    top_many = hot_issues(many, until=REAL_UNTIL, limit=10, locate=locate)
    many_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"## {len(many):,} messages (the real ones and perturbed copies)\n")
    print(
        f"Grouped, ranked and the top 10 described in **{many_seconds:.1f} s** "
        f"({cpu_seconds:.1f} s of CPU, one thread; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores).\n"
    )
    print("\n".join(top_table(top_many)))
    if args.database:
        with tempfile.TemporaryDirectory() as directory:
            database = f"{directory}/crm.db"
            upgrade_database(normalise_database_url(f"sqlite:///{database}"))
            log(f"inserting {len(many):,} cases")
            inserted = insert_cases(database, many)
            first = min(r.time for r in many).astimezone(CHINA_TZ).date()
            last = max(r.time for r in many).astimezone(CHINA_TZ).date()
            refresh, read, count = asyncio.run(time_job(database, first, last, locate))
        print(f"\n## The background job on {count:,} cases\n")
        print(f"- cases bulk-inserted in {inserted:.1f} s (set-up, not timed below)")
        print(f"- `refresh_snapshot` ({first} … {last}: read the cases, rank, store): **{refresh:.1f} s**")
        print(f"- `top_issues` (the dashboard's read of the cache, decisions applied): **{read * 1000:.0f} ms**")
    if args.sweep:
        print("\n## Parameters, scored on the marked issues of the real messages\n")
        print("\n".join(sweep(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
