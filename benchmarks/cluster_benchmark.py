"""Cluster benchmark: per-message latency and throughput of the embedded default and the cluster.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.cluster_benchmark [--shapes embedded,cluster1,cluster2] \
        [--concurrency 1,20,50] [--messages 20] [--out results/cluster_benchmark.json] \
        > results/cluster_benchmark.md

    .venv/bin/python -m benchmarks.cluster_benchmark --quick   # a small run while developing

It prints a Markdown report on stdout, progress on stderr, and every figure as JSON. Each shape
is started on free loopback ports in a temporary directory with the test stack's fixed secrets
and stopped afterwards; ``var/`` and ``models/`` are never touched:

- ``embedded``: what ``bin/run`` starts — one app on SQLite beside one engine
  (``tests/support/stack.py``), citizens straight to the app;
- ``cluster1`` / ``cluster2``: what ``bin/cluster`` starts — PostgreSQL (cases and the
  engines' tracker store), Redis, 1 or 2 engines, apps (``--apps``; by default as many as
  engines) and nginx in front, citizens through nginx (``tests/support/cluster.py``, which
  fills nginx's configuration from the same template as ``bin/cluster``).

What each figure means:

1. **Latency and throughput**: at each concurrency C, C conversations at once, each sending
   ``--messages`` citizen messages through the REST channel (``/webhooks/rest/webhook``), each
   message waiting for the previous reply, with the conversation script of
   ``benchmarks.run_benchmarks`` (greetings, FAQ, chitchat, out of scope, long complaints that
   open the report form and are cancelled): every message goes through the app's pipeline to
   the engine's NLU and policies. A level runs in as many rounds of fresh conversations as it
   takes to have ``--min-samples`` messages. Latency is per message, at the client, over the
   messages answered; throughput is answered messages per second of wall time; "per engine"
   divides it by the engines. Warm-up conversations (one per engine) are not counted. The
   per-sender message limit is off (``MESSAGES_PER_SENDER=0``): one benchmark conversation
   sends faster than a person types. The app's engine timeout is 30 s, so a slow engine shows
   as latency; a "system busy" reply or a failed request counts as unanswered.
2. **Memory**: after the runs, the resident set (VmRSS) of every process of the shape — the
   main process, and summed over it and its children, with the children's proportional set
   size (PSS, shared pages split, so not double-counted). PostgreSQL and nginx are a master
   and its workers/backends; an app or an engine is one process (plus helpers).
3. **Failover** (shapes with 2 engines or more): ``--failover-conversations`` conversations
   whose sender hashes to engine 0 (``bot.engine_pool.HashRing``, as the apps route) each
   send two messages, then keep chatting; after 2 s of that, engine 0 gets SIGKILL. From the
   kill: the time to the first answer of a message sent after the kill, the time until every
   one of those conversations has had one, and what became of the messages in flight at the
   moment of the kill. The other engine answers through the shared tracker store; a
   conversation with a message in flight in the killed engine may still wait for that
   message's lock ticket in Redis (Rasa's ``TICKET_LOCK_LIFETIME``).

The shapes run one after another on the same machine; the load average before and after each
is in the report, as other work on the machine shows in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.run_benchmarks import (
    REQUEST_TIMEOUT,
    TURNS,
    Sample,
    Target,
    busy_text,
    concurrent_run,
    conversation,
    converse,
    log,
    machine_info,
    model_missing,
    pss_mb,
    rss_mb,
    sample_stats,
    send,
    table,
    write_report,
)
from bot.engine_pool import HashRing
from tests.support.cluster import Cluster
from tests.support.stack import MODEL, ROOT, TEST_SECRETS, Stack

SHAPES = ("embedded", "cluster1", "cluster2")
ENGINE_TIMEOUT_SECONDS = 30.0
# A benchmark conversation sends faster than a citizen types: the per-sender limit would answer
# some messages itself instead of asking the engine.
BENCH_ENV = {"MESSAGES_PER_SENDER": "0"}
KILL_AFTER_SECONDS = 2.0
FAILOVER_ANSWERS = 2  # answered messages per conversation after the kill before it stops
FAILOVER_TIMEOUT_SECONDS = 150.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- figures (pure, unit-tested) ------------------------------------------------------------


def level_stats(samples: list[Sample], wall_seconds: float, engines: int) -> dict[str, Any]:
    """Latency of the answered messages, and answered messages per second (overall and per engine).

    Failed requests and "system busy" replies are counted, not timed, and not throughput.
    """
    answered = sum(s.ok and not s.busy for s in samples)
    throughput = answered / wall_seconds if wall_seconds > 0 else 0.0
    return {
        **sample_stats(samples),
        "messages": len(samples),
        "answered": answered,
        "wall_seconds": round(wall_seconds, 2),
        "throughput_msg_s": round(throughput, 1),
        "per_engine_msg_s": round(throughput / engines, 1),
    }


def rounds_for(concurrency: int, per_conversation: int, min_samples: int) -> int:
    """Rounds of `concurrency` conversations needed for at least `min_samples` messages (at least one)."""
    return max(1, math.ceil(min_samples / (concurrency * per_conversation)))


@dataclass(frozen=True)
class Attempt:
    """One message of a failover conversation: when it was sent and answered, on the client's clock."""

    sender: str
    started: float
    ended: float
    answered: bool


