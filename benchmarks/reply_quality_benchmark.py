"""答复质量 calibrated on the real replies: the score distribution over the 2,816 message/reply
pairs of ``citizen_messages_with_replies.csv`` and the replies at both ends, to read.

``.venv/bin/python -m benchmarks.reply_quality_benchmark [--examples 6] [--width 90]`` prints
quantiles of the total and of each dimension, a text histogram of the total, and the
lowest- and highest-scoring replies with their messages and reasons. Takes about half a minute
(jieba segments every message and reply once). Times are China time as the source writes them;
the deadline is the scorer's default (no category is known for these rows).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from dataclasses import dataclass
from datetime import datetime

from crm_backend.analytics.reply_quality import DEFAULT_DEADLINE_WORKING_DAYS, ReplyQuality, score_reply, warm_up
from crm_backend.data.history import history_file
from crm_backend.dispatch.deadlines import CHINA_TZ

SOURCE = "citizen_messages_with_replies.csv"
TIME_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d", "%Y-%m-%d")
DIMENSIONS = ("total", "relevance", "completeness", "interpretability", "timeliness")


@dataclass(frozen=True)
class Scored:
    msg_id: str
    message: str
    reply: str
    quality: ReplyQuality


def parse_time(raw: str) -> datetime:
    """A source time (two formats, sometimes a date alone) as an aware China-time datetime."""
    for pattern in TIME_FORMATS:
        try:
            return datetime.strptime(raw.strip(), pattern).replace(tzinfo=CHINA_TZ)
        except ValueError:
            continue
    raise ValueError(f"unreadable time {raw!r}")


def score_file() -> list[Scored]:
    with history_file(SOURCE).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = []
    for row in rows:
        message = f"{row['title'].strip()}\n{row['detail'].strip()}"
        quality = score_reply(
            message, row["reply"], asked_at=parse_time(row["time"]), replied_at=parse_time(row["reply_time"])
        )
        scored.append(Scored(row["msg_id"], message, row["reply"], quality))
    return scored


def quantile_table(scored: list[Scored]) -> list[str]:
    lines = ["| dimension | min | p10 | p25 | median | p75 | p90 | max | mean |", "|---" * 9 + "|"]
    for name in DIMENSIONS:
        values = sorted(getattr(item.quality, name) for item in scored)
        cuts = statistics.quantiles(values, n=20, method="inclusive")
        row = [values[0], cuts[1], cuts[4], cuts[9], cuts[14], cuts[17], values[-1]]
        cells = " | ".join(f"{value:.0f}" for value in row)
        lines.append(f"| {name} | {cells} | {statistics.fmean(values):.1f} |")
    return lines


def histogram(scored: list[Scored], width: int = 50) -> list[str]:
    bins = [0] * 10
    for item in scored:
        bins[min(9, item.quality.total // 10)] += 1
    top = max(bins)
    return [
        f"{10 * i:3d}-{10 * i + 9 if i < 9 else 100:<3d} {count:5d} {'#' * round(width * count / top)}"
        for i, count in enumerate(bins)
    ]


def show(item: Scored, width: int) -> list[str]:
    q = item.quality
    head = (
        f"msg {item.msg_id}: total {q.total} (相关 {q.relevance} 完整 {q.completeness} "
        f"可解释 {q.interpretability} 及时 {q.timeliness})"
    )
    flat = " ".join(item.reply.split())
    return [
        head,
        f"  留言: {' '.join(item.message.split())[:width]}",
        f"  答复: {flat[: width * 2]}{'…' if len(flat) > width * 2 else ''}",
        *(f"  · {reason}" for reason in q.reasons),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=6, help="replies shown at each end")
    parser.add_argument("--width", type=int, default=90, help="characters of each message shown")
    args = parser.parse_args()
    started = time.perf_counter()
    warm_up()
    scored = score_file()
    elapsed = time.perf_counter() - started
    deadline = DEFAULT_DEADLINE_WORKING_DAYS
    print(f"{len(scored)} replies scored in {elapsed:.1f} s (default deadline {deadline} working days)")
    print()
    print("\n".join(quantile_table(scored)))
    print()
    print("total, histogram:")
    print("\n".join(histogram(scored)))
    ranked = sorted(scored, key=lambda item: (item.quality.total, item.msg_id))
    print()
    print(f"== the {args.examples} lowest (one of each reply text) ==")
    for item in distinct(ranked, args.examples):
        print("\n".join(show(item, args.width)))
    print()
    print(f"== the {args.examples} highest (one of each reply text) ==")
    for item in distinct(list(reversed(ranked)), args.examples):
        print("\n".join(show(item, args.width)))


def distinct(ranked: list[Scored], count: int) -> list[Scored]:
    """The first `count` items whose reply text (whitespace aside) was not shown yet: the board
    sent 「网友：您好！留言已收悉」 word for word dozens of times."""
    seen: set[str] = set()
    chosen = []
    for item in ranked:
        key = "".join(item.reply.split())
        if key not in seen:
            seen.add(key)
            chosen.append(item)
        if len(chosen) == count:
            break
    return chosen


if __name__ == "__main__":
    main()
