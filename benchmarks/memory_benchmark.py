"""The app's memory: one ``python -m app`` (the embedded default: SQLite) after start, after
conversations, and where the memory goes.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.memory_benchmark [--conversations 10] [--no-engine] > results/memory_benchmark.md

What it measures:

1. **The app process.** A migrated SQLite database and the app, started as the tests start them
   (``tests/support/stack.py``: ``python -m crm_backend migrate``, then ``python -m app``, on a
   free loopback port, everything in a temporary directory). Two seconds after ``/healthz``
   answers, and again after ``--conversations`` conversations through the app's REST channel
   (each a few turns of ``benchmarks.run_benchmarks``: greetings, FAQ, chitchat, and a long
   complaint that opens the report form, read by the letter gate and the dispatcher, then
   cancelled), it reads ``/proc/PID/smaps_rollup`` and ``/proc/PID/status``:

   - **RSS**: resident pages, shared ones included (what ``ps`` and ``top`` show);
   - **PSS**: proportional set size, each shared page split between the processes mapping it
     (the fair share when several apps run on one machine);
   - **USS**: unique set size, the pages only this process holds (``Private_Clean`` +
     ``Private_Dirty``): what one more app process would cost;
   - **anonymous**: the heap (Python objects, numpy arrays), never shared between processes;
   - **peak**: ``VmHWM``, the highest RSS the process reached.

   With ``--no-engine`` no engine is started and only the start-up figures are taken.

2. **Where it goes.** In a separate process with the same settings, the app is built
   (``app.factory.init_app``) and started (``app.startup()``: every cleanup context, in the
   app's own order) while a recorder follows the growth of the RSS: every first import of a
   module and every model-loading step (the calls in `STEPS`) is timed and measured, and each
   megabyte is charged to the innermost import or step that was running when it was taken
   (imports to their top-level package: ``sklearn``, ``spacy``, ...). The rows add up to the
   RSS after start (``other`` is what no import or step explains: the interpreter, aiohttp's
   app, the cleanup contexts' own work).

Progress goes to stderr, the Markdown report to stdout, the figures to ``memory_benchmark.json``
in ``--out-dir``. The RSS of a Python process depends a little on the machine's allocator and
on what ran before; the figures are one run.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.stack import Stack

# Nothing heavy is imported here: the measured child process (``--breakdown``) starts from this
# module, and whatever it imports before the app is charged to the interpreter.
ROOT = Path(__file__).resolve().parents[1]

# The model-loading steps of the app's start, charged separately: (module, attribute path).
STEPS: tuple[tuple[str, str], ...] = (
    ("crm_backend.segmentation", "shared_segmenter"),
    ("crm_backend.dispatch.classifier", "shared_segmenter"),  # the same function, as the classifier calls it
    ("crm_backend.segmentation", "layered_segmenter"),
    ("crm_backend.dispatch.classifier", "CategoryClassifier.load"),
    ("crm_backend.dispatch.case_type", "CaseTypeRecogniser.load"),
    ("crm_backend.dispatch.location", "Gazetteer.load"),
    ("crm_backend.dispatch.location", "LocationExtractor._build"),
    ("bot.letters", "LetterKindModel.train"),
    ("bot.letters", "LetterKindModel.load"),
    ("crm_backend.services.knowledge", "KnowledgeBase.warm_up"),
    ("crm_backend.knowledge.retrieval", "KnowledgeIndex.__init__"),
)
SETTLE_SECONDS = 2.0
MB = 1024


# --- reading a process's memory --------------------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS, USS, anonymous and peak RSS of a process, in MB (from ``/proc``)."""
    rollup = _fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    status = _fields(Path(f"/proc/{pid}/status").read_text())
    return {
        "rss_mb": round(rollup["Rss"] / MB, 1),
        "pss_mb": round(rollup["Pss"] / MB, 1),
        "uss_mb": round((rollup["Private_Clean"] + rollup["Private_Dirty"]) / MB, 1),
        "anonymous_mb": round(rollup["Anonymous"] / MB, 1),
        "peak_rss_mb": round(status["VmHWM"] / MB, 1),
    }