def failover_summary(attempts: list[Attempt], senders: list[str], kill_at: float, dead_at: float) -> dict[str, Any]:
    """What the kill of an engine cost its conversations, from the moment of the SIGKILL.

    Args:
        attempts: every message the conversations sent around the kill.
        senders: the conversations at home on the killed engine.
        kill_at: when the SIGKILL was sent; dead_at: when the process was reaped. Only messages
            sent after `dead_at` count as answered by the other engine.
    """
    first: dict[str, float] = {}
    for attempt in attempts:
        if attempt.answered and attempt.started >= dead_at:
            first[attempt.sender] = min(first.get(attempt.sender, math.inf), attempt.ended - kill_at)
    in_flight = [a for a in attempts if a.started < kill_at < a.ended]
    after = [a for a in attempts if a.started >= dead_at]
    return {
        "conversations": len(senders),
        "first_answer_s": round(min(first.values()), 2) if first else None,
        "all_answered_s": round(max(first.values()), 2) if len(first) == len(senders) else None,
        "unanswered_conversations": len(senders) - len(first),
        "in_flight_at_kill": len(in_flight),
        "in_flight_answered": sum(a.answered for a in in_flight),
        "sent_after_kill": len(after),
        "unanswered_after_kill": sum(not a.answered for a in after),
    }


def homed_senders(engine_urls: list[str], engine_url: str, prefix: str, count: int) -> list[str]:
    """`count` REST sender names at home on `engine_url` (the engine knows them as ``rest:<sender>``)."""
    ring = HashRing(engine_urls)
    senders: list[str] = []
    index = 0
    while len(senders) < count:
        name = f"{prefix}-{index}"
        if ring.home(f"rest:{name}") == engine_url:
            senders.append(name)
        index += 1
    return senders


# --- processes ------------------------------------------------------------------------------


