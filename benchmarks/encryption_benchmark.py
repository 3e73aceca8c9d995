"""Benchmark of encryption at rest: what it adds to one message and to one case page.

Run from the project root::

    .venv/bin/python -m benchmarks.encryption_benchmark [--repeats 2000] > results/encryption_benchmark.md

No engine, no database: the added cost is the key ring's work (`crm_backend.crypto`), timed on
the values a message and a case page really carry, with SM4-GCM (the default) and AES-256-GCM.

* **Per message** (a citizen's message and the bot's answer): the app encrypts the message's
  text and ``engine_input`` and two answers (`crm_backend.models.EncryptedText`); the engine's
  tracker store encrypts the turn's 6 events (Rasa's JSON, about 700 bytes each) and, reading the
  tracker at the start of the turn, decrypts the conversation so far (`--history` events).
* **Per case page**: the case's description, location and phone, its citizen's phone, 10
  timeline notes and the conversation's 40 messages decrypted (the console's case page).
* **Filing a case** adds three blind indexes (HMAC-SHA256) to the encryptions above.

Markdown on stdout; p50 / p95 in milliseconds per operation set, wall clock and thread CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from crm_backend.crypto import KeyRing

MESSAGE = "我家楼下的路灯坏了整整三个星期，晚上一片漆黑，老人小孩出门很危险，请尽快派人来修一下。"
ANSWER = "好的，已记录您反映的问题。请问具体在什么位置？比如某某路某某号附近。"
DESCRIPTION = MESSAGE * 2
LOCATION = "A3区五一大道188号幸福小区东门"
PHONE = "13987654321"
NOTE = "已联系辖区路灯管理所，预计三个工作日内完成维修，维修后请您留意。"


def rasa_event(n: int) -> str:
    """A user event as Rasa stores it: text and parse data, about 700 bytes of JSON."""
    return json.dumps(
        {
            "event": "user",
            "timestamp": 1796462644.88 + n,
            "text": MESSAGE,
            "parse_data": {
                "intent": {"name": "report_issue", "confidence": 0.97},
                "entities": [],
                "text": MESSAGE,
                "message_id": f"{n:032x}",
                "metadata": {},
                "intent_ranking": [{"name": "report_issue", "confidence": 0.97}] * 3,
            },
            "input_channel": "app",
            "message_id": f"{n:032x}",
            "metadata": {},
        }
    )


def timed(work: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each of `repeats` runs (after 50 warm-up runs): wall clock, and this thread's CPU.

    On a shared machine the wall clock also counts time the process waited for a core; the CPU
    time is the work itself.
    """
    for _ in range(50):
        work()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        work()
        cpu.append((time.thread_time_ns() - start_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - start) / 1e6)
    return wall, cpu


def row(name: str, times: tuple[list[float], list[float]]) -> str:
    cells = []
    for series in times:
        ordered = sorted(series)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        cells.append(f"{statistics.median(ordered):.3f} | {p95:.3f}")
    return f"| {name} | {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--history", type=int, default=60, help="events in the tracker read at each turn")
    args = parser.parse_args()
    hmac_key = os.urandom(32)
    rings = {
        "SM4-GCM": KeyRing(keys={"k1": os.urandom(16)}, current="k1", hmac_key=hmac_key),
        "AES-256-GCM": KeyRing(keys={"k1": os.urandom(32)}, current="k1", hmac_key=hmac_key),
    }
    print("# Encryption at rest: added cost\n")
    print(f"{args.repeats} runs each after 50 warm-up runs; one process, one core; times in ms.\n")
    print("| operation set | wall p50 | wall p95 | CPU p50 | CPU p95 |")
    print("| --- | --- | --- | --- | --- |")
    for label, ring in rings.items():
        events = [rasa_event(n) for n in range(6)]
        history = [ring.encrypt(rasa_event(n), "events.data") for n in range(args.history)]
        case_values = [
            (ring.encrypt(DESCRIPTION, "service_case.description"), "service_case.description"),
            (ring.encrypt(LOCATION, "service_case.location"), "service_case.location"),
            (ring.encrypt(PHONE, "service_case.contact_phone"), "service_case.contact_phone"),
            (ring.encrypt(PHONE, "citizen.phone"), "citizen.phone"),
            *[(ring.encrypt(NOTE, "case_event.note"), "case_event.note")] * 10,
            *[(ring.encrypt(MESSAGE, "message.text"), "message.text")] * 40,
        ]

        def app_message(ring: KeyRing = ring) -> None:
            ring.encrypt(MESSAGE, "message.text")
            ring.encrypt(MESSAGE, "message.engine_input")
            ring.encrypt(ANSWER, "message.text")
            ring.encrypt(ANSWER, "message.text")

        def engine_turn(ring: KeyRing = ring, events: list[str] = events, history: list[str] = history) -> None:
            for stored in history:
                ring.decrypt(stored, "events.data")
            for event in events:
                ring.encrypt(event, "events.data")

        def message(app: Callable[[], None] = app_message, engine: Callable[[], None] = engine_turn) -> None:
            app()
            engine()

        def case_page(ring: KeyRing = ring, values: list[tuple[str, str]] = case_values) -> None:
            for stored, place in values:
                ring.decrypt(stored, place)

        def filing(ring: KeyRing = ring) -> None:
            for value, place in ((DESCRIPTION, "description"), (LOCATION, "location"), (PHONE, "contact_phone")):
                ring.encrypt(value, f"service_case.{place}")
            ring.encrypt(PHONE, "citizen.phone")
            ring.blind_index(PHONE, "phone")
            ring.blind_index(PHONE[-4:], "phone_last4")
            ring.blind_index(LOCATION, "location")

        print(row(f"{label}: per message, app (4 encryptions)", timed(app_message, args.repeats)))
        print(
            row(
                f"{label}: per message, engine ({args.history} events read, 6 written)",
                timed(engine_turn, args.repeats),
            )
        )
        print(row(f"{label}: per message, app and engine", timed(message, args.repeats)))
        print(row(f"{label}: per case page (54 values decrypted)", timed(case_page, args.repeats)))
        print(row(f"{label}: filing a case (4 encryptions, 3 blind indexes)", timed(filing, args.repeats)))
    print(f"\nload average while running: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")


if __name__ == "__main__":
    main()
