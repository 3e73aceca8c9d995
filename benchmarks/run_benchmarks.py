"""Benchmarks of the 12345 assistant: NLU quality, training and start-up time, latency, action endpoint, memory.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.run_benchmarks [--skip-cv] [--skip-train] [--out results/benchmarks.json] \
        > results/benchmarks.md

It prints a Markdown report on stdout (tables ready to paste into the README), progress on
stderr, and writes every figure to the JSON file. It starts its own engine, app and
rasa_sdk server on free loopback ports with a temporary database, tracker store and
secrets (``tests/support/stack.py``), never touches ``var/`` or ``models/``, and stops every
process it started. A full run takes a while: the cross-validation trains five NLU models
and the training benchmark one full model.

What each figure means:

1. **NLU, 5-fold cross-validation** (``rasa test nlu --cross-validation --folds 5``): the
   intent classifier is trained on 4/5 of ``nlu_data`` and scored on the held-out 1/5, five
   times; the figures are over the pooled held-out predictions. Macro F1 averages the
   intents equally (a rare intent counts as much as ``greet``), weighted F1 by support;
   accuracy is the share of held-out examples classified right. Entity F1 per entity comes
   from ``DIETClassifier_report.json``. The wall time covers all five trainings. Rasa's JSON
   reports (with the misclassified examples) are kept in ``nlu_cv/`` next to the JSON output.
2. **Training time**: one full ``rasa train`` (NLU + dialogue policies) with ``--force``,
   into a temporary directory, with an empty Rasa cache so nothing is reused.
3. **Start-up**: engine = process start until ``/status`` names a loaded model; app =
   process start until ``/healthz`` answers (the engine already running).
4. **Latency**: one citizen message in, the bot's replies out, timed at the client, through
   the app's REST channel (``/webhooks/rest/webhook``: authentication, logging to the
   database, handoff check, then the engine) versus straight to the engine's channel
   (``/webhooks/app/webhook``), on the same stack in the same run. Sequential: one message
   at a time, app and engine requests interleaved so background load hits both alike.
   Concurrent: 20 conversations at once, 20 messages each, one path at a time, in two rounds
   per path ordered engine, app, app, engine (fresh conversations each round), pooled.
   Messages exercise NLU and rules only (greetings, FAQ, chitchat, out of scope, thanks,
   and long complaints that open the report form, which "算了不报了" then cancels). The
   overhead is app p50 − engine p50. The engine timeout of this stack is raised to 30 s so
   a slow engine shows as latency, not as the app's "system busy" reply (which is counted).
5. **Action endpoint**: the same ``action_start_report`` call, 500 times each, to the
   rasa_sdk executor mounted in the app (aiohttp, bearer token) and to rasa_sdk's own Sanic
   server (``benchmarks/sdk_server_actions.py``), interleaved; plus the resident memory the
   separate rasa_sdk process would cost.
6. **Memory**: resident set size (VmRSS) of the engine and the app after the latency runs,
   of the main process and summed over its process group, and the group's proportional set
   size (PSS, shared pages split between the processes sharing them, so not double-counted).

Latency figures depend on the machine's load; both paths are always measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import requests
import yaml

from tests.support.stack import APP_PYTHON, MODEL, RASA, ROOT, Stack, free_port, stop_process_group, wait_until

RASA_ENV = {"RASA_TELEMETRY_ENABLED": "false"}
CV_FOLDS = 5
CV_TIMEOUT_SECONDS = 3 * 3600
TRAIN_TIMEOUT_SECONDS = 2 * 3600
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
ENGINE_TIMEOUT_SECONDS = 30.0
RASA_VERSION = "3.6.21"

CANCEL = "算了不报了"
COMPLAINTS = (
    "你好，我想反映个事情，我住在朝阳区幸福里小区3号楼，楼下那家烧烤店每天晚上开到凌晨两三点，"
    "油烟直接往我们家窗户里灌，吵得孩子根本睡不着觉，老人也天天咳嗽，跟老板说了好几次都不管用，"
    "物业说他们也管不了，这种情况到底有没有人管啊，麻烦你们派人来看看",
    "我们小区门口那条路的路灯已经坏了快一个月了，晚上黑漆漆的什么都看不见，上个星期还有个老太太"
    "在那摔了一跤，腿都摔青了，我们好几个邻居都反映过，一直没人来修，能不能赶紧安排修一下",
    "海淀区学院路那边有个工地天天半夜施工，搅拌机电锯的声音特别大，说是赶工期，可是晚上十一点"
    "以后还在干，我们整栋楼的人都休息不好，第二天还要上班，孩子还要上学，这样下去身体都要垮了",
)
# A conversation is a rotation through these turns; a turn's messages are sent back to back.
TURNS: tuple[tuple[str, ...], ...] = (
    ("你好",),
    ("居住证怎么办理，需要带哪些材料？",),
    ("今天天气真不错，你吃饭了吗",),
    ("社保卡丢了怎么补办",),
    ("帮我订一张明天去北京的机票",),
    (COMPLAINTS[0], CANCEL),
    ("谢谢",),
    ("公积金提取需要什么手续",),
    ("你是机器人吗",),
    ("推荐一部好看的电影吧",),
    (COMPLAINTS[1], CANCEL),
    ("好的，辛苦了",),
    ("新生儿落户去哪里办",),
    ("你会唱歌吗",),
    ("明天股票会涨吗",),
    (COMPLAINTS[2], CANCEL),
    ("早上好",),
    ("非常感谢",),
)
# Intents that would start a form waiting for answers, or hand the conversation to staff.
UNWANTED_INTENTS = {"check_progress", "give_case_number", "human_handoff", "complain_about_service"}


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the Markdown report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics ---------------------------------------------------------------------------


def summarize(seconds: list[float]) -> dict[str, float | int]:
    """Count, p50/p95/p99, mean and max of durations, in milliseconds."""
    if len(seconds) < 2:
        return {"n": len(seconds)}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "n": len(seconds),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p95_ms": round(cuts[94] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
    }


# --- machine and processes --------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU count and model, total memory, OS, load average, date."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_total_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(kb / 1024, 1)


def pss_mb(pid: int) -> float:
    """Proportional set size in MB: shared pages split between the processes sharing them."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return round(kb / 1024, 1)


