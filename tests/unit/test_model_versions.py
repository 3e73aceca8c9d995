"""The category model's versions: the bundled model registered first, retraining behind the gate,
rollback followed by every process. Trained on a small fixed slice of the shipped data (seconds)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.models import ModelVersionViews
from crm_backend.console.web import ConsoleBase, build_templates
from crm_backend.dispatch.classifier import (
    CATEGORIES,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    LabelledMessage,
    read_labelled_csv,
)
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.learning import held_back
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import InvalidTransition
from crm_backend.http import error_middleware
from crm_backend.models import AuditEntry, CategoryModelVersion, StaffLabel, StaffUser, utcnow
from crm_backend.services import model_versions, staff
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor
from crm_backend.services.staff_labels import LabelDecision, record_staff_label
from tests.unit.test_console_hot_issues import PASSWORD, signed_in_as

Sessions = async_sessionmaker[AsyncSession]
Client = TestClient[web.Request, web.Application]
SHIPPED_PER_CATEGORY = 30
LABELS_PER_CATEGORY = 20
FOLDS = 3


def slices() -> tuple[list[LabelledMessage], list[LabelledMessage]]:
    """(the 'shipped' rows: the first 30 of each category, the next 20 of each: what staff label)."""
    shipped: list[LabelledMessage] = []
    later: list[LabelledMessage] = []
    seen = dict.fromkeys(CATEGORIES, 0)
    for row in read_labelled_csv(TRAINING_DATA_PATH):
        seen[row.label] += 1
        if seen[row.label] <= SHIPPED_PER_CATEGORY:
            shipped.append(row)
        elif seen[row.label] <= SHIPPED_PER_CATEGORY + LABELS_PER_CATEGORY:
            later.append(row)
    return shipped, later


SHIPPED, LATER = slices()


def wrong(category: str) -> str:
    """Deliberately wrong: the next category."""
    return CATEGORIES[(CATEGORIES.index(category) + 1) % len(CATEGORIES)]


@pytest.fixture(scope="module")
def bundled() -> CategoryClassifier:
    return CategoryClassifier.train(SHIPPED)


@pytest.fixture
async def registered(sessions: Sessions, bundled: CategoryClassifier) -> Sessions:
    async with sessions.begin() as session:
        await seed_routing(session)
        await staff.create_user(session, username="zhao", display_name="赵", password=PASSWORD, role="admin")
    assert await model_versions.ensure_registered(
        sessions, bundled, model_versions.artifact_bytes(bundled), decided_by="test"
    )
    return sessions


async def label_all(sessions: Sessions, rows: list[LabelledMessage], *, mislabel: bool) -> None:
    """File a case for each row and keep a staff correction (right, or deliberately wrong)."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "labeller")
        for row in rows:
            case = await file_case(
                session, identity, Report(description=row.text, location="A1区人民路", contact_phone="13812345678")
            )
            await session.flush()
            category = wrong(row.label) if mislabel else row.label
            await record_staff_label(session, Actor.system("bot"), case, category, LabelDecision.CORRECTION)


async def versions(sessions: Sessions) -> dict[str, str]:
    async with sessions() as session:
        return {version.id: version.status for version in await model_versions.list_versions(session)}


def test_the_held_back_slice_is_a_fixed_fifth_of_the_cases() -> None:
    chosen = [case_id for case_id in range(1, 1001) if held_back(case_id)]
    # The same cases in every process and every run (a salted hash would move them).
    assert chosen[:10] == [4, 7, 9, 10, 15, 22, 26, 31, 32, 35]
    assert 150 <= len(chosen) <= 250


async def test_the_bundled_model_is_the_first_version_and_registered_once(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    again = await model_versions.ensure_registered(
        registered, bundled, model_versions.artifact_bytes(bundled), decided_by="test"
    )
    assert not again
    assert await versions(registered) == {bundled.model_version: "current"}
    loaded = await model_versions.load_version(registered, bundled.model_version)
    assert loaded.predict(SHIPPED[0].text).category == bundled.predict(SHIPPED[0].text).category


async def test_the_gate_refuses_a_candidate_trained_on_wrong_staff_labels(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    await label_all(registered, LATER, mislabel=True)
    outcome = await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS)
    assert outcome is not None and not outcome.promoted, outcome
    assert "shipped folds" in outcome.reason
    assert outcome.figures["folds"]["accuracy"] < outcome.figures["current"]["folds"]["accuracy"]
    # Both versions are kept, with their figures; the bundled one is still served.
    assert await versions(registered) == {bundled.model_version: "current", outcome.candidate: "rejected"}
    async with registered() as session:
        rejected = await session.get(CategoryModelVersion, outcome.candidate)
        assert rejected is not None and rejected.staff_labels > 0 and rejected.figures["verdict"] == outcome.reason
        assert await session.scalar(select(AuditEntry.action).where(AuditEntry.target == outcome.candidate)) == (
            "model.reject"
        )
    # Nothing new since: retraining again trains nothing.
    assert await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS) is None


