"""Operator commands: ``python -m crm_backend {migrate,stats}``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from crm_backend.db import create_engine, create_sessionmaker, upgrade_database
from crm_backend.lifecycle import STATUS_LABELS, CaseStatus
from crm_backend.services.stats import collect_stats
from crm_backend.settings import database_url_from_env


async def _stats(database_url: str) -> dict[str, object]:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await collect_stats(session)
    finally:
        await engine.dispose()


def _print_stats(stats: dict[str, object]) -> None:
    print(f"citizens       {stats['citizens']}")
    print(f"conversations  {stats['conversations']}")
    print(f"messages       {stats['messages']}")
    print(f"cases          {stats['cases']}")
    by_status = stats["cases_by_status"]
    assert isinstance(by_status, dict)
    for code, n in by_status.items():
        print(f"  {STATUS_LABELS[CaseStatus(code)]} ({code})  {n}")


def main(argv: list[str] | None = None) -> int:
    """Run one operator command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m crm_backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations")
    stats = commands.add_parser("stats", help="count citizens, conversations, messages and cases")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    database_url = database_url_from_env()
    if args.command == "migrate":
        upgrade_database(database_url)
        return 0
    upgrade_database(database_url)
    result = asyncio.run(_stats(database_url))
    if args.json:
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_stats(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
