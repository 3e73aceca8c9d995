"""A hand-made set of cases for the dashboard's tests, whose figures are worked out by hand.

The period is 2026-09-28 .. 2026-10-11 (China time); "now" is Monday 2026-10-12 10:00. See
tests/unit/test_dashboard_kpi.py for the cases and their expected figures.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.analytics import kpi
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.models import (
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    Department,
    ExtensionRequest,
    ImportedMessage,
    KnowledgeEntry,
    KnowledgeFeedback,
    KnowledgeMiss,
    Message,
    Satisfaction,
    ServiceCase,
    StaffUser,
)

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 10, 12, 10, 0, tzinfo=CHINA_TZ).astimezone(UTC)
PERIOD = kpi.Filters("custom", date(2026, 9, 28), date(2026, 10, 11))


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=CHINA_TZ)


class World:
    """Ids of the hand-made rows."""

    housing: int
    transport: int
    supervisor: StaffUser
    agent: StaffUser


async def build_world(sessions: Sessions) -> World:
    """Write the hand-made departments, staff, citizens, conversations and cases."""
    w = World()
    async with sessions.begin() as session:
        housing = Department(code="D-housing", name="住建局", district="A1区")
        transport = Department(code="D-transport", name="交通局", district="A2区")
        session.add_all([housing, transport])
        await session.flush()
        w.housing, w.transport = housing.id, transport.id
        w.supervisor = StaffUser(username="wang", display_name="王", password_hash="x", role="supervisor")
        w.agent = StaffUser(username="li", display_name="李", password_hash="x", role="agent", department_id=housing.id)
        session.add_all([w.supervisor, w.agent])
        citizens = [Citizen() for _ in range(3)]
        session.add_all(citizens)
        await session.flush()
        web1 = ChannelIdentity(channel="web", external_id="w1", citizen_id=citizens[0].id)
        tg2 = ChannelIdentity(channel="telegram", external_id="t2", citizen_id=citizens[1].id)
        web3 = ChannelIdentity(channel="web", external_id="w3", citizen_id=citizens[2].id)
        session.add_all([web1, tg2, web3])
        await session.flush()

        conv_settled = Conversation(identity_id=web1.id, channel="web", started_at=at(10, 2, 9))
        conv_handoff = Conversation(
            identity_id=tg2.id,
            channel="telegram",
            started_at=at(10, 3, 9),
            handoff_status="waiting",
            handoff_requested_at=at(10, 3, 9, 5),
            handoff_reason="fallback",
        )
        conv_case = Conversation(identity_id=web1.id, channel="web", started_at=at(9, 30, 8))
        session.add_all([conv_settled, conv_handoff, conv_case])
        await session.flush()
        for minute in (1, 2):
            session.add(
                Message(
                    conversation_id=conv_settled.id,
                    channel="web",
                    direction="in",
                    sender_kind="citizen",
                    text="问",
                    created_at=at(10, 2, 9, minute),
                )
            )
        entry = KnowledgeEntry(
            slug="s",
            title="t",
            category="c",
            department="d",
            questions=["q"],
            answer="a",
            follow_ups={},
            last_reviewed=date(2026, 1, 1),
        )
        session.add(entry)
        await session.flush()
        for conversation in (conv_settled, conv_case):
            session.add(
                KnowledgeFeedback(
                    entry_id=entry.id, helpful=True, conversation_id=conversation.id, created_at=at(10, 2, 10)
                )
            )
        for question in ("公积金怎么提取", "公积金怎么提取", "护照去哪办"):
            session.add(KnowledgeMiss(question=question, conversation_id=conv_settled.id, created_at=at(10, 2, 9)))

        def new_case(
            number: str, identity: ChannelIdentity, department: Department | None, **fields: object
        ) -> ServiceCase:
            values: dict[str, object] = {
                "case_number": number,
                "citizen_id": identity.citizen_id,
                "identity_id": identity.id,
                "description": "问题",
                "location": "人民路 1 号",
                "contact_phone": "13800000000",
                "department_id": department.id if department else None,
                "department": department.name if department else None,
            }
            values.update(fields)
            return ServiceCase(**values)

        a = new_case(
            "A", web1, housing, category="城乡建设", district="A1区", status="reviewed",
            created_at=at(9, 30, 9), due_at=at(10, 9, 18), conversation_id=conv_case.id,
        )  # fmt: skip
        b = new_case(
            "B", web1, housing, category="城乡建设", district="A1区", status="accepted",
            created_at=at(10, 9, 9), due_at=at(10, 10, 18),
        )  # fmt: skip
        c = new_case(
            "C", tg2, transport, category="交通运输", district="A2区", status="dispatched",
            created_at=at(10, 1, 10), due_at=at(10, 20, 18), location="中山路",
        )  # fmt: skip
        d = new_case(
            "D", tg2, transport, category="交通运输", district="A2区", status="in_progress",
            created_at=at(10, 5, 10), due_at=at(10, 20, 18), location="解放路",
        )  # fmt: skip
        e = new_case("E", web3, None, status="received", created_at=at(10, 11, 9), location="滨河路")
        f = new_case(
            "F", tg2, transport, category="交通运输", district="A2区", status="archived",
            created_at=at(9, 20, 9), location="和平街",
        )  # fmt: skip
        session.add_all([a, b, c, d, e, f])
        await session.flush()
        c.duplicate_of_id = a.id

        def moves(case: ServiceCase, *steps: tuple[str | None, str, datetime, int | None]) -> None:
            for source, target, moment, actor_id in steps:
                session.add(
                    CaseEvent(
                        case_id=case.id, from_status=source, to_status=target, actor="x", actor_id=actor_id,
                        created_at=moment,
                    )
                )  # fmt: skip

        sup = w.supervisor.id
        moves(
            a,
            (None, "received", at(9, 30, 9), None),
            ("received", "dispatched", at(9, 30, 10), sup),
            ("dispatched", "accepted", at(10, 8, 9), None),
            ("accepted", "in_progress", at(10, 8, 10), None),
            ("in_progress", "resolved", at(10, 9, 9), None),
            ("resolved", "reviewed", at(10, 10, 9), None),
        )
        moves(
            b,
            (None, "received", at(10, 9, 9), None),
            ("received", "dispatched", at(10, 9, 9, 30), None),
            ("dispatched", "dispatched", at(10, 9, 10), sup),
            ("dispatched", "accepted", at(10, 12, 9), None),
        )
        moves(c, (None, "received", at(10, 1, 10), None), ("received", "dispatched", at(10, 1, 11), None))
        moves(
            d,
            (None, "received", at(10, 5, 10), None),
            ("received", "dispatched", at(10, 5, 12), None),
            ("dispatched", "accepted", at(10, 5, 13), None),
            ("accepted", "in_progress", at(10, 5, 14), None),
            ("in_progress", "resolved", at(10, 6, 13), None),
            ("resolved", "in_progress", at(10, 6, 15), None),
        )
        moves(e, (None, "received", at(10, 11, 9), None))
        session.add(Satisfaction(case_id=a.id, rating=5, channel="web", created_at=at(10, 10, 9)))
        session.add(Satisfaction(case_id=d.id, rating=1, channel="telegram", created_at=at(10, 6, 14)))
        session.add(
            ExtensionRequest(
                case_id=b.id, working_days=3, reason="r", status="approved", requested_by_id=w.agent.id,
                created_at=at(10, 10, 9),
            )
        )  # fmt: skip
    return w


async def add_history(sessions: Sessions, world: World) -> None:
    """Three cases imported from the message board (channel ``board``), as `import-messages` files them.

    - G 交通局 交通运输 A2区: posted 10-02 09:00 and dispatched at once; the board's reply came
      10-08 10:00, so 签收, 办理 and 办结 are all recorded then; due 10-16: 办结 on time.
    - H 交通局: posted 10-03 09:00, dispatched, never answered on the board; due 10-09, so past it.
    - Q no department: posted 10-04 09:00, left where an unsure classification goes (已受理).
    """
    async with sessions.begin() as session:
        citizen = Citizen()
        session.add(citizen)
        await session.flush()
        board = ChannelIdentity(channel="board", external_id="u-1", citizen_id=citizen.id)
        session.add(board)
        transport = await session.get(Department, world.transport)
        assert transport is not None
        await session.flush()

        def board_case(number: str, **fields: object) -> ServiceCase:
            values: dict[str, object] = {"case_number": number, "citizen_id": citizen.id, "identity_id": board.id}
            values.update(description="留言", location="", contact_phone="", **fields)
            return ServiceCase(**values)

        routed = {
            "category": "交通运输",
            "district": "A2区",
            "department_id": transport.id,
            "department": transport.name,
        }
        cases = {
            "G": board_case("G", **routed, status="resolved", created_at=at(10, 2, 9), due_at=at(10, 16, 18)),
            "H": board_case("H", **routed, status="dispatched", created_at=at(10, 3, 9), due_at=at(10, 9, 18)),
            "Q": board_case("Q", status="received", created_at=at(10, 4, 9)),
        }
        session.add_all(cases.values())
        await session.flush()
        posted, replied = at(10, 2, 9), at(10, 8, 10)
        steps = {
            "G": [
                (None, "received", posted),
                ("received", "dispatched", posted),
                ("dispatched", "accepted", replied),
                ("accepted", "in_progress", replied),
                ("in_progress", "resolved", replied),
            ],
            "H": [(None, "received", at(10, 3, 9)), ("received", "dispatched", at(10, 3, 9))],
            "Q": [(None, "received", at(10, 4, 9))],
        }
        for number, case in cases.items():
            for source, target, moment in steps[number]:
                session.add(
                    CaseEvent(
                        case_id=case.id, from_status=source, to_status=target, actor="历史导入", created_at=moment
                    )
                )
            session.add(ImportedMessage(source="board", msg_id=number, case_id=case.id, source_file="board.csv"))