async def test_right_labels_are_promoted_and_every_process_follows_a_rollback(
    registered: Sessions, bundled: CategoryClassifier
) -> None:
    await label_all(registered, LATER, mislabel=False)
    outcome = await model_versions.retrain(registered, SHIPPED, n_splits=FOLDS)
    assert outcome is not None and outcome.promoted, outcome
    assert await versions(registered) == {bundled.model_version: "retired", outcome.candidate: "current"}

    # Two app processes' desks on one database, both serving the bundled model.
    none = cast(Any, None)
    desks = [Dispatcher(bundled, none, ()), Dispatcher(bundled, none, ())]
    followers = [model_versions.ModelFollower(registered, desk, interval_seconds=0) for desk in desks]
    assert [await follower.sync() for follower in followers] == [True, True]
    assert {desk.classifier.model_version for desk in desks} == {outcome.candidate}

    async with registered.begin() as session:
        admin = await session.scalar(select(StaffUser).where(StaffUser.username == "zhao"))
        assert admin is not None
        assert await model_versions.rollback(session, admin) == (outcome.candidate, bundled.model_version)
    assert [await follower.sync() for follower in followers] == [True, True]
    assert {desk.classifier.model_version for desk in desks} == {bundled.model_version}
    assert await versions(registered) == {bundled.model_version: "current", outcome.candidate: "rejected"}
    async with registered() as session:
        assert await session.scalar(select(AuditEntry.detail).where(AuditEntry.action == "model.rollback")) == (
            f"{outcome.candidate} → {bundled.model_version}"
        )
        # Nothing older to go back to.
        with pytest.raises(InvalidTransition):
            await model_versions.rollback(session, admin)


# --- the console page ----------------------------------------------------------


@pytest.fixture
async def console(registered: Sessions) -> AsyncIterator[Client]:
    async with registered.begin() as session:
        await staff.create_user(session, username="wang", display_name="王", password=PASSWORD, role="supervisor")
    app = web.Application(middlewares=[error_middleware])
    ModelVersionViews(**ConsoleBase(registered, build_templates(), secure_cookies=False).share()).add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def two_versions(sessions: Sessions, bundled: CategoryClassifier) -> str:
    """The bundled version retired, a promoted one current (written directly: training is tested above)."""
    newer = CategoryClassifier.train(SHIPPED[:-1])
    now = utcnow()
    async with sessions.begin() as session:
        first = await session.get(CategoryModelVersion, bundled.model_version)
        assert first is not None
        first.status = model_versions.RETIRED
        await session.flush()
        session.add(
            CategoryModelVersion(
                id=newer.model_version,
                status=model_versions.CURRENT,
                shipped_rows=len(SHIPPED) - 1,
                staff_labels=3,
                last_label_id=3,
                figures={
                    "staff": {"accuracy": 0.8125, "n": 16},
                    "folds": {"accuracy": 0.9012, "macro_f1": 0.8999},
                    "verdict": "not worse on the held-back staff labels nor on the shipped folds",
                },
                artifact=model_versions.artifact_bytes(newer),
                created_at=now,
                promoted_at=now,
                decided_by="retrain",
                decided_at=now,
            )
        )
    return newer.model_version


