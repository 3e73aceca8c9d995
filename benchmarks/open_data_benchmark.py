"""Benchmark of the open dataset at 100,000 cases: one month's files, a whole year's, and the command.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.open_data_benchmark [--cases 100000] > results/open_data_benchmark.md

A temporary SQLite database is built by the real migrations, and ``--cases`` cases (default
100,000) filed over the Beijing-time year 2025 are bulk-inserted with their status events as
the life cycle writes them (受理, 派单, some 改派, 签收, 办理, 办结, 回访, 归档, cut at
2026-01-20), a staff reply on half of them, due dates, and the categories, districts and
channels of ``benchmarks.console_benchmark`` (the personal columns encrypted, as the app
writes them). Then, each in a fresh process so its peak memory is its own:

1. ``write_dataset`` for November 2025 (about a twelfth of the cases);
2. ``write_dataset`` for the whole year 2025 in one file (every case);
3. the operator's command ``python -m crm_backend open-data --month 2025-11`` (start-up,
   schema check, export and audit: what a monthly timer runs).

Each reports wall and CPU time, rows, file sizes, the process's resident memory before the
export (after imports) and its own peak (``VmHWM``; ``ru_maxrss`` would report the
seeding parent's memory, which a forked child inherits). Progress goes to stderr, the Markdown
report to stdout, every figure to ``open_data_benchmark.json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.console_benchmark import CATEGORIES, DISTRICTS
from benchmarks.run_benchmarks import log, machine_info, table, write_report
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.models import CaseEvent, ChannelIdentity, Citizen, ServiceCase
from tests.support.stack import TEST_SECRETS

YEAR = 2025
MONTH = "2025-11"
CUT = dt.datetime(2026, 1, 20, 12, 0, tzinfo=CHINA_TZ)  # "now" for the seeded timelines
CITIZENS = 20_000
BATCH = 5_000
CHANNEL_WEIGHTS = {"web": 6, "telegram": 3, "rest": 1}
PYTHON = sys.executable


def weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def timeline(rng: random.Random, created: dt.datetime) -> list[tuple[str | None, str, str, dt.datetime]]:
    """A case's events (from, to, kind, time) as the life cycle writes them, cut at `CUT`."""
    moments: list[tuple[str | None, str, str, dt.datetime]] = [(None, "received", "status", created)]
    moment = created + dt.timedelta(hours=rng.uniform(0.2, 30))
    moments.append(("received", "dispatched", "status", moment))
    if rng.random() < 0.05:  # 改派
        moment += dt.timedelta(hours=rng.uniform(1, 24))
        moments.append(("dispatched", "dispatched", "status", moment))
    moment += dt.timedelta(hours=rng.uniform(0.5, 48))
    moments.append(("dispatched", "accepted", "status", moment))
    moment += dt.timedelta(hours=rng.uniform(0.5, 8))
    moments.append(("accepted", "in_progress", "status", moment))
    if rng.random() < 0.5:
        moments.append(("in_progress", "in_progress", "reply", moment + dt.timedelta(hours=rng.uniform(1, 48))))
    moment += dt.timedelta(days=rng.uniform(0.5, 14))
    moments.append(("in_progress", "resolved", "status", moment))
    moment += dt.timedelta(days=rng.uniform(0.2, 3))
    moments.append(("resolved", "reviewed", "status", moment))
    moment += dt.timedelta(days=rng.uniform(0.5, 2))
    moments.append(("reviewed", "archived", "status", moment))
    return sorted((event for event in moments if event[3] <= CUT), key=lambda event: event[3])


