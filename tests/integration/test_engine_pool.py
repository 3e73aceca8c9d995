"""Two real engines behind one app: each conversation stays on one engine, and moves when it dies.

The engines share a PostgreSQL tracker store and Rasa's RedisLockStore (a throwaway
redis-server); the app names both in RASA_URLS. Which engine handled a message is read from
its log: the lock store's "Issuing ticket for conversation '<sender>'" line, once per message
(`tests/support/engine_lock_logging.yml`).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bot.engine_pool import HashRing
from tests.integration.test_rest_channel import response_text, texts
from tests.support.models import case_type_model
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.stack import MODEL, ROOT, Stack

LOCK_LOGGING = ROOT / "tests" / "support" / "engine_lock_logging.yml"


class Cluster:
    """One app, two engines (`engines[0]` is the app's own stack), PostgreSQL and Redis."""

    def __init__(self, app: Stack, engines: list[Stack]) -> None:
        self.app = app
        self.engines = engines
        self.ring = HashRing([engine.engine_url for engine in engines])

    def engine_of(self, sender: str) -> Stack:
        """The engine a REST citizen's conversation lives on (the engine knows them as ``rest:<sender>``)."""
        home = self.ring.home(f"rest:{sender}")
        return next(engine for engine in self.engines if engine.engine_url == home)

    def handled(self, engine: Stack, sender: str) -> int:
        """How many messages of REST citizen `sender` this engine has handled (its lock store's log lines)."""
        log = (engine.workdir / "engine.log").read_text(errors="replace")
        return len(re.findall(rf"Issuing ticket for conversation 'rest:{re.escape(sender)}'", log))

    def senders(self, prefix: str, per_engine: int) -> list[str]:
        """Fixed sender names, `per_engine` of them at home on each engine."""
        chosen: list[str] = []
        for engine in self.engines:
            names = (f"{prefix}-{number:03d}" for number in range(1000))
            chosen += [name for name in names if self.engine_of(name) is engine][:per_engine]
        return chosen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not MODEL.exists():
        pytest.fail("no trained model: run bin/setup (bin/test does) before the integration tests")
    os.environ.setdefault("CASE_TYPE_MODEL_PATH", str(case_type_model(tmp_path_factory.mktemp("case_types"))))
    postgres, redis = PostgresServer(), RedisServer()
    app: Stack | None = None
    twin: Stack | None = None
    try:
        postgres.start()
        redis.start()
        app = Stack(
            workdir=Path(tmp_path_factory.mktemp("pool")),
            database_url=postgres.create_database("crm"),
            tracker_store_url=postgres.create_database("tracker"),
            redis_url=redis.url,
            engine_options=("--logging-config-file", str(LOCK_LOGGING)),
        )
        twin = app.engine_twin("second-engine")
        # Two engines load their models in parallel (each takes most of a minute here).
        app.launch_engine()
        twin.launch_engine()
        app.wait_for_engine()
        twin.wait_for_engine()
        app.start_app(extra_env={"RASA_URLS": f"{app.engine_url},{twin.engine_url}"})
        yield Cluster(app, [app, twin])
    finally:
        for stack in (app, twin):
            if stack is not None:
                stack.stop()
                log = stack.workdir / "engine.log"
                if log.exists():
                    print(f"--- tail of {log} ---")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        redis.stop()
        postgres.stop()


def test_the_engines_use_the_redis_lock_store(cluster: Cluster) -> None:
    for engine in cluster.engines:
        log = (engine.workdir / "engine.log").read_text(errors="replace")
        assert "Connected to lock store 'RedisLockStore'" in log


def test_each_conversation_is_handled_by_one_engine_while_both_live(cluster: Cluster) -> None:
    senders = cluster.senders("sticky", per_engine=2)
    for sender in senders:
        assert texts(cluster.app.rest(sender, "小区旁边的工地每天晚上十二点还在施工，吵得睡不着")) == [
            response_text("utter_ask_location")
        ]
    for sender in senders:
        assert texts(cluster.app.rest(sender, "A5区桂花路88号")) == [response_text("utter_ask_contact_phone")]
    for sender in senders:
        home = cluster.engine_of(sender)
        other = next(engine for engine in cluster.engines if engine is not home)
        assert (cluster.handled(home, sender), cluster.handled(other, sender)) == (2, 0), sender


def test_a_killed_engines_conversation_continues_on_the_other_with_its_form_intact(cluster: Cluster) -> None:
    victim, survivor = cluster.engines[1], cluster.engines[0]
    sender = cluster.senders("failover", per_engine=1)[1]
    assert cluster.engine_of(sender) is victim
    assert texts(cluster.app.rest(sender, "小区旁边的工地每天晚上十二点还在施工，吵得睡不着")) == [
        response_text("utter_ask_location")
    ]
    assert cluster.handled(victim, sender) == 1

    assert victim.engine_proc is not None
    os.killpg(victim.engine_proc.pid, signal.SIGKILL)
    victim.engine_proc.wait()

    # The next message is answered once, by the other engine, where the form left off.
    assert texts(cluster.app.rest(sender, "A5区桂花路88号")) == [response_text("utter_ask_contact_phone")]
    summary, preview = cluster.app.rest(sender, "15012345678")  # the read-back and the question to confirm
    assert "工地每天晚上十二点还在施工" in summary["text"] and "A5区桂花路88号" in summary["text"]
    assert "/affirm" in [button["payload"] for button in preview["buttons"]]
    created = texts(cluster.app.rest(sender, "/affirm"))
    assert len(created) == 1 and re.search(r"\d{8}-\d{4,6}", created[0]), created
    assert (cluster.handled(victim, sender), cluster.handled(survivor, sender)) == (1, 3)
    app_log = (cluster.app.workdir / "app.log").read_text(errors="replace")
    assert f"conversation rest:{sender} moved from {victim.engine_url} to {survivor.engine_url}" in app_log

    health = requests.get(f"{cluster.app.app_url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["checks"]["engine"] == "ok"
    assert health.json()["engines_down"] == [victim.engine_url]
