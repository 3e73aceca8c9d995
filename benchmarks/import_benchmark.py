"""Benchmark of ``import-messages``: both real message-board files into a fresh SQLite database.

Run from the project root, after ``bin/setup`` (it needs the trained dispatch models)::

    .venv/bin/python -m benchmarks.import_benchmark [--profile]

Prints, per phase, wall-clock seconds: checking each file (`read_messages`), loading the
dispatch desk's models, then each file's import (understanding in batches + writing, one
transaction each), then a second import of the replies file (everything skipped), and the
load average. ``--profile`` also prints the 25 most expensive functions of the imports.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from crm_backend.data.history import HOT_ISSUES_FILE, WITH_REPLIES_FILE, history_file
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.importer import import_messages, read_messages
from crm_backend.settings import case_type_model_path_from_env, category_model_path_from_env, normalise_database_url


async def run(profile: bool) -> None:
    timings: list[tuple[str, float]] = []

    def timed(label: str, started: float) -> None:
        timings.append((label, time.perf_counter() - started))

    started = time.perf_counter()
    files = {name: read_messages(history_file(name)) for name in (HOT_ISSUES_FILE, WITH_REPLIES_FILE)}
    timed("check both files", started)
    started = time.perf_counter()
    desk = Dispatcher.load(category_model_path_from_env(), case_type_model_path=case_type_model_path_from_env())
    timed("load the dispatch models", started)

    with tempfile.TemporaryDirectory() as scratch:
        url = normalise_database_url(f"sqlite:///{Path(scratch) / 'crm.db'}")
        await upgrade_database_async(url)
        engine = create_engine(url)
        sessions = create_sessionmaker(engine)
        async with sessions.begin() as session:
            await seed_routing(session)
        profiler = cProfile.Profile() if profile else None
        total = time.perf_counter()
        for name, messages in [*files.items(), (WITH_REPLIES_FILE + " again", files[WITH_REPLIES_FILE])]:
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            async with sessions.begin() as session:
                summary = await import_messages(session, desk, messages, source_file=name)
            if profiler is not None:
                profiler.disable()
            timed(
                f"import {name}: {summary.rows} rows, {summary.new_cases} new, {summary.skipped} skipped, "
                f"{summary.replies} resolved",
                started,
            )
        timed("all imports", total)
        await engine.dispose()

    for label, seconds in timings:
        print(f"{seconds:8.1f} s  {label}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the imports")
    asyncio.run(run(parser.parse_args().profile))


if __name__ == "__main__":
    main()
