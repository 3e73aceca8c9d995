"""Real letters as first messages: ``.venv/bin/python -m benchmarks.letters_benchmark``.

Starts the real engine and app (`tests.support.stack.Stack`) and sends each letter of
``benchmarks/data/letters_heldout.csv`` (64 real letters no model learned from, chosen by
``msg_id % 100 == 0`` from the two shared files; see `benchmarks.letters_data`) as the first
message of a new conversation through the REST channel. The first reply is sorted into:

* started: the report form began (asks the description, place, district, phone or category,
  or reads the report back); ``started, place known`` when it did not ask the place;
* consultation started: a question no guide answers, filed as a 咨询 case at once (the intake
  asks only what is missing);
* answered: an answer from the knowledge base (or its "which service?" follow-up);
* KB no-match: the knowledge base has no answer, a consultation case or a person is offered;
* not understood: ``utter_default``; clarify: ``utter_clarify_details``; other: anything else.

Prints a table per letter kind (by the title rule of `bot.letters.kind_by_title`: a 咨询/请问/
询问 title is a question, any other a report) and the seconds it took. One run takes a few
minutes on two cores; ``--limit N`` sends only the first N letters.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.support.domain_text import utter
from tests.support.stack import ROOT, Stack

HELDOUT = ROOT / "benchmarks" / "data" / "letters_heldout.csv"
OUTCOMES = (
    "started",
    "started, place known",
    "consultation started",
    "answered",
    "KB no-match",
    "not understood",
    "clarify",
    "other",
)
GOOD = ("started", "started, place known", "consultation started", "answered")
_PLACE_ASKS = (utter("utter_ask_location"), utter("utter_choose_district"))
_REPORT_ASKS = (utter("utter_ask_description"), utter("utter_ask_contact_phone"), utter("utter_choose_category"))


def outcome(texts: list[str]) -> str:
    """Which of `OUTCOMES` a first reply (its messages' texts, in order) is."""
    joined = "\n".join(texts)
    if utter("utter_default") in joined:
        return "not understood"
    if utter("utter_clarify_details") in joined:
        return "clarify"
    if utter("utter_kb_consultation_started") in joined:
        return "consultation started"
    if utter("utter_kb_offer_consultation") in joined:
        return "KB no-match"
    if any(ask in joined for ask in _PLACE_ASKS):
        return "started"
    if any(ask in joined for ask in _REPORT_ASKS) or "请核对您反映的内容" in joined:
        return "started, place known"
    if "——依据：《" in joined or "关于「" in joined:
        return "answered"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    with open(HELDOUT, encoding="utf-8", newline="") as handle:
        letters = list(csv.DictReader(handle))
    if args.limit:
        letters = letters[: args.limit]
    workdir = Path(tempfile.mkdtemp(prefix="letters-bench-"))
    stack = Stack(workdir=workdir)
    counts: dict[str, Counter[str]] = {"report": Counter(), "question": Counter()}
    others: list[str] = []
    try:
        stack.start()
        started = time.monotonic()
        for letter in letters:
            replies = stack.rest(f"letter-{letter['msg_id']}", letter["text"])
            texts = [reply.get("text") or "" for reply in replies]
            found = outcome(texts)
            counts[letter["kind"]][found] += 1
            if found == "other":
                others.append(f"{letter['msg_id']}: {' | '.join(texts)[:120]}")
        seconds = time.monotonic() - started
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    kinds = ("report", "question")
    print(f"| first reply ({len(letters)} held-out letters) | reports | questions | all | share |")
    print("| --- | --- | --- | --- | --- |")
    for name in OUTCOMES:
        total = sum(counts[kind][name] for kind in kinds)
        print(
            f"| {name} | {counts['report'][name]} | {counts['question'][name]} | {total} | {total / len(letters):.0%} |"
        )
    good = sum(counts[kind][name] for kind in kinds for name in GOOD)
    print(f"\nstarted or answered: {good}/{len(letters)} = {good / len(letters):.1%}; {seconds:.0f} s for the letters")
    for line in others:
        print("other:", line)


if __name__ == "__main__":
    main()
