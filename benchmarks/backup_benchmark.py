"""Benchmark of ``python -m crm_backend backup`` and ``restore`` on the embedded default (SQLite).

Run from the project root::

    .venv/bin/python -m benchmarks.backup_benchmark [--cases 100000] [--events 200000] \\
        [--postgres] [--out results/backup_benchmark.json] > results/backup_benchmark.md

In a temporary directory it migrates a CRM database, bulk-inserts ``--cases`` cases with
20,000 citizens (the console benchmark's generator, `benchmarks.console_benchmark.insert_cases`,
seeded) and a tracker store of ``--events`` engine events (Rasa's ``events`` table shape, about
300 bytes of JSON each), then times the two commands as an operator runs them (a fresh
process each, wall-clock): the backup, and the restore into empty files, and reports the
sizes of the databases and of the encrypted file. Nothing else runs meanwhile.

With ``--postgres`` the same rows are then copied into a throwaway PostgreSQL server
(`tests/support/postgres.py`; CRM and tracker store in two databases) and the two commands
timed there too, restoring into two empty databases of the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.console_benchmark import insert_cases
from benchmarks.run_benchmarks import log, machine_info, table, write_report
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database
from crm_backend.dispatch.routing import seed_routing
from crm_backend.models import Base
from crm_backend.settings import normalise_database_url
from tests.support.backups import tracker_metadata
from tests.support.postgres import PostgresServer
from tests.support.stack import APP_PYTHON, ROOT

KEY_HEX = bytes(range(32)).hex()  # a benchmark key: the file is deleted afterwards
COPY_BATCH = 5_000


async def _seed(url: str) -> None:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await seed_routing(session)
    finally:
        await engine.dispose()


def make_tracker(path: Path, count: int) -> None:
    """Rasa's events table with `count` user and bot events of 200 conversations' worth of text."""
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, sender_id VARCHAR(255) NOT NULL,"
            " type_name VARCHAR(255) NOT NULL, timestamp FLOAT, intent_name VARCHAR(255),"
            " action_name VARCHAR(255), data TEXT)"
        )
        connection.execute("CREATE INDEX ix_events_sender_id ON events (sender_id)")
        rows = []
        for n in range(count):
            user = n % 2 == 0
            data = {
                "event": "user" if user else "bot",
                "timestamp": 1764900000.0 + n,
                "text": f"第{n}条：小区门口的路灯坏了好几天，晚上很黑" if user else "您好，请问问题发生在哪个位置？",
                "parse_data": {"intent": {"name": "report_issue", "confidence": 0.97}} if user else {},
            }
            rows.append(
                (
                    f"web:{n // 20:08d}",
                    "user" if user else "bot",
                    1764900000.0 + n,
                    "report_issue" if user else None,
                    None,
                    json.dumps(data, ensure_ascii=False),
                )
            )
        connection.executemany(
            "INSERT INTO events (sender_id, type_name, timestamp, intent_name, action_name, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    connection.close()


async def copy_rows(source: Path, target_url: str, metadata: sa.MetaData) -> None:
    """Every row of `metadata`'s tables from a SQLite file into a PostgreSQL database (emptied first)."""
    reader = sa.create_engine(f"sqlite:///{source}")
    writer = create_engine(target_url)
    try:
        tables = [table for table in metadata.sorted_tables if table.name != "alembic_version"]
        async with writer.begin() as conn:
            await conn.execute(sa.text("TRUNCATE " + ", ".join(table.name for table in tables) + " CASCADE"))
        for table in tables:
            with reader.connect() as source_conn:
                rows = [dict(row._mapping) for row in source_conn.execute(sa.select(table))]
            for start in range(0, len(rows), COPY_BATCH):
                async with writer.begin() as conn:
                    await conn.execute(sa.insert(table), rows[start : start + COPY_BATCH])
    finally:
        reader.dispose()
        await writer.dispose()


async def tracker_on_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(tracker_metadata.create_all)
    finally:
        await engine.dispose()