def children_of() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants."""
    children = children_of()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants, the dead ones they waited for included."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def cpu_per_message(before: dict[str, float], after: dict[str, float], answered: int) -> dict[str, float]:
    """CPU milliseconds per answered message, by kind of process (``app-0`` and ``app-1`` are ``app``)."""
    used: dict[str, float] = {}
    for name, seconds in after.items():
        kind = name.split("-")[0]
        used[kind] = used.get(kind, 0.0) + seconds - before.get(name, 0.0)
    return {kind: round(1000 * seconds / answered, 1) if answered else 0.0 for kind, seconds in used.items()}


def tree_memory(pid: int) -> dict[str, float | int]:
    """RSS of a process, and RSS and PSS summed over it and its descendants (MB)."""
    tree = process_tree(pid)
    return {
        "main_rss_mb": rss_mb(pid),
        "tree_rss_mb": round(sum(rss_mb(p) for p in tree), 1),
        "tree_pss_mb": round(sum(pss_mb(p) for p in tree), 1),
        "processes": len(tree),
    }


# --- the shapes -----------------------------------------------------------------------------


@dataclass
class Shape:
    """A running shape: where citizens send their messages, its engines, and its processes."""

    name: str
    target: Target
    engine_urls: list[str]
    processes: dict[str, int]  # process name -> main pid
    cluster: Cluster | None = None


@contextmanager
def embedded(workdir: Path, env: dict[str, str]) -> Iterator[Shape]:
    """`bin/run`'s shape: one engine, one app on SQLite."""
    stack = Stack(workdir=workdir, engine_timeout_seconds=ENGINE_TIMEOUT_SECONDS, app_env=dict(env))
    try:
        stack.start()
        assert stack.app_proc is not None and stack.engine_proc is not None
        url = f"{stack.app_url}/webhooks/rest/webhook"
        target = Target("embedded", url, stack.secrets["REST_CHANNEL_TOKEN"], False, "bench-embedded")
        processes = {"app": stack.app_proc.pid, "engine": stack.engine_proc.pid}
        yield Shape("embedded", target, [stack.engine_url], processes)
    except BaseException:
        for name in ("engine.log", "app.log"):
            log_file = workdir / name
            if log_file.exists():
                print(f"--- tail of {name} ---\n" + "\n".join(log_file.read_text().splitlines()[-30:]), file=sys.stderr)
        raise
    finally:
        stack.stop()


@contextmanager
def clustered(workdir: Path, name: str, engines: int, apps: int, env: dict[str, str]) -> Iterator[Shape]:
    """`bin/cluster`'s shape: PostgreSQL, Redis, `engines` engines, `apps` apps, nginx."""
    cluster = Cluster(workdir, apps=apps, engines=engines, app_env=dict(env))
    try:
        cluster.start()
        target = Target(
            name, f"{cluster.url}/webhooks/rest/webhook", TEST_SECRETS["REST_CHANNEL_TOKEN"], False, f"bench-{name}"
        )
        processes: dict[str, int] = {}
        for index, app in enumerate(cluster.apps):
            assert app.app_proc is not None
            processes[f"app-{index}"] = app.app_proc.pid
        for index, engine in enumerate(cluster.engines):
            assert engine.engine_proc is not None
            processes[f"engine-{index}"] = engine.engine_proc.pid
        postmaster = cluster.postgres.workdir / "data" / "postmaster.pid"
        processes["postgres"] = int(postmaster.read_text().split()[0])
        # RedisServer keeps its process to itself; its pid is only read here, for /proc.
        assert cluster.redis._process is not None and cluster.nginx is not None
        processes["redis"] = cluster.redis._process.pid
        processes["nginx"] = cluster.nginx.pid
        engine_urls = [engine.engine_url for engine in cluster.engines]
        yield Shape(name, target, engine_urls, processes, cluster)
    except BaseException:
        print(cluster.tails(30), file=sys.stderr)
        raise
    finally:
        cluster.stop()


# --- the runs -------------------------------------------------------------------------------


async def warm_up(http: aiohttp.ClientSession, shape: Shape, messages: int, busy: str) -> None:
    """One conversation per engine (each at home there), `messages` long, at once; not counted."""
    senders = [homed_senders(shape.engine_urls, url, f"bench-{shape.name}-warmup", 1)[0] for url in shape.engine_urls]
    await asyncio.gather(*(converse(http, shape.target, s, conversation(99, messages), busy) for s in senders))