def seed(database: Path, count: int, rng: random.Random) -> dict[str, Any]:
    """The schema by the real migrations, then `count` cases of `YEAR` with their events."""
    from crm_backend.db import upgrade_database_async
    from crm_backend.settings import normalise_database_url

    started = time.perf_counter()
    asyncio.run(upgrade_database_async(normalise_database_url(f"sqlite:///{database}")))
    engine = sa.create_engine(f"sqlite:///{database}")
    now = CUT.astimezone(dt.UTC)
    citizens = [{"id": i + 1, "phone": f"13{rng.randrange(10**9):09d}", "created_at": now} for i in range(CITIZENS)]
    identities = [
        {"id": i + 1, "channel": weighted(rng, CHANNEL_WEIGHTS), "external_id": f"bench-{i}", "citizen_id": i + 1}
        for i in range(CITIZENS)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(Citizen), citizens)
        conn.execute(sa.insert(ChannelIdentity), [identity | {"created_at": now} for identity in identities])
    start = dt.datetime(YEAR, 1, 1, tzinfo=CHINA_TZ)
    seconds = (dt.datetime(YEAR + 1, 1, 1, tzinfo=CHINA_TZ) - start).total_seconds()
    created_times = sorted(start + dt.timedelta(seconds=rng.uniform(0, seconds)) for _ in range(count))
    per_day: dict[str, int] = {}
    events = 0
    cases: list[dict[str, Any]] = []
    story_rows: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for case_id, created in enumerate(created_times, start=1):
            owner = rng.randrange(CITIZENS)
            story = timeline(rng, created)
            if rng.random() < 0.03:  # still waiting in the dispatch queue
                story = story[:1]
            statuses = [event for event in story if event[2] == "status"]
            day = created.astimezone(CHINA_TZ).strftime("%Y%m%d")
            per_day[day] = per_day.get(day, 0) + 1
            district = weighted(rng, DISTRICTS)
            cases.append(
                {
                    "id": case_id,
                    "case_number": f"{day}-{per_day[day]:04d}",
                    "citizen_id": owner + 1,
                    "identity_id": owner + 1,
                    "description": f"{district}某路段问题，希望尽快处理。",
                    "location": f"{district}某路{rng.randrange(1, 300)}号",
                    "district": district,
                    "contact_phone": citizens[owner]["phone"],
                    "category": weighted(rng, {name: weight for name, (weight, _) in CATEGORIES.items()}),
                    "case_type": weighted(rng, {"投诉": 40, "求助": 25, "咨询": 20, "建议": 10, "举报": 4, "表扬": 1}),
                    "status": statuses[-1][1],
                    "urgent": False,
                    "due_at": created + dt.timedelta(days=rng.uniform(5, 20)) if len(statuses) > 1 else None,
                    "supervised": False,
                    "created_at": created,
                    "updated_at": story[-1][3],
                }
            )
            story_rows.extend(
                {
                    "case_id": case_id,
                    "from_status": source,
                    "to_status": target,
                    "kind": kind,
                    "note": "",
                    "actor": "bench",
                    "created_at": moment,
                }
                for source, target, kind, moment in story
            )
            if len(cases) >= BATCH:
                conn.execute(sa.insert(ServiceCase), cases)
                conn.execute(sa.insert(CaseEvent), story_rows)
                events += len(story_rows)
                cases, story_rows = [], []
        if cases:
            conn.execute(sa.insert(ServiceCase), cases)
            conn.execute(sa.insert(CaseEvent), story_rows)
            events += len(story_rows)
    engine.dispose()
    return {"seconds": round(time.perf_counter() - started, 1), "cases": count, "events": events}


# --- one measurement, in its own process ------------------------------------------------------


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc (``VmRSS`` now, ``VmHWM`` its peak), in MB.

    ``VmHWM`` belongs to the process's own address space, so unlike ``ru_maxrss`` (which a
    child inherits from the parent that forked it) it is the child's own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def rss_mb() -> float:
    return status_mb("VmRSS")


def measure_here(database: Path, period_text: str, out: Path) -> dict[str, Any]:
    """Write one period's files in this process; the figures as a dict (run by `--measure`)."""
    from crm_backend.db import create_engine, create_sessionmaker
    from crm_backend.services import open_data
    from crm_backend.settings import normalise_database_url

    period = open_data.Period.month(period_text) if "-" in period_text else open_data.Period.year(int(period_text))
    before = rss_mb()
    engine = create_engine(normalise_database_url(f"sqlite:///{database}"))
    wall, cpu = time.perf_counter(), time.process_time()
    written = asyncio.run(
        open_data.write_dataset(create_sessionmaker(engine), period, out, exported_by="bench", now=CUT)
    )
    return {
        "period": period.label,
        "seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "rows": written.rows,
        "generalised": written.generalised,
        "bytes": {path.suffix[1:]: path.stat().st_size for path in written.paths},
        "rss_before_mb": before,
        "peak_rss_mb": status_mb("VmHWM"),
    }