def postgres_figures(crm: Path, tracker: Path, work: Path) -> dict[str, Any]:
    server = PostgresServer()
    server.start()
    try:
        crm_url, tracker_url = server.create_database("crm"), server.create_database("tracker")
        log("copying the rows into PostgreSQL")
        upgrade_database(normalise_database_url(crm_url))
        asyncio.run(copy_rows(crm, normalise_database_url(crm_url), Base.metadata))
        asyncio.run(tracker_on_postgres(normalise_database_url(tracker_url)))
        asyncio.run(copy_rows(tracker, normalise_database_url(tracker_url), tracker_metadata))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BACKUP_KEY": KEY_HEX,
            "DATABASE_URL": crm_url,
            "TRACKER_STORE_URL": tracker_url,
        }
        out = work / "pg.backup"
        log("backup (PostgreSQL)")
        backup_seconds = timed("backup", "--out", str(out), env=env)
        restored = {
            **env,
            "DATABASE_URL": server.create_database("crm_restored"),
            "TRACKER_STORE_URL": server.create_database("tracker_restored"),
        }
        log("restore into empty databases (PostgreSQL)")
        restore_seconds = timed("restore", str(out), env=restored)
        return {
            "backup_seconds": backup_seconds,
            "restore_seconds": restore_seconds,
            "backup_file_bytes": out.stat().st_size,
        }
    finally:
        server.stop()


def timed(*args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr}")
    log(result.stdout.strip())
    return round(seconds, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info(), "cases": args.cases, "events": args.events}
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as workdir:
        work = Path(workdir)
        crm, tracker = work / "crm.db", work / "tracker.db"
        log("migrating and seeding the CRM database")
        url = normalise_database_url(f"sqlite:///{crm}")
        upgrade_database(url)
        asyncio.run(_seed(url))
        log(f"inserting {args.cases} cases")
        insert_cases(crm, args.cases, random.Random(12345))
        log(f"writing {args.events} tracker events")
        make_tracker(tracker, args.events)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BACKUP_KEY": KEY_HEX,
            "DATABASE_URL": f"sqlite:///{crm}",
            "TRACKER_STORE_URL": f"sqlite:///{tracker}",
        }
        out = work / "crm.backup"
        log("backup")
        results["backup_seconds"] = timed("backup", "--out", str(out), env=env)
        restored = {
            **env,
            "DATABASE_URL": f"sqlite:///{work / 'restored' / 'crm.db'}",
            "TRACKER_STORE_URL": f"sqlite:///{work / 'restored' / 'tracker.db'}",
        }
        log("restore into empty files")
        results["restore_seconds"] = timed("restore", str(out), env=restored)
        results["crm_db_bytes"] = crm.stat().st_size
        results["tracker_db_bytes"] = tracker.stat().st_size
        results["backup_file_bytes"] = out.stat().st_size
        if args.postgres:
            results["postgres"] = postgres_figures(crm, tracker, work)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    return results


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [
        ["backup (CRM + tracker store)", f"{results['backup_seconds']} s"],
        ["restore into empty files", f"{results['restore_seconds']} s"],
        ["CRM database", mb(results["crm_db_bytes"])],
        ["tracker store", mb(results["tracker_db_bytes"])],
        ["encrypted backup file", mb(results["backup_file_bytes"])],
    ]
    return (
        f"## Backup and restore, SQLite: {results['cases']:,} cases, {results['events']:,} engine events\n\n"
        f"{m['nproc']} cores ({m['cpu_model']}), load {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])} "
        f"at start; {m['date']}.\n\n" + table(["", ""], rows) + "\n" + render_postgres(results)
    )


def render_postgres(results: dict[str, Any]) -> str:
    if "postgres" not in results:
        return ""
    pg = results["postgres"]
    rows = [
        ["backup (pg_dump of both databases)", f"{pg['backup_seconds']} s"],
        ["restore into empty databases (pg_restore)", f"{pg['restore_seconds']} s"],
        ["encrypted backup file", mb(pg["backup_file_bytes"])],
    ]
    return "\n### The same rows on PostgreSQL\n\n" + table(["", ""], rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    parser.add_argument("--out", type=Path, default=Path("results/backup_benchmark.json"))
    args = parser.parse_args(argv)
    write_report(run(args), args.out, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
