"""Where the engine's time goes in a turn: py-spy samples the engine while conversations run.

Run from the project root, after ``bin/setup``, with py-spy on the machine (``pip install
py-spy==0.4.0`` anywhere; ``--py-spy`` names the binary) and the right to trace a process::

    .venv/bin/python -m benchmarks.engine_profile [--senders 20] [--per-sender 8] [--rounds 3] \\
        > results/engine_profile.md

The engine and the app start as in ``benchmarks.run_benchmarks`` (SQLite tracker store on a
temporary directory). After a warm-up, py-spy records the engine process (every thread, idle
samples included, 100 samples a second) while ``--senders`` conversations at once send the
benchmark's messages through the app's REST channel, ``--rounds`` times. Each sample's stack is
put in the first of these groups it matches (its frames read from the root):

- **NLU**: ``rasa/nlu/`` (tokenizer, featurizers, DIET, entity extractors);
- **policies**: ``rasa/core/policies/`` (TED, rules, memoization) and ``rasa/core/featurizers``;
- **tracker store**: ``rasa/core/tracker_store.py`` (reading and saving the conversation);
- **lock store**: ``rasa/core/lock_store.py`` and ``rasa/core/lock.py``;
- **action call**: ``rasa/core/actions/action.py`` (building the request to the action
  endpoint, and the wait for it when the loop has nothing else to do);
- **other engine work**: the rest of ``rasa/`` (the processor, the graph runner, events);
- **HTTP and event loop**: stacks whose deepest Rasa frame is the server (``rasa/core/run.py``,
  ``rasa/server.py``, the channels): sanic, the event loop, reading and writing requests;
- **idle**: a thread waiting (its leaf frame is ``select``, ``poll``, ``wait`` or ``sleep``).

It prints the share of samples per group for the thread that runs the turns (the event loop's
thread, the one with the most non-idle samples), and the same for all threads. Progress goes
to stderr, the report to stdout, the figures to ``engine_profile.json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.run_benchmarks import (
    ENGINE_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT,
    busy_text,
    concurrent_run,
    log,
    log_tail,
    machine_info,
    sample_stats,
    start_stack,
    table,
    targets,
    warm_up,
)
from tests.support.stack import Stack

GROUPS = (
    ("NLU", ("rasa/nlu/",)),
    ("policies", ("rasa/core/policies/", "rasa/core/featurizers/")),
    ("tracker store", ("rasa/core/tracker_store.py",)),
    ("lock store", ("rasa/core/lock_store.py", "rasa/core/lock.py")),
    ("action call", ("rasa/core/actions/action.py",)),
)
HTTP = "HTTP and event loop"
HTTP_FRAMES = ("rasa/core/run.py", "rasa/server.py", "rasa/core/channels/")
ENGINE = "other engine work"
OTHER = "other"
IDLE = "idle"
IDLE_LEAVES = ("select (", "poll (", "wait (", "_worker (", "sleep (", "serve (sanic/")
TOP_FRAMES = 15


def group_of(frames: list[str], idle: bool) -> str:
    """The group of one sampled stack (frames from the root to the leaf)."""
    if idle:
        return IDLE
    for name, markers in GROUPS:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    rasa = [frame for frame in frames if "rasa/" in frame]
    if not rasa:
        return OTHER
    # Every stack starts in rasa/core/run.py: under it and nothing deeper of Rasa's is HTTP work.
    return HTTP if any(marker in rasa[-1] for marker in HTTP_FRAMES) else ENGINE


def read_samples(path: Path) -> dict[str, Counter[str]]:
    """py-spy's raw (collapsed) output: per thread, the count of samples per group.

    Each line is ``thread;frame;frame;… count`` (``--threads``; ``--idle`` keeps the samples of
    waiting threads). A stack whose leaf frame is a wait (``select``, ``poll``, ``wait``, ``sleep``,
    an idle pool worker, sanic's ``serve``) counts as idle, whatever called it.
    """
    per_thread: dict[str, Counter[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        leaf = frames[-1] if frames else ""
        # sanic's `serve` as the leaf is its event loop waiting in epoll (a C frame py-spy does not show).
        idle = any(wait in leaf for wait in IDLE_LEAVES)
        per_thread.setdefault(thread, Counter())[group_of(frames, idle)] += int(count)
    return per_thread


async def run_load(stack: Stack, args: argparse.Namespace, profile: Path) -> dict[str, Any]:
    busy = busy_text()
    app, engine = targets(stack)
    connector = aiohttp.TCPConnector(limit=2 * args.senders + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as http:
        log(f"warm-up: {args.warmup} messages per path...")
        await warm_up(http, (app, engine), args.warmup, busy)
        assert stack.engine_proc is not None
        log("py-spy recording the engine...")
        spy = subprocess.Popen(
            [
                args.py_spy,
                "record",
                "--pid",
                str(stack.engine_proc.pid),
                "--format",
                "raw",
                "--threads",
                "--idle",
                "--rate",
                "100",
                "--output",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        samples = []
        started = time.perf_counter()
        for round_no in range(args.rounds):
            log(f"round {round_no + 1}/{args.rounds}: {args.senders} senders x {args.per_sender} messages")
            run, _ = await concurrent_run(http, app, args.senders, args.per_sender, busy, round_no)
            samples += run
        wall = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not profile.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    return {**sample_stats(samples), "messages": len(samples), "throughput_msg_s": round(len(samples) / wall, 1)}


def deepest_rasa_frames(path: Path) -> list[tuple[str, int]]:
    """The busy samples counted by the deepest ``rasa/`` frame of their stack: which of Rasa's own
    functions the time is spent under (TensorFlow, SQLAlchemy and jsonschema below them included)."""
    counts: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]
        if not count.isdigit() or not frames or any(wait in frames[-1] for wait in IDLE_LEAVES):
            continue
        rasa = [frame for frame in frames if "rasa/" in frame]
        if rasa:
            name, _, where = rasa[-1].partition(" (")
            counts[f"{name} ({where.split('site-packages/')[-1]}"] += int(count)
    return counts.most_common(TOP_FRAMES)


def shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values()) or 1
    order = [name for name, _ in GROUPS] + [ENGINE, HTTP, OTHER, IDLE]
    return {name: round(100 * counts.get(name, 0) / total, 1) for name in order}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="engine-profile-"))
    stack = Stack(workdir=workdir, engine_timeout_seconds=ENGINE_TIMEOUT_SECONDS)
    results: dict[str, Any] = {"machine": machine_info(), "config": vars(args) | {"py_spy": str(args.py_spy)}}
    try:
        results["startup"] = start_stack(stack)
        profile = workdir / "engine.collapsed"
        results["latency"] = asyncio.run(run_load(stack, args, profile))
        per_thread = read_samples(profile)
        busiest = max(per_thread, key=lambda t: sum(v for k, v in per_thread[t].items() if k != IDLE))
        everything: Counter[str] = Counter()
        for counts in per_thread.values():
            everything.update(counts)
        results["turn_thread"] = {"thread": busiest, "samples": sum(per_thread[busiest].values())}
        results["turn_thread_shares"] = shares(per_thread[busiest])
        results["all_threads_shares"] = shares(everything)
        results["threads"] = len(per_thread)
        results["deepest_rasa_frames"] = deepest_rasa_frames(profile)
        shutil.copy(profile, args.out_dir / "engine_profile.collapsed")
    except Exception:
        for name in ("engine.log", "app.log"):
            print(f"--- tail of {name} ---\n{log_tail(workdir / name)}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    return results


def render(results: dict[str, Any]) -> str:
    latency = results["latency"]
    turn = results["turn_thread_shares"]
    every = results["all_threads_shares"]
    lines = [
        "# Where the engine's time goes",
        "",
        f"{results['config']['senders']} concurrent conversations through the app, "
        f"{latency['messages']} messages: p50 {latency.get('p50_ms')} ms, p95 {latency.get('p95_ms')} ms, "
        f"{latency['throughput_msg_s']} msg/s. Machine: {results['machine']}.",
        "",
        f"py-spy samples of the engine ({results['threads']} threads); the turn thread is "
        f"`{results['turn_thread']['thread']}` ({results['turn_thread']['samples']} samples).",
        "",
        table(
            ["group", "turn thread %", "all threads %"],
            [[name, share, every[name]] for name, share in turn.items()],
        ),
        "",
        f"Busy samples by the deepest Rasa function on their stack (top {TOP_FRAMES}):",
        "",
        table(["function", "samples"], [[name, count] for name, count in results["deepest_rasa_frames"]]),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--per-sender", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = measure(args)
    (args.out_dir / "engine_profile.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=2, default=str), encoding="utf-8"
    )
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