async def run_levels(
    http: aiohttp.ClientSession, shape: Shape, args: argparse.Namespace, busy: str
) -> list[dict[str, Any]]:
    levels = []
    for concurrency in args.concurrency:
        rounds = rounds_for(concurrency, args.messages, args.min_samples)
        log(f"{shape.name}: {concurrency} conversations x {args.messages} messages, {rounds} round(s)...")
        target = dataclasses.replace(shape.target, sender_prefix=f"{shape.target.sender_prefix}-c{concurrency}")
        samples: list[Sample] = []
        wall = 0.0
        cpu_before = {name: cpu_seconds(pid) for name, pid in shape.processes.items()}
        for round_no in range(rounds):
            run_samples, seconds = await concurrent_run(http, target, concurrency, args.messages, busy, round_no)
            samples += run_samples
            wall += seconds
        stats = level_stats(samples, wall, len(shape.engine_urls))
        cpu_after = {name: cpu_seconds(pid) for name, pid in shape.processes.items()}
        stats["cpu_ms_per_message"] = cpu_per_message(cpu_before, cpu_after, stats["answered"])
        used = sum(cpu_after.values()) - sum(cpu_before.values())
        stats["cores_busy"] = round(used / wall, 2) if wall else 0.0
        log(f"  p50 {stats.get('p50_ms')} ms, p95 {stats.get('p95_ms')} ms, {stats['throughput_msg_s']} msg/s")
        levels.append({"concurrency": concurrency, "rounds": rounds, **stats})
    return levels


async def failover(http: aiohttp.ClientSession, shape: Shape, conversations: int, busy: str) -> dict[str, Any]:
    """SIGKILL engine 0 while some of its conversations chat and others are idle; how long until
    the other engine answers each group."""
    assert shape.cluster is not None
    victim = shape.engine_urls[0]
    homed = homed_senders(shape.engine_urls, victim, f"bench-{shape.name}-failover", 2 * conversations)
    groups = {"chatting": homed[:conversations], "idle": homed[conversations:]}
    log(f"{shape.name}: failover, {conversations} chatting and {conversations} idle conversations on engine 0...")
    await asyncio.gather(*(converse(http, shape.target, s, conversation(i, 2), busy) for i, s in enumerate(homed)))
    attempts: list[Attempt] = []
    moments: dict[str, float] = {}
    killed = asyncio.Event()

    def done(sender: str) -> bool:
        if not killed.is_set():
            return False
        if time.perf_counter() > moments["kill"] + FAILOVER_TIMEOUT_SECONDS:
            return True
        answered = sum(a.answered and a.started >= moments["dead"] for a in attempts if a.sender == sender)
        return answered >= FAILOVER_ANSWERS

    async def chat(index: int, sender: str, idle: bool) -> None:
        if idle:  # its citizen is typing while the engine dies: the next message comes after
            await killed.wait()
        messages = conversation(index + 2, 4 * len(TURNS))
        step = 0
        while not done(sender):
            started = time.perf_counter()
            sample = await send(http, shape.target, sender, messages[step % len(messages)], busy)
            attempts.append(Attempt(sender, started, time.perf_counter(), sample.ok and not sample.busy))
            step += 1

    async def kill() -> None:
        await asyncio.sleep(KILL_AFTER_SECONDS)
        assert shape.cluster is not None
        moments["kill"] = time.perf_counter()
        await asyncio.to_thread(shape.cluster.kill_engine, 0)
        moments["dead"] = time.perf_counter()
        killed.set()

    await asyncio.gather(
        kill(), *(chat(i, s, name == "idle") for name, senders in groups.items() for i, s in enumerate(senders))
    )
    summary: dict[str, Any] = {"reaped_after_s": round(moments["dead"] - moments["kill"], 3)}
    for name, senders in groups.items():
        mine = [a for a in attempts if a.sender in senders]
        summary[name] = failover_summary(mine, senders, moments["kill"], moments["dead"])
        summary[name]["timeline"] = [
            [a.sender, round(a.started - moments["kill"], 2), round(a.ended - moments["kill"], 2), a.answered]
            for a in sorted(mine, key=lambda a: a.started)
        ]
        log(
            f"  {name}: first answer {summary[name]['first_answer_s']} s, "
            f"all {summary[name]['all_answered_s']} s after the kill"
        )
    return summary