async def test_an_admin_sees_each_versions_figures_and_weekly_agreement_with_staff(
    registered: Sessions, bundled: CategoryClassifier, console: Client
) -> None:
    newer = await two_versions(registered, bundled)
    # Staff decisions the newer model answered: right twice, wrong once, in one China week.
    today = utcnow().astimezone(CHINA_TZ).date()
    last_week = today - timedelta(days=today.weekday() + 7)
    monday = datetime.combine(last_week, time(10, 0), tzinfo=CHINA_TZ)
    async with registered.begin() as session:
        identity = await resolve_identity(session, "web", "weekly")
        case = await file_case(
            session, identity, Report(description="路灯坏了", location="A1区人民路", contact_phone="13812345678")
        )
        await session.flush()
        for day, (model, decided) in enumerate(
            [("城乡建设", "城乡建设"), ("环境保护", "环境保护"), ("环境保护", "城乡建设")]
        ):
            session.add(
                StaffLabel(
                    case_id=case.id,
                    text="路灯坏了",
                    model_version=newer,
                    model_category=model,
                    model_confidence=0.5,
                    staff_category=decided,
                    decision="dispatch",
                    channel="console",
                    actor="wang",
                    created_at=monday + timedelta(days=day),
                )
            )
    await signed_in_as(registered, console, "zhao")
    page = await console.get("/console/admin/models")
    text = await page.text()
    assert page.status == 200
    assert newer in text and bundled.model_version in text
    assert "0.8125（16 条）" in text and "0.9012 / 0.8999" in text and "在用" in text and "已退役" in text
    assert last_week.isoformat() in text and "2 / 3" in text and "0.67" in text


async def test_an_admin_rolls_back_in_the_console_and_it_is_audited(
    registered: Sessions, bundled: CategoryClassifier, console: Client
) -> None:
    newer = await two_versions(registered, bundled)
    csrf = await signed_in_as(registered, console, "zhao")
    done = await console.post("/console/admin/models/rollback", data={"csrf": csrf}, allow_redirects=False)
    assert done.status == 303
    assert await versions(registered) == {bundled.model_version: "current", newer: "rejected"}
    async with registered() as session:
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "model.rollback"))
    assert entry is not None and entry.actor == "zhao"
    # Nothing older left: refused, and nothing changes.
    refused = await console.post("/console/admin/models/rollback", data={"csrf": csrf}, allow_redirects=False)
    assert refused.status == 409


async def test_a_supervisor_cannot_see_the_versions_or_roll_back(
    registered: Sessions, bundled: CategoryClassifier, console: Client
) -> None:
    newer = await two_versions(registered, bundled)
    csrf = await signed_in_as(registered, console, "wang")
    # The console answers a page someone may not reach as if it did not exist.
    assert (await console.get("/console/admin/models")).status == 404
    refused = await console.post("/console/admin/models/rollback", data={"csrf": csrf}, allow_redirects=False)
    assert refused.status == 404
    assert await versions(registered) == {bundled.model_version: "retired", newer: "current"}


# --- the weekly job --------------------------------------------------------------


async def test_the_weekly_retraining_runs_only_when_the_period_passed_and_labels_came(
    registered: Sessions, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    job = model_versions.RetrainJob(
        registered,
        period_seconds=7 * 86400,
        command=[sys.executable, "-c", f"open({str(ran)!r}, 'a').write('x')"],
    )
    assert await job.run_once() is None  # no staff labels yet
    await label_all(registered, LATER[:2], mislabel=False)
    assert not await job.due()  # the bundled version is minutes old
    assert await job.due(now=utcnow() + timedelta(days=7, seconds=1))
    async with registered.begin() as session:  # the version was registered a week ago
        version = (await model_versions.list_versions(session))[0]
        version.created_at = utcnow() - timedelta(days=8)
    assert await job.run_once() == 0
    assert ran.read_text() == "x"


async def test_the_retrain_command_registers_the_bundled_model_and_judges_a_candidate(
    sessions: Sessions, bundled: CategoryClassifier, tmp_path: Path
) -> None:
    data = tmp_path / "shipped.csv"
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([row.text, row.label] for row in SHIPPED)
    model = bundled.save(tmp_path / "bundled.joblib")
    async with sessions() as session:
        database = str(session.bind.url) if session.bind is not None else ""
    env = {**os.environ, "DATABASE_URL": database}
    command = [sys.executable, "-m", "crm_backend.dispatch", "retrain", "--data", str(data), "--model", str(model)]

    def run() -> dict[str, Any]:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return cast(dict[str, Any], json.loads(done.stdout))

    first = await asyncio.to_thread(run)
    assert first == {"candidate": None, "promoted": False, "reason": "no staff labels since the last version"}
    assert await versions(sessions) == {bundled.model_version: "current"}
    await label_all(sessions, LATER[:35], mislabel=True)
    second = await asyncio.to_thread(run)
    assert second["current"] == bundled.model_version and second["promoted"] is False
    assert await versions(sessions) == {bundled.model_version: "current", second["candidate"]: "rejected"}