def process_group(pgid: int) -> list[int]:
    """Pids of the live processes in a process group."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(stat.parent.name))
    return pids


def memory_of(pid: int) -> dict[str, float | int]:
    """Memory of a process started in its own session: RSS of the main pid, RSS and PSS summed over its group."""
    group = process_group(pid)
    return {
        "main_rss_mb": rss_mb(pid),
        "group_rss_mb": round(sum(rss_mb(p) for p in group), 1),
        "group_pss_mb": round(sum(pss_mb(p) for p in group), 1),
        "processes": len(group),
    }


# --- 1 and 2: NLU cross-validation and training --------------------------------------------


def run_rasa(args: list[str], logfile: Path, cache_dir: Path, timeout: float) -> tuple[float, int]:
    """Run a rasa command from the project root; returns (seconds, exit code). Output goes to `logfile`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RASA_")}
    env.update(RASA_ENV, RASA_CACHE_DIRECTORY=str(cache_dir))
    started = time.perf_counter()
    with open(logfile, "wb") as out:
        code = subprocess.run(
            [str(RASA), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode
    return time.perf_counter() - started, code


def log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextmanager
def temporary_stack(prefix: str, **options: Any) -> Iterator[Stack]:
    """A `Stack` in a fresh temporary directory (not started). On an error inside, the tails of
    its engine and app logs go to stderr; on the way out it is stopped and the directory removed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack(workdir=workdir, **options)
    try:
        yield stack
    except BaseException:
        for name in ("engine.log", "app.log"):
            print(f"--- tail of {name} ---\n{log_tail(workdir / name, 40)}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def model_missing() -> bool:
    """True (and says so) when bin/setup has not trained the engine's model yet."""
    if MODEL.exists():
        return False
    print(f"no trained model at {MODEL}: run bin/setup first", file=sys.stderr)
    return True


def write_report(results: dict[str, Any], out: Path, render: Callable[[dict[str, Any]], str]) -> Path:
    """Every figure as JSON in `out` (relative paths from the project root), the Markdown on stdout."""
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    print(render(results))
    return out


def find_report(out_dir: Path, name: str) -> Path | None:
    """The report file rasa wrote (name varies between versions): exact name first, then any match."""
    exact = sorted(out_dir.rglob(name))
    if exact:
        return exact[0]
    loose = sorted(p for p in out_dir.rglob(f"*{Path(name).stem}*.json") if "train" not in p.name)
    return loose[0] if loose else None


def per_label(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-label rows of a sklearn-style classification report (no averages)."""
    return {
        label: row
        for label, row in report.items()
        if isinstance(row, dict) and not label.endswith(" avg") and label != "accuracy"
    }


def run_cross_validation(tmp: Path, keep_dir: Path) -> dict[str, Any]:
    """5-fold cross-validation of the NLU pipeline; intent and entity scores on the held-out folds.

    The JSON reports rasa writes (including its lists of misclassified examples) are copied to `keep_dir`.
    """
    out_dir = tmp / "cv"
    logfile = tmp / "cv.log"
    log(f"NLU {CV_FOLDS}-fold cross-validation (trains {CV_FOLDS} NLU models)...")
    command = ["test", "nlu", "--nlu", "nlu_data", "--config", "config.yml"]
    command += ["--cross-validation", "--folds", str(CV_FOLDS), "--out", str(out_dir)]
    seconds, code = run_rasa(command, logfile, tmp / "cv-cache", CV_TIMEOUT_SECONDS)
    result: dict[str, Any] = {"seconds": round(seconds, 1), "folds": CV_FOLDS, "exit_code": code}
    keep_dir.mkdir(parents=True, exist_ok=True)
    for report in out_dir.rglob("*.json"):
        shutil.copy2(report, keep_dir / report.name)
    intent_path = find_report(out_dir, "intent_report.json")
    if code != 0 or intent_path is None:
        result["error"] = f"rasa test nlu failed (exit {code}):\n{log_tail(logfile)}"
        return result
    intents = json.loads(intent_path.read_text())
    result.update(
        intent_report_file=intent_path.name,
        macro_f1=intents["macro avg"]["f1-score"],
        weighted_f1=intents["weighted avg"]["f1-score"],
        accuracy=intents.get("accuracy", intents.get("micro avg", {}).get("f1-score")),
        examples=intents["macro avg"]["support"],
        intents={
            label: {
                "f1": row["f1-score"],
                "precision": row["precision"],
                "recall": row["recall"],
                "support": row["support"],
                "confused_with": row.get("confused_with", {}),
            }
            for label, row in sorted(per_label(intents).items())
        },
    )
    entity_path = find_report(out_dir, "DIETClassifier_report.json")
    if entity_path is not None:
        entities = json.loads(entity_path.read_text())
        result["entity_report_file"] = entity_path.name
        result["entities"] = {
            label: {
                "f1": row["f1-score"],
                "precision": row["precision"],
                "recall": row["recall"],
                "support": row["support"],
            }
            for label, row in sorted(per_label(entities).items())
        }
        if "micro avg" in entities:
            result["entity_micro_f1"] = entities["micro avg"]["f1-score"]
    return result


def time_training(tmp: Path) -> dict[str, Any]:
    """One full `rasa train --force` into a temporary directory, with an empty cache."""
    out_dir = tmp / "train"
    logfile = tmp / "train.log"
    log("full rasa train --force...")
    command = ["train", "--data", "nlu_data", "--config", "config.yml", "--domain", "domain.yml"]
    command += ["--out", str(out_dir), "--fixed-model-name", "bench", "--force"]
    seconds, code = run_rasa(command, logfile, tmp / "train-cache", TRAIN_TIMEOUT_SECONDS)
    result: dict[str, Any] = {"seconds": round(seconds, 1), "exit_code": code}
    model = out_dir / "bench.tar.gz"
    if code != 0 or not model.exists():
        result["error"] = f"rasa train failed (exit {code}):\n{log_tail(logfile)}"
    else:
        result["model_mb"] = round(model.stat().st_size / 1024 / 1024, 1)
    return result


# --- 3: start-up --------------------------------------------------------------------------


def start_stack(stack: Stack) -> dict[str, float]:
    """Start the engine, then the app; their start-up seconds."""
    log("starting the engine (loads the model)...")
    engine = stack.start_engine()
    log(f"engine up in {engine:.1f}s; starting the app...")
    app = stack.start_app()
    log(f"app up in {app:.2f}s")
    return {"engine_seconds": round(engine, 2), "app_seconds": round(app, 2)}


# --- 4: latency ---------------------------------------------------------------------------


def conversation(index: int, length: int) -> list[str]:
    """`length` messages rotating through TURNS from an offset; a complaint always comes with its cancel."""
    messages: list[str] = []
    position = index * 5
    for _ in range(length * len(TURNS)):
        if len(messages) >= length:
            break
        turn = TURNS[position % len(TURNS)]
        position += 1
        if len(messages) + len(turn) <= length:
            messages.extend(turn)
    return messages


def check_messages(stack: Stack) -> list[dict[str, Any]]:
    """The intent the engine's NLU gives each benchmark message, and whether it is one to avoid."""
    texts = list(dict.fromkeys(text for turn in TURNS for text in turn))
    checked = []
    for text in texts:
        intent = stack.parse(text).get("intent") or {}
        checked.append(
            {
                "text": text,
                "intent": intent.get("name"),
                "confidence": round(float(intent.get("confidence") or 0), 3),
                "unwanted": intent.get("name") in UNWANTED_INTENTS,
            }
        )
    unwanted = [c for c in checked if c["unwanted"]]
    if unwanted:
        log(f"WARNING: {len(unwanted)} benchmark message(s) classified as form/handoff intents: {unwanted}")
    return checked


@dataclass(frozen=True)
class Target:
    """One way in: the app's REST channel or the engine's channel."""

    name: str
    url: str
    token: str
    engine_format: bool
    sender_prefix: str

    def body(self, sender: str, text: str) -> dict[str, Any]:
        if self.engine_format:
            return {"sender": sender, "message": text, "input_channel": "rest", "metadata": {}}
        return {"sender": sender, "message": text}


@dataclass
class Sample:
    seconds: float
    ok: bool
    busy: bool
    replies: list[str]


def targets(stack: Stack) -> tuple[Target, Target]:
    app = Target(
        "app", f"{stack.app_url}/webhooks/rest/webhook", stack.secrets["REST_CHANNEL_TOKEN"], False, "bench-app"
    )
    engine = Target(
        "engine", f"{stack.engine_url}/webhooks/app/webhook", stack.secrets["ENGINE_TOKEN"], True, "bench-engine"
    )
    return app, engine


def busy_text() -> str:
    """The app's "system busy" sentence: a reply with it means the engine did not answer in time."""
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    return str(domain["responses"]["utter_system_busy"][0]["text"])


async def send(http: aiohttp.ClientSession, target: Target, sender: str, text: str, busy: str) -> Sample:
    """One message, timed from request to the whole reply read."""
    headers = {"Authorization": f"Bearer {target.token}"}
    started = time.perf_counter()
    try:
        async with http.post(target.url, json=target.body(sender, text), headers=headers) as resp:
            replies = await resp.json(content_type=None)
            ok = resp.status == 200 and isinstance(replies, list)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return Sample(time.perf_counter() - started, False, False, [])
    seconds = time.perf_counter() - started
    texts = [str(r.get("text")) for r in replies if isinstance(r, dict)] if ok else []
    return Sample(seconds, ok, busy in texts, texts)


async def converse(
    http: aiohttp.ClientSession, target: Target, sender: str, messages: list[str], busy: str
) -> list[Sample]:
    """One conversation: each message waits for the previous reply."""
    return [await send(http, target, sender, text, busy) for text in messages]


def sample_stats(samples: list[Sample]) -> dict[str, Any]:
    ok = [s.seconds for s in samples if s.ok and not s.busy]
    return {
        **summarize(ok),
        "errors": sum(not s.ok for s in samples),
        "busy_replies": sum(s.busy for s in samples),
    }


async def warm_up(http: aiohttp.ClientSession, pair: tuple[Target, Target], count: int, busy: str) -> None:
    for target in pair:
        await converse(http, target, f"{target.sender_prefix}-warmup", conversation(99, count), busy)


async def sequential_run(
    http: aiohttp.ClientSession, pair: tuple[Target, Target], total: int, per_conversation: int, busy: str
) -> tuple[dict[str, list[Sample]], dict[str, list[dict[str, Any]]]]:
    """`total` messages per path, one at a time, app and engine interleaved (alternating who goes first).

    Returns the samples per path, and the first conversation's transcript per path (to check the replies).
    """
    samples: dict[str, list[Sample]] = {t.name: [] for t in pair}
    transcripts: dict[str, list[dict[str, Any]]] = {t.name: [] for t in pair}
    for index in range(max(1, total // per_conversation)):
        for step, text in enumerate(conversation(index, per_conversation)):
            order = pair if step % 2 == 0 else pair[::-1]
            for target in order:
                sample = await send(http, target, f"{target.sender_prefix}-seq-{index}", text, busy)
                samples[target.name].append(sample)
                if index == 0:
                    transcripts[target.name].append({"message": text, "replies": sample.replies})
    return samples, transcripts


async def concurrent_run(
    http: aiohttp.ClientSession, target: Target, senders: int, per_sender: int, busy: str, round_no: int
) -> tuple[list[Sample], float]:
    """`senders` fresh conversations at once on one path; all samples and the wall time."""
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            converse(http, target, f"{target.sender_prefix}-conc{round_no}-{i}", conversation(i, per_sender), busy)
            for i in range(senders)
        )
    )
    return [s for run in runs for s in run], time.perf_counter() - started


async def concurrent_rounds(
    http: aiohttp.ClientSession, pair: tuple[Target, Target], senders: int, per_sender: int, rounds: int, busy: str
) -> dict[str, Any]:
    """Concurrent runs on each path, in rounds ordered engine-app, app-engine, ... so drifting load hits both alike."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in pair}
    walls: dict[str, float] = {t.name: 0.0 for t in pair}
    per_round: list[dict[str, Any]] = []
    for round_no in range(rounds):
        for target in pair[::-1] if round_no % 2 == 0 else pair:
            log(
                f"concurrent round {round_no + 1}/{rounds}: {senders} senders x {per_sender} messages via {target.name}"
            )
            run_samples, wall = await concurrent_run(http, target, senders, per_sender, busy, round_no)
            samples[target.name] += run_samples
            walls[target.name] += wall
            stats = {"round": round_no + 1, "path": target.name, "wall_seconds": round(wall, 2)}
            per_round.append({**stats, **sample_stats(run_samples)})
    result: dict[str, Any] = {
        name: {
            **sample_stats(samples[name]),
            "wall_seconds": round(walls[name], 2),
            "throughput_msg_s": round(len(samples[name]) / walls[name], 1),
        }
        for name in samples
    }
    result["overhead"] = overhead(result["app"], result["engine"])
    result["rounds"] = per_round
    return result


def overhead(app: dict[str, Any], engine: dict[str, Any]) -> dict[str, float | None]:
    """What the app adds at the median: ms and % of the engine's own p50."""
    if "p50_ms" not in app or "p50_ms" not in engine:
        return {"p50_ms": None, "p50_pct": None}
    added = app["p50_ms"] - engine["p50_ms"]
    return {"p50_ms": round(added, 1), "p50_pct": round(100 * added / engine["p50_ms"], 1)}


async def latency_runs(
    stack: Stack, sequential: int, senders: int, per_sender: int, rounds: int, warmup: int
) -> dict[str, Any]:
    busy = busy_text()
    pair = targets(stack)
    connector = aiohttp.TCPConnector(limit=2 * senders + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as http:
        log(f"warm-up: {warmup} messages per path...")
        await warm_up(http, pair, warmup, busy)
        log(f"sequential: {sequential} messages per path, interleaved...")
        seq, transcripts = await sequential_run(http, pair, sequential, per_sender, busy)
        result: dict[str, Any] = {"sequential": {name: sample_stats(s) for name, s in seq.items()}}
        result["sample_transcripts"] = transcripts
        result["transcripts_match"] = transcripts["app"] == transcripts["engine"]
        result["sequential"]["overhead"] = overhead(result["sequential"]["app"], result["sequential"]["engine"])
        result["concurrent"] = await concurrent_rounds(http, pair, senders, per_sender, rounds, busy)
    result["config"] = {
        "sequential_messages_per_path": sequential,
        "messages_per_conversation": per_sender,
        "concurrent_senders": senders,
        "concurrent_rounds": rounds,
        "warmup_messages_per_path": warmup,
        "engine_timeout_seconds": ENGINE_TIMEOUT_SECONDS,
    }
    return result


def measure_latency(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    """Per-message latency through the app versus straight to the engine, sequential and concurrent."""
    return asyncio.run(latency_runs(stack, args.sequential, args.senders, args.per_sender, args.rounds, args.warmup))


# --- 5: action endpoint -------------------------------------------------------------------


def action_call() -> dict[str, Any]:
    """What the engine POSTs for `action_start_report` after a complaint naming a district and an address."""
    text = "朝阳区幸福里小区3号楼楼下烧烤店每天开到凌晨两三点，油烟噪音扰民，麻烦派人处理"
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    entities = [
        {
            "entity": "district",
            "start": 0,
            "end": 3,
            "value": "朝阳区",
            "extractor": "DIETClassifier",
            "confidence_entity": 0.99,
        },
        {
            "entity": "address",
            "start": 3,
            "end": 11,
            "value": "幸福里小区3号楼",
            "extractor": "DIETClassifier",
            "confidence_entity": 0.97,
        },
    ]
    latest_message = {
        "text": text,
        "intent": {"name": "report_issue", "confidence": 0.98},
        "entities": entities,
        "intent_ranking": [{"name": "report_issue", "confidence": 0.98}, {"name": "chitchat", "confidence": 0.01}],
    }
    now = time.time()
    slots = {name: None for name in domain.get("slots", {})}
    slots["requested_slot"] = None
    events = [
        {"event": "action", "timestamp": now - 3, "name": "action_session_start"},
        {"event": "session_started", "timestamp": now - 3},
        {"event": "action", "timestamp": now - 3, "name": "action_listen"},
        {"event": "user", "timestamp": now - 1, "text": text, "parse_data": latest_message, "input_channel": "rest"},
        {"event": "user_featurization", "timestamp": now - 1, "use_text_for_featurization": False},
    ]
    tracker = {
        "sender_id": "rest:bench-action",
        "slots": slots,
        "latest_message": latest_message,
        "latest_event_time": now - 1,
        "followup_action": None,
        "paused": False,
        "events": events,
        "latest_input_channel": "rest",
        "active_loop": {},
        "latest_action": {"action_name": "action_listen"},
        "latest_action_name": "action_listen",
    }
    return {
        "next_action": "action_start_report",
        "sender_id": "rest:bench-action",
        "tracker": tracker,
        "domain": domain,
        "version": RASA_VERSION,
    }


@contextmanager
def sdk_server(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """rasa_sdk's own Sanic server with the benchmark's actions on a loopback port; (process, url, start secs)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SANIC_HOST": "127.0.0.1"}
    with open(workdir / "sdk.log", "ab") as logfile:
        proc = subprocess.Popen(
            [str(APP_PYTHON), "-m", "rasa_sdk", "--actions", "benchmarks.sdk_server_actions", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"rasa_sdk server exited; see {workdir / 'sdk.log'}")
            return requests.get(f"{url}/health", timeout=2).status_code == 200

        started = wait_until(ready, timeout=60, interval=0.05, what="rasa_sdk server start")
        yield proc, url, started
    finally:
        stop_process_group(proc)


async def action_calls(
    endpoints: dict[str, tuple[str, dict[str, str]]], call: dict[str, Any], count: int
) -> tuple[dict[str, list[float]], dict[str, tuple[int, Any]]]:
    """`count` identical calls to each endpoint, interleaved after a warm-up; samples and one answer each."""
    samples: dict[str, list[float]] = {name: [] for name in endpoints}
    answers: dict[str, tuple[int, Any]] = {}
    body = json.dumps(call).encode()
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:

        async def one(name: str) -> float:
            url, headers = endpoints[name]
            started = time.perf_counter()
            async with http.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as resp:
                answers[name] = (resp.status, await resp.json(content_type=None))
            return time.perf_counter() - started

        for _ in range(20):  # warm-up, not counted
            for name in endpoints:
                await one(name)
        for index in range(count):
            names = list(endpoints) if index % 2 == 0 else list(endpoints)[::-1]
            for name in names:
                samples[name].append(await one(name))
    return samples, answers


def measure_action_endpoints(stack: Stack, count: int) -> dict[str, Any]:
    """The executor mounted in the app versus rasa_sdk's own server, on the same action call."""
    call = action_call()
    with sdk_server(stack.workdir) as (proc, url, start_seconds):
        log(f"rasa_sdk server up in {start_seconds:.2f}s; {count} action calls per endpoint...")
        endpoints = {
            "app_aiohttp": (f"{stack.app_url}/webhook", {"Authorization": f"Bearer {stack.secrets['ACTION_TOKEN']}"}),
            "rasa_sdk_sanic": (f"{url}/webhook", {}),
        }
        samples, answers = asyncio.run(action_calls(endpoints, call, count))
        sdk_memory = memory_of(proc.pid)
    app_answer, sdk_answer = answers["app_aiohttp"], answers["rasa_sdk_sanic"]
    return {
        "action": call["next_action"],
        "calls_per_endpoint": count,
        "app_aiohttp": summarize(samples["app_aiohttp"]),
        "rasa_sdk_sanic": summarize(samples["rasa_sdk_sanic"]),
        "same_answer": app_answer == sdk_answer,
        "answer_status": {"app_aiohttp": app_answer[0], "rasa_sdk_sanic": sdk_answer[0]},
        "events_returned": len(app_answer[1].get("events", [])) if isinstance(app_answer[1], dict) else None,
        "rasa_sdk_server_start_seconds": round(start_seconds, 2),
        "rasa_sdk_server_memory": sdk_memory,
    }


# --- 6: memory ----------------------------------------------------------------------------


def measure_memory(stack: Stack) -> dict[str, Any]:
    """Resident memory of the engine and the app right now."""
    assert stack.engine_proc is not None and stack.app_proc is not None
    return {"engine": memory_of(stack.engine_proc.pid), "app": memory_of(stack.app_proc.pid)}


# --- the run ------------------------------------------------------------------------------


def stack_benchmarks(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Everything that needs the running engine and app (3 to 6), stopped at the end whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    stack = Stack(workdir=workdir, engine_timeout_seconds=ENGINE_TIMEOUT_SECONDS)
    try:
        results["startup"] = start_stack(stack)
        results["message_check"] = check_messages(stack)
        results["latency"] = measure_latency(args, stack)
        results["memory"] = measure_memory(stack)
        results["action_endpoint"] = measure_action_endpoints(stack, args.action_calls)
    except Exception:
        for name in ("engine.log", "app.log", "sdk.log"):
            print(f"--- tail of {name} ---\n{log_tail(workdir / name)}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def timed(name: str, results: dict[str, Any], func: Callable[[], Any]) -> None:
    """Run one measurement and record how long it took overall."""
    started = time.perf_counter()
    results[name] = func()
    results.setdefault("durations_seconds", {})[name] = round(time.perf_counter() - started, 1)


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info(), "model": str(MODEL.relative_to(ROOT))}
    started = time.perf_counter()
    stack_started = time.perf_counter()
    stack_benchmarks(args, results)
    results.setdefault("durations_seconds", {})["stack"] = round(time.perf_counter() - stack_started, 1)
    with tempfile.TemporaryDirectory(prefix="bench-rasa-") as tmp:
        if not args.skip_train:
            timed("training", results, lambda: time_training(Path(tmp)))
        if not args.skip_cv:
            timed("nlu_cv", results, lambda: run_cross_validation(Path(tmp), out.parent / "nlu_cv"))
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["durations_seconds"]["total"] = round(time.perf_counter() - started, 1)
    return results


# --- the report ---------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    end = ", ".join(f"{x:.2f}" for x in m.get("loadavg_at_end", ()))
    return (
        f"Run on {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_total_gb']} GB RAM, {m['os']}. "
        f"Load average at start {load}; at end {end}. Model `{results['model']}`, Rasa {RASA_VERSION}.\n"
    )


def render_cv(cv: dict[str, Any]) -> str:
    out = [f"### Intent classification ({cv['folds']}-fold cross-validation on `nlu_data`)\n"]
    if "error" in cv:
        return out[0] + f"\nFailed after {cv['seconds']} s:\n\n```\n{cv['error']}\n```\n"
    out.append(
        table(
            ["Macro F1", "Weighted F1", "Accuracy", "Examples", "Wall time"],
            [[pct(cv["macro_f1"]), pct(cv["weighted_f1"]), pct(cv["accuracy"]), cv["examples"], f"{cv['seconds']} s"]],
        )
    )
    rows = []
    for intent, row in sorted(cv["intents"].items(), key=lambda item: item[1]["f1"]):
        confused = sorted(row["confused_with"].items(), key=lambda kv: -kv[1])[:2]
        confusions = ", ".join(f"{name} ({n})" for name, n in confused)
        scores = [pct(row["f1"]), pct(row["precision"]), pct(row["recall"]), row["support"]]
        rows.append([f"`{intent}`", *scores, confusions])
    out.append("\nPer intent (held-out folds, worst first):\n")
    out.append(table(["Intent", "F1", "Precision", "Recall", "Support", "Most confused with"], rows))
    if cv.get("entities"):
        rows = [
            [f"`{name}`", pct(row["f1"]), pct(row["precision"]), pct(row["recall"]), row["support"]]
            for name, row in cv["entities"].items()
        ]
        out.append(f"\nEntities (DIETClassifier, micro F1 {pct(cv.get('entity_micro_f1'))}):\n")
        out.append(table(["Entity", "F1", "Precision", "Recall", "Support"], rows))
    return "\n".join(out) + "\n"


def render_times(results: dict[str, Any]) -> str:
    rows = []
    if "training" in results:
        tr = results["training"]
        note = f"model {tr['model_mb']} MB" if "model_mb" in tr else f"failed: {tr.get('error', '')[:80]}"
        rows.append(["Full training (`rasa train --force`, empty cache)", f"{tr['seconds']} s", note])
    if "nlu_cv" in results:
        rows.append(["NLU cross-validation (5 NLU trainings)", f"{results['nlu_cv']['seconds']} s", ""])
    st = results["startup"]
    rows.append(["Engine start (process → `/status` has a model)", f"{st['engine_seconds']} s", ""])
    rows.append(["App start (process → `/healthz` answers)", f"{st['app_seconds']} s", "engine already up"])
    ae = results["action_endpoint"]
    rows.append(["rasa_sdk server start (process → `/health`)", f"{ae['rasa_sdk_server_start_seconds']} s", ""])
    return "### Training and start-up\n\n" + table(["What", "Time", "Note"], rows) + "\n"


def latency_row(label: str, stats: dict[str, Any], extra: str = "") -> list[Any]:
    return [
        label,
        stats["n"],
        stats.get("p50_ms"),
        stats.get("p95_ms"),
        stats.get("p99_ms"),
        stats.get("mean_ms"),
        stats["errors"] + stats["busy_replies"],
        extra,
    ]


def render_latency(lat: dict[str, Any]) -> str:
    cfg = lat["config"]
    seq, conc = lat["sequential"], lat["concurrent"]
    rows = [
        latency_row("Sequential — app REST channel", seq["app"]),
        latency_row("Sequential — engine channel directly", seq["engine"]),
        latency_row("Concurrent — app REST channel", conc["app"], f"{conc['app']['throughput_msg_s']} msg/s"),
        latency_row(
            "Concurrent — engine channel directly", conc["engine"], f"{conc['engine']['throughput_msg_s']} msg/s"
        ),
    ]
    head = ["Path", "Messages", "p50 ms", "p95 ms", "p99 ms", "mean ms", "Errors/busy", "Throughput"]
    overheads = table(
        ["Mode", "App overhead at p50"],
        [
            ["Sequential", f"{seq['overhead']['p50_ms']} ms ({seq['overhead']['p50_pct']} %)"],
            ["Concurrent", f"{conc['overhead']['p50_ms']} ms ({conc['overhead']['p50_pct']} %)"],
        ],
    )
    rounds = table(
        ["Concurrent round", "Path", "p50 ms", "p95 ms", "Wall s"],
        [[r["round"], r["path"], r.get("p50_ms"), r.get("p95_ms"), r["wall_seconds"]] for r in conc["rounds"]],
    )
    return (
        "### Per-message latency: app REST channel vs. engine channel\n\n"
        f"Sequential: {cfg['sequential_messages_per_path']} messages per path in conversations of "
        f"{cfg['messages_per_conversation']}, app and engine requests interleaved. Concurrent: "
        f"{cfg['concurrent_senders']} conversations × {cfg['messages_per_conversation']} messages at once on one "
        f"path, {cfg['concurrent_rounds']} rounds per path in the order engine, app, app, engine, pooled. "
        f"{cfg['warmup_messages_per_path']} warm-up messages per path not counted. Errors/busy counts failed "
        'requests and the app\'s "system busy" replies (excluded from the timings). '
        f"The first conversation got the same replies on both paths: {'yes' if lat['transcripts_match'] else '**no**'}."
        "\n\n" + table(head, rows) + "\n\n" + overheads + "\n\n" + rounds + "\n"
    )


def render_messages(checked: list[dict[str, Any]]) -> str:
    rows = [
        [c["text"] if len(c["text"]) <= 30 else c["text"][:30] + "…", f"`{c['intent']}`", c["confidence"]]
        for c in checked
    ]
    unwanted = sum(c["unwanted"] for c in checked)
    note = "none lands on a progress/handoff intent" if not unwanted else f"**{unwanted} land on unwanted intents**"
    return f"Benchmark messages as the model classifies them ({note}):\n\n" + table(
        ["Message", "Intent", "Confidence"], rows
    )


def render_actions(ae: dict[str, Any]) -> str:
    app, sdk = ae["app_aiohttp"], ae["rasa_sdk_sanic"]
    mem = ae["rasa_sdk_server_memory"]
    endpoints = [
        ("rasa_sdk executor in the app (aiohttp, bearer token)", app, "0 (in the app)"),
        ("rasa_sdk's own server (Sanic)", sdk, f"RSS {mem['group_rss_mb']} / PSS {mem['group_pss_mb']}"),
    ]
    rows = [[name, st["n"], st["p50_ms"], st["p95_ms"], st["mean_ms"], extra] for name, st, extra in endpoints]
    same = "identical" if ae["same_answer"] else "**different**"
    return (
        f"### Action endpoint: `{ae['action']}` call, {ae['calls_per_endpoint']} per endpoint\n\n"
        + table(["Endpoint", "Calls", "p50 ms", "p95 ms", "mean ms", "Extra memory MB"], rows)
        + f"\n\nBoth endpoints' answers are {same} (HTTP {ae['answer_status']['app_aiohttp']} / "
        f"{ae['answer_status']['rasa_sdk_sanic']}, {ae['events_returned']} events).\n"
    )


def render_memory(results: dict[str, Any]) -> str:
    processes = [
        ("Engine (`rasa run`, model loaded)", results["memory"]["engine"]),
        ("App (`python -m app`, action executor included)", results["memory"]["app"]),
        ("rasa_sdk server, if run separately", results["action_endpoint"]["rasa_sdk_server_memory"]),
    ]
    rows = [[name, m["main_rss_mb"], m["group_rss_mb"], m["group_pss_mb"], m["processes"]] for name, m in processes]
    return (
        "### Memory (after the latency runs)\n\n"
        + table(["Process", "Main RSS MB", "Group RSS MB", "Group PSS MB", "Processes"], rows)
        + "\n\nGroup = the process and every child it started (Sanic's worker manager spawns a worker, a helper "
        "and multiprocessing's resource tracker); PSS splits shared pages, so it does not double-count.\n"
    )


def render(results: dict[str, Any]) -> str:
    parts = ["## Benchmarks\n", render_machine(results)]
    if "nlu_cv" in results:
        parts.append(render_cv(results["nlu_cv"]))
    parts.append(render_times(results))
    parts.append(render_latency(results["latency"]))
    parts.append(render_messages(results["message_check"]) + "\n")
    parts.append(render_actions(results["action_endpoint"]))
    parts.append(render_memory(results))
    parts.append(f"\n_Whole benchmark run: {results['durations_seconds']['total']} s._\n")
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cv", action="store_true", help="skip the 5-fold NLU cross-validation")
    parser.add_argument("--skip-train", action="store_true", help="skip the full training benchmark")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks.json"), help="JSON results file")
    parser.add_argument("--sequential", type=int, default=200, help="sequential messages per path")
    parser.add_argument("--senders", type=int, default=20, help="concurrent conversations per path")
    parser.add_argument("--per-sender", type=int, default=20, help="messages per conversation")
    parser.add_argument("--rounds", type=int, default=2, help="concurrent rounds per path (alternating order)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up messages per path")
    parser.add_argument("--action-calls", type=int, default=500, help="action calls per endpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if model_missing():
        return 2
    out = args.out if args.out.is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run(args, out)
    write_report(results, out, render)
    log(f"done in {results['durations_seconds']['total']} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