async def shape_runs(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    busy = busy_text()
    connector = aiohttp.TCPConnector(limit=2 * max(args.concurrency) + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as http:
        log(f"{shape.name}: warm-up, {args.warmup} messages per engine...")
        await warm_up(http, shape, args.warmup, busy)
        result: dict[str, Any] = {"levels": await run_levels(http, shape, args, busy)}
        result["memory"] = {name: tree_memory(pid) for name, pid in shape.processes.items()}
        if len(shape.engine_urls) > 1 and args.failover_conversations > 0:
            result["failover"] = await failover(http, shape, args.failover_conversations, busy)
    return result


def run_shape(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start one shape, measure it, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    engines = 1 if name in ("embedded", "cluster1") else 2
    apps = 1 if name == "embedded" else (args.apps or engines)
    load_before = os.getloadavg()
    started = time.perf_counter()
    log(f"{name}: starting {engines} engine(s), {apps} app(s)...")
    try:
        env = dict(BENCH_ENV)
        if args.engine_max_in_flight is not None:
            env["ENGINE_MAX_IN_FLIGHT"] = str(args.engine_max_in_flight)
        shape_cm = embedded(workdir, env) if name == "embedded" else clustered(workdir, name, engines, apps, env)
        with shape_cm as shape:
            log(f"{name}: up in {time.perf_counter() - started:.0f} s")
            result = asyncio.run(shape_runs(shape, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "engines": engines,
        "apps": apps,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        **result,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info(), "model": str(MODEL.relative_to(ROOT))}
    results["config"] = {
        "shapes": args.shapes,
        "concurrency": args.concurrency,
        "messages_per_conversation": args.messages,
        "min_samples": args.min_samples,
        "warmup_per_engine": args.warmup,
        "failover_conversations": args.failover_conversations,
        "engine_timeout_seconds": ENGINE_TIMEOUT_SECONDS,
        "engine_max_in_flight": args.engine_max_in_flight,
        "quick": args.quick,
    }
    started = time.perf_counter()
    results["shapes"] = {name: run_shape(name, args) for name in args.shapes}
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


# --- the report -----------------------------------------------------------------------------


def in_flight_label(value: int | None) -> str:
    if value is None:
        return "the app's default"
    return "no limit" if value == 0 else str(value)


def loadavg(values: Any) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def shape_label(name: str, shape: dict[str, Any]) -> str:
    if name == "embedded":
        return "embedded (SQLite, 1 app, 1 engine)"
    return f"{name} (PostgreSQL, Redis, nginx, {shape['apps']} app(s), {shape['engines']} engine(s))"


def render_failover(name: str, fo: dict[str, Any]) -> str:
    busy, idle = fo["chatting"], fo["idle"]

    def row(label: str, key: str, unit: str = "") -> list[Any]:
        return [label, f"{busy[key]}{unit}", f"{idle[key]}{unit}"]

    rows = [
        row("first answer (to a message sent after the kill)", "first_answer_s", " s"),
        row("every conversation answered", "all_answered_s", " s"),
        row("conversations never answered", "unanswered_conversations"),
        row("messages in flight at the kill", "in_flight_at_kill"),
        row("… of them answered", "in_flight_answered"),
        row("messages sent after the kill", "sent_after_kill"),
        row("… of them unanswered (busy reply or error)", "unanswered_after_kill"),
    ]
    head = [
        "From the SIGKILL",
        f"{busy['conversations']} conversations chatting (a message in the engine)",
        f"{idle['conversations']} idle (next message after the kill)",
    ]
    return (
        f"### Failover ({name}): SIGKILL of engine 0, its conversations answered by engine 1\n\n"
        + table(head, rows)
        + "\n"
    )


def render(results: dict[str, Any]) -> str:
    m, cfg = results["machine"], results["config"]
    parts = [
        "## Cluster benchmark\n",
        f"Run on {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_total_gb']} GB RAM. "
        f"Load average before {loadavg(m['loadavg_at_start'])}; after {loadavg(m['loadavg_at_end'])}. "
        f"Model `{results['model']}`. {cfg['messages_per_conversation']} messages per conversation, at least "
        f"{cfg['min_samples']} messages per level, {cfg['warmup_per_engine']} warm-up messages per engine "
        f"not counted{' (quick mode)' if cfg['quick'] else ''}. Turns each app lets an engine work on at once "
        f"(`ENGINE_MAX_IN_FLIGHT`): {in_flight_label(cfg.get('engine_max_in_flight'))}.\n",
    ]
    rows = []
    for name, shape in results["shapes"].items():
        for level in shape["levels"]:
            rows.append(
                [
                    shape_label(name, shape),
                    level["concurrency"],
                    level["messages"],
                    level.get("p50_ms"),
                    level.get("p95_ms"),
                    level["throughput_msg_s"],
                    level["per_engine_msg_s"],
                    level["errors"] + level["busy_replies"],
                ]
            )
    head = ["Shape", "Conversations", "Messages", "p50 ms", "p95 ms", "msg/s", "msg/s per engine", "Unanswered"]
    parts.append("### Latency and throughput\n\n" + table(head, rows) + "\n")
    kinds = ["engine", "app", "postgres", "redis", "nginx"]
    rows = [
        [
            name,
            level["concurrency"],
            *(level["cpu_ms_per_message"].get(kind, "–") for kind in kinds),
            level["cores_busy"],
        ]
        for name, shape in results["shapes"].items()
        for level in shape["levels"]
    ]
    parts.append(
        "CPU time per answered message (ms, user + system, all processes of a kind summed; "
        "cores busy = the shape's CPU seconds per second of wall time):\n\n"
        + table(["Shape", "Conversations", *kinds, "Cores busy"], rows)
        + "\n"
    )
    loads = [
        [name, loadavg(shape["loadavg_before"]), loadavg(shape["loadavg_after"]), f"{shape['seconds']} s"]
        for name, shape in results["shapes"].items()
    ]
    parts.append("Load average:\n\n" + table(["Shape", "Before", "After", "Wall (start to stop)"], loads) + "\n")
    rows = []
    for name, shape in results["shapes"].items():
        for process, mem in shape["memory"].items():
            rows.append([name, process, mem["main_rss_mb"], mem["tree_rss_mb"], mem["tree_pss_mb"], mem["processes"]])
    parts.append(
        "### Memory after the runs\n\n"
        + table(["Shape", "Process", "RSS MB", "RSS with children MB", "PSS with children MB", "Processes"], rows)
        + "\n"
    )
    for name, shape in results["shapes"].items():
        if "failover" in shape:
            parts.append(render_failover(name, shape["failover"]))
    parts.append(f"_Whole run: {results['seconds']} s._\n")
    return "\n".join(parts)


# --- the command ----------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers separated by commas, got {text!r}")
    return values


def shape_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SHAPES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"shapes are {', '.join(SHAPES)}; got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=shape_list, default=list(SHAPES), help="embedded,cluster1,cluster2")
    parser.add_argument("--concurrency", type=int_list, default=[1, 20, 50], help="conversations at once, e.g. 1,20,50")
    parser.add_argument("--messages", type=int, default=20, help="messages per conversation")
    parser.add_argument("--min-samples", type=int, default=100, help="messages per level at least (more rounds)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up messages per engine, not counted")
    parser.add_argument("--apps", type=int, default=0, help="apps in the cluster shapes (default: one per engine)")
    parser.add_argument("--failover-conversations", type=int, default=10, help="0 skips the failover measurement")
    parser.add_argument(
        "--engine-max-in-flight",
        type=int,
        default=None,
        help="ENGINE_MAX_IN_FLIGHT for the apps (0: no limit; default: the app's default)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/cluster_benchmark.json"), help="JSON results file")
    parser.add_argument(
        "--quick", action="store_true", help="development run: 1,5 conversations x 4 messages, 3 failover conversations"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.messages, args.min_samples, args.warmup = [1, 5], 4, 0, 4
        args.failover_conversations = min(args.failover_conversations, 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (or `kill`) stops the shape it is in, as Ctrl-C does, instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    if model_missing():
        return 2
    results = run(args)
    out = write_report(results, args.out, render)
    log(f"done in {results['seconds']} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