def _fields(text: str) -> dict[str, int]:
    """``Name:   123 kB`` lines as {name: kB}."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields


def rss_kb(collect: bool = False) -> int:
    """This process's RSS in kB, after handing the allocator's free memory back to the system
    (and, with `collect`, after a garbage collection).

    Without them, memory a step freed but the allocator kept (glibc's malloc keeps freed
    blocks of each thread's arena for reuse), or garbage not yet collected, would be charged to
    whichever step ran later; with them, each step is charged what it still holds.
    """
    if collect:
        gc.collect()
    _LIBC.malloc_trim(0)
    return _fields(Path("/proc/self/status").read_text())["VmRSS"]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


# --- 2: where the memory goes (runs in its own process: ``--breakdown``) ---------------------


class Recorder:
    """Charges each growth of the RSS to the innermost import or step running when it happened."""

    def __init__(self) -> None:
        self.charged: dict[str, float] = defaultdict(float)
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[_Frame] = []

    def enter(self, name: str) -> None:
        self._open.append(_Frame(name, rss_kb(collect=not name.startswith("import ")), time.perf_counter()))

    def leave(self) -> None:
        frame = self._open.pop()
        grown = rss_kb(collect=not frame.name.startswith("import ")) - frame.rss_kb
        self.charged[frame.name] += (grown - frame.children_kb) / MB
        if not frame.name.startswith("import "):
            self.seconds[frame.name] += time.perf_counter() - frame.started
        if self._open:
            self._open[-1].children_kb += grown


@dataclass
class _Frame:
    name: str
    rss_kb: int
    started: float
    children_kb: int = 0


def _record_imports(recorder: Recorder) -> Callable[[], None]:
    """Charge first imports to their top-level package; returns the function that stops it."""
    original = builtins.__import__

    def recording_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level != 0 or name in sys.modules:
            return original(name, globals, locals, fromlist, level)
        recorder.enter(f"import {name.split('.')[0]}")
        try:
            return original(name, globals, locals, fromlist, level)
        finally:
            recorder.leave()

    builtins.__import__ = recording_import

    def stop() -> None:
        builtins.__import__ = original

    return stop


def _record_step(recorder: Recorder, module_name: str, path: str) -> None:
    """Wrap one function or method (sync or async) so its own growth is charged to it."""
    owner: Any = importlib.import_module(module_name)
    *parents, attribute = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    if attribute not in vars(owner):
        return
    raw = vars(owner)[attribute]
    function = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
    label = path

    if asyncio.iscoroutinefunction(function):

        async def measured_async(*args: Any, **kwargs: Any) -> Any:
            recorder.enter(label)
            try:
                return await function(*args, **kwargs)
            finally:
                recorder.leave()

        wrapped: Any = measured_async
    else:

        def measured(*args: Any, **kwargs: Any) -> Any:
            recorder.enter(label)
            try:
                return function(*args, **kwargs)
            finally:
                recorder.leave()

        wrapped = measured
    if isinstance(raw, classmethod):
        wrapped = classmethod(wrapped)
    elif isinstance(raw, staticmethod):
        wrapped = staticmethod(wrapped)
    setattr(owner, attribute, wrapped)


async def _start_and_measure(recorder: Recorder) -> dict[str, Any]:
    stop_imports = _record_imports(recorder)
    recorder.enter("build the app (init_app)")
    from app.factory import init_app
    from app.settings import Settings

    app = init_app(Settings.from_env())
    recorder.leave()
    for module_name, path in STEPS:
        _record_step(recorder, module_name, path)
    contexts = list(app.cleanup_ctx)
    app.cleanup_ctx.clear()
    for context in contexts:
        app.cleanup_ctx.append(_measured_context(recorder, context))
    app.freeze()
    await app.startup()
    await asyncio.sleep(SETTLE_SECONDS)
    stop_imports()
    after_start = memory(os.getpid())
    await app.shutdown()
    await app.cleanup()
    return {"after_start": after_start}


def _measured_context(recorder: Recorder, context: Any) -> Any:
    async def measured(app: Any) -> Any:
        recorder.enter(f"start: {context.__name__}")
        generator = context(app)
        try:
            await generator.__anext__()
        finally:
            recorder.leave()
        yield
        with contextlib.suppress(StopAsyncIteration):
            await generator.__anext__()

    return measured


def breakdown_main() -> int:
    """``--breakdown``: start the app in this process and print the charged MB as JSON on stdout."""
    recorder = Recorder()
    interpreter = rss_kb() / MB
    result = asyncio.run(_start_and_measure(recorder))
    charged = dict(recorder.charged)
    charged["python interpreter"] = interpreter
    charged["other"] = result["after_start"]["rss_mb"] - sum(charged.values())
    result["charged_mb"] = {name: round(mb, 1) for name, mb in charged.items()}
    result["step_seconds"] = {name: round(s, 2) for name, s in recorder.seconds.items()}
    print(json.dumps(result))
    return 0


def breakdown(stack: Stack) -> dict[str, Any]:
    """Run `breakdown_main` in a fresh interpreter with the stack's settings."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_benchmark", "--breakdown"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"breakdown failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- 1: the app process ----------------------------------------------------------------------


async def conversations(stack: Stack, count: int) -> dict[str, int]:
    """`count` conversations through the app's REST channel, one after another, each a few turns
    with one complaint (the report form, the dispatcher and the letter gate) in it."""
    import aiohttp

    from benchmarks.run_benchmarks import COMPLAINTS, busy_text, conversation, send, targets

    app_target, _ = targets(stack)
    busy = busy_text()
    answered = failed = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for index in range(count):
            messages = [COMPLAINTS[index % len(COMPLAINTS)], "算了不报了", *conversation(index, 4)]
            for text in messages:
                sample = await send(http, app_target, f"memory-{index}", text, busy)
                answered += sample.ok and not sample.busy
                failed += not sample.ok or sample.busy
    return {"messages_answered": answered, "messages_failed": failed}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.run_benchmarks import log, machine_info
    from tests.support.stack import Stack

    results: dict[str, Any] = {"machine": machine_info(), "commit": _commit()}
    workdir = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    stack = Stack(workdir=workdir, engine_timeout_seconds=30.0)
    try:
        stack.migrate()
        log("where the memory goes: starting the app in a measured process...")
        results["breakdown"] = breakdown(stack)
        if not args.no_engine:
            log("starting the engine (loads the model)...")
            stack.start_engine()
        log("starting the app...")
        results["app_start_seconds"] = round(stack.start_app(), 2)
        time.sleep(SETTLE_SECONDS)
        assert stack.app_proc is not None
        results["after_start"] = memory(stack.app_proc.pid)
        log(f"after start: {results['after_start']}")
        if not args.no_engine:
            log(f"{args.conversations} conversations...")
            results["conversations"] = {
                "count": args.conversations,
                **asyncio.run(conversations(stack, args.conversations)),
            }
            time.sleep(SETTLE_SECONDS)
            results["after_conversations"] = memory(stack.app_proc.pid)
            log(f"after conversations: {results['after_conversations']}")
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    return results


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


# --- the report ------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    from benchmarks.run_benchmarks import table

    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    end = ", ".join(f"{x:.2f}" for x in m["loadavg_at_end"])
    columns = ["when", "RSS MB", "PSS MB", "USS MB", "anonymous MB", "peak RSS MB"]
    keys = ["rss_mb", "pss_mb", "uss_mb", "anonymous_mb", "peak_rss_mb"]
    rows = [["after start", *(results["after_start"][k] for k in keys)]]
    if "after_conversations" in results:
        c = results["conversations"]
        label = (
            f"after {c['count']} conversations ({c['messages_answered']} messages answered, {c['messages_failed']} not)"
        )
        rows.append([label, *(results["after_conversations"][k] for k in keys)])
    charged = sorted(results["breakdown"]["charged_mb"].items(), key=lambda item: -item[1])
    seconds = results["breakdown"]["step_seconds"]
    shown = [[name, mb, seconds.get(name, "")] for name, mb in charged if abs(mb) >= 1.0]
    small = round(sum(mb for _, mb in charged if abs(mb) < 1.0), 1)
    shown.append(["everything under 1 MB each", small, ""])
    return "\n".join(
        [
            "## Memory of one app process (`benchmarks.memory_benchmark`)\n",
            f"Run on {m['date']} at commit {results['commit']}: {m['nproc']} CPUs ({m['cpu_model']}), "
            f"{m['memory_total_gb']} GB RAM. Load average at start {load}; at end {end}. "
            f"App start-up {results['app_start_seconds']} s.\n",
            table(columns, rows),
            "\nWhere the RSS after start goes (a separate process started the same way; each MB charged "
            "to the innermost import or start-up step that took it):\n",
            table(["import or step", "MB", "step seconds"], shown),
            f"\nRSS of the measured process after start: {results['breakdown']['after_start']['rss_mb']} MB.\n",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10, help="conversations through the app after start")
    parser.add_argument("--no-engine", action="store_true", help="measure after start only (no engine started)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="directory of memory_benchmark.json")
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)  # the measured child process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.breakdown:
        return breakdown_main()
    results = run(args)
    out_dir = args.out_dir if args.out_dir.is_absolute() else ROOT / args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_benchmark.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
