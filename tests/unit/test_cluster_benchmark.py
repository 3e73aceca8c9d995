"""The cluster benchmark's arithmetic: throughput of answered messages, rounds, failover times.

The benchmark itself (`benchmarks/cluster_benchmark.py`) starts engines and a cluster and is
run by hand; these check the figures it reports from fixed samples.
"""

from __future__ import annotations

import pytest

from benchmarks.cluster_benchmark import (
    Attempt,
    cpu_per_message,
    failover_summary,
    homed_senders,
    level_stats,
    parse_args,
    rounds_for,
)
from benchmarks.run_benchmarks import Sample
from bot.engine_pool import HashRing

ENGINES = ["http://127.0.0.1:5105", "http://127.0.0.1:5106"]


def sample(seconds: float, ok: bool = True, busy: bool = False) -> Sample:
    return Sample(seconds, ok, busy, [])


def test_throughput_counts_answered_messages_only_and_latency_times_them() -> None:
    samples = [sample(0.1 * n) for n in range(1, 11)] + [sample(30.0, busy=True), sample(60.0, ok=False)]

    stats = level_stats(samples, wall_seconds=4.0, engines=2)

    assert (stats["messages"], stats["answered"], stats["n"]) == (12, 10, 10)
    assert (stats["busy_replies"], stats["errors"]) == (1, 1)
    assert (stats["throughput_msg_s"], stats["per_engine_msg_s"]) == (2.5, 1.2)
    # Inclusive percentiles of 0.1 … 1.0 s: the busy reply's 30 s is not among them.
    assert (stats["p50_ms"], stats["p95_ms"], stats["max_ms"]) == (550.0, 955.0, 1000.0)


def test_a_level_runs_enough_rounds_for_its_minimum_of_messages() -> None:
    assert rounds_for(concurrency=1, per_conversation=20, min_samples=100) == 5
    assert rounds_for(concurrency=20, per_conversation=20, min_samples=100) == 1
    assert rounds_for(concurrency=3, per_conversation=4, min_samples=0) == 1


def test_failover_times_run_from_the_kill_to_each_conversations_first_answer_sent_after_it() -> None:
    kill, dead = 100.0, 100.2
    attempts = [
        Attempt("a", 99.5, 130.0, False),  # in flight at the kill: the engine's timeout, a busy reply
        Attempt("a", 130.0, 161.0, True),  # waited for the dead engine's lock ticket
        Attempt("b", 99.9, 100.1, True),  # answered by the dying engine: not the other's answer
        Attempt("b", 100.3, 101.5, True),
        Attempt("c", 100.3, 130.3, False),
    ]

    summary = failover_summary(attempts, ["a", "b", "c"], kill, dead)

    assert summary["first_answer_s"] == 1.5
    assert summary["all_answered_s"] is None  # "c" never answered
    assert summary["unanswered_conversations"] == 1
    assert (summary["in_flight_at_kill"], summary["in_flight_answered"]) == (2, 1)
    assert (summary["sent_after_kill"], summary["unanswered_after_kill"]) == (3, 1)
    assert failover_summary(attempts[:4], ["a", "b"], kill, dead)["all_answered_s"] == 61.0


def test_failover_senders_are_at_home_on_the_engine_to_be_killed() -> None:
    senders = homed_senders(ENGINES, ENGINES[0], "bench-failover", 5)

    assert len(set(senders)) == 5
    assert {HashRing(ENGINES).home(f"rest:{sender}") for sender in senders} == {ENGINES[0]}


def test_the_command_line_takes_lists_and_refuses_unknown_shapes() -> None:
    args = parse_args(["--concurrency", "1,20,50", "--shapes", "embedded,cluster2"])
    assert (args.concurrency, args.shapes) == ([1, 20, 50], ["embedded", "cluster2"])
    with pytest.raises(SystemExit):
        parse_args(["--shapes", "cluster3"])
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"])


def test_cpu_per_message_sums_the_processes_of_a_kind() -> None:
    before = {"app-0": 1.0, "app-1": 2.0, "engine-0": 10.0, "postgres": 0.5}
    after = {"app-0": 1.5, "app-1": 2.5, "engine-0": 14.0, "postgres": 0.7}

    assert cpu_per_message(before, after, answered=100) == {"app": 10.0, "engine": 40.0, "postgres": 2.0}
    assert cpu_per_message(before, after, answered=0) == {"app": 0.0, "engine": 0.0, "postgres": 0.0}