# Runs the operator's command and, at its exit, writes its peak RSS (VmHWM) to the file named by argv[1].
CLI_WITH_PEAK = (
    "import atexit, runpy, sys; peak_file = sys.argv.pop(1); "
    "hwm = lambda: next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')); "
    "atexit.register(lambda: open(peak_file, 'w').write(str(round(int(hwm()) / 1024, 1)))); "
    "sys.argv[0] = 'crm_backend'; runpy.run_module('crm_backend', run_name='__main__')"
)  # nothing imported but the command's own modules, so the peak is the command's


def in_child(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, float]]:
    """Run a child to its end; its output, wall time and its own CPU time (wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = child.stdout.read() if child.stdout else "", child.stderr.read() if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    done = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    return done, {
        "process_seconds": round(wall, 2),
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = dict(os.environ)
    for name in ("DATA_KEYS", "DATA_KEY_CURRENT", "DATA_HMAC_KEY"):
        env.setdefault(name, TEST_SECRETS[name])
        os.environ.setdefault(name, TEST_SECRETS[name])
    results: dict[str, Any] = {"machine": machine_info(), "uptime_at_start": uptime()}
    database = workdir / "crm.db"
    log(f"seeding {args.cases} cases of {YEAR}")
    results["seed"] = seed(database, args.cases, random.Random(args.seed))
    log(f"  {results['seed']}")
    runs: list[dict[str, Any]] = []
    for period in (MONTH, str(YEAR)):
        log(f"write_dataset {period}")
        done, usage = in_child(
            [PYTHON, "-m", "benchmarks.open_data_benchmark", "--measure", period, "--database", str(database),
             "--out-dir", str(workdir / "out")],
            env,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        runs.append({"what": f"write_dataset {period}"} | json.loads(done.stdout) | usage)
        log(f"  {runs[-1]}")
    log(f"python -m crm_backend open-data --month {MONTH}")
    peak_file = workdir / "cli-peak"
    done, usage = in_child(
        [PYTHON, "-c", CLI_WITH_PEAK, str(peak_file), "open-data", "--month", MONTH, "--out", str(workdir / "cli")],
        env | {"DATABASE_URL": f"sqlite:///{database}"},
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    usage["peak_rss_mb"] = float(peak_file.read_text())
    runs.append({"what": f"open-data --month {MONTH} (command)", "stdout": done.stdout.strip()} | usage)
    log(f"  {runs[-1]}")
    results["runs"] = runs
    results["uptime_at_end"] = uptime()
    return results


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def render(results: dict[str, Any]) -> str:
    machine, seed_info = results["machine"], results["seed"]
    rows = [
        [
            run["what"],
            f"{run.get('rows', '–'):,}" if "rows" in run else "–",
            f"{run['seconds']:.2f} s" if "seconds" in run else "–",
            f"{run['cpu_seconds']:.2f} s" if "cpu_seconds" in run else "–",
            f"{run['process_seconds']:.2f} s",
            f"{run['process_cpu_seconds']:.2f} s",
            f"{run['rss_before_mb']} MB" if "rss_before_mb" in run else "–",
            f"{run['peak_rss_mb']} MB",
            " / ".join(f"{kind} {size / 1e6:.1f} MB" for kind, size in run.get("bytes", {}).items()) or "–",
        ]
        for run in results["runs"]
    ]
    return "\n".join(
        [
            "# Open data benchmark",
            "",
            f"{machine['date']}, {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_total_gb']} GB; "
            f"SQLite; {seed_info['cases']:,} cases of {YEAR}, {seed_info['events']:,} events "
            f"(seeded in {seed_info['seconds']} s).",
            "",
            f"- `uptime` at start: {results['uptime_at_start']}",
            f"- `uptime` at end: {results['uptime_at_end']}",
            "",
            table(
                [
                    "what",
                    "rows",
                    "export wall",
                    "export CPU",
                    "process wall",
                    "process CPU",
                    "RSS before export",
                    "peak RSS",
                    "files",
                ],
                rows,
            ),
            "",
            *(f"Command output: `{run['stdout']}`" for run in results["runs"] if "stdout" in run),
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one period, in a child process
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure_here(args.database, args.measure, args.out_dir)))
        return 0
    with tempfile.TemporaryDirectory(prefix="open-data-bench-") as tmp:
        results = measure(args, Path(tmp))
    write_report(results, args.out_dir / "open_data_benchmark.json", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
