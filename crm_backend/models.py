"""The CRM's tables.

Citizens reach us through channel identities (a web chat session, a Telegram user, a
REST integrator's sender id); each identity belongs to one citizen. Every message in
and out is kept on a conversation. A reported problem is a `ServiceCase` whose status
history is the append-only `CaseEvent` log. `case` is an SQL keyword, so the table is
`service_case`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy import event as orm_event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import ColumnElement, operators

from crm_backend.crypto import active_key_ring

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the CRM uses."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always comes back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use crm_backend.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class EncryptedColumnQuery(TypeError):
    """A query compares, searches or sorts on an encrypted column in SQL: a programming error."""


class EncryptedText(TypeDecorator[str]):
    """Text encrypted at rest under the process's key ring (`crm_backend.crypto`), bound to its column.

    The database holds ``v1:<algorithm>:<key id>:<base64>``, never the text; the empty string
    stays empty (it says nothing about anyone, and keeps ``note != ''`` filters working). SQL
    cannot compare, search, group or order on these columns: equality search goes through a
    blind index column (`blind_index`), anything else through Python after a narrowing query.

    Args:
        place: ``table.column``, the associated data: a value moved to another column fails.
    """

    impl = Text
    cache_ok = True

    class Comparator(TypeDecorator.Comparator[str]):
        """Refuses comparing the column with a value in SQL (``== 'text'``, LIKE, IN ...): a
        random-nonce ciphertext would silently match nothing. Emptiness (``== ''``, ``!= ''``),
        NULL tests and comparisons between columns (which SQLAlchemy makes internally) pass."""

        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            values = [value for value in other if not isinstance(value, ColumnElement)]
            empty = len(values) == 1 and (values[0] is None or values[0] == "")
            if values and not (empty and op in (operators.eq, operators.ne, operators.is_, operators.is_not)):
                raise EncryptedColumnQuery(f"{self.expr} is encrypted at rest: search its blind index, or in Python")
            return super().operate(op, *other, **kwargs)

    comparator_factory = Comparator

    def __init__(self, place: str) -> None:
        super().__init__()
        self.place = place

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or value == "":
            return value
        return active_key_ring().encrypt(value, self.place)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None or value == "":
            return value
        return active_key_ring().decrypt(value, self.place)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value encrypted at rest as `EncryptedText` is (SQL NULL for None)."""

    impl = Text
    cache_ok = True
    comparator_factory = EncryptedText.Comparator

    def __init__(self, place: str) -> None:
        super().__init__()
        self.place = place

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return active_key_ring().encrypt(json.dumps(value), self.place)  # as SQLAlchemy's JSON writes it

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        if value is None:
            return None
        return json.loads(active_key_ring().decrypt(value, self.place))


def blind_index(value: str | None, purpose: str) -> str | None:
    """The keyed fingerprint equality search uses for an encrypted value (None for none or empty).

    Args:
        value: the normalised value (a phone number as `normalise_mobile` gives it).
        purpose: ``phone``, ``phone_last4`` or ``location``.
    """
    if not value:
        return None
    return active_key_ring().blind_index(value, purpose)


def phone_last4_index(phone: str | None) -> str | None:
    """The blind index of a phone number's last four digits (None when it has fewer)."""
    return blind_index(phone[-4:], PHONE_LAST4) if phone and len(phone) >= 4 else None


PHONE = "phone"
PHONE_LAST4 = "phone_last4"
LOCATION = "location"

# Words in a case description that say the citizen writes for a business (the 企业 segment).
# The description is encrypted, so whether it names one is worked out when it is written
# (`ServiceCase.names_business`) and the segment reads that flag's index.
BUSINESS_WORDS = ("企业", "公司", "个体户", "商户", "厂")


def names_business(description: str | None) -> bool:
    """Whether a case description says the citizen writes for a business."""
    return bool(description) and any(word in description for word in BUSINESS_WORDS)  # type: ignore[operator]


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Citizen(Base):
    """A resident, however many channels they use."""

    __tablename__ = "citizen"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(EncryptedText("citizen.phone"))
    phone_index: Mapped[str | None] = mapped_column(String(32), index=True)  # blind index of `phone`
    notices_enabled: Mapped[bool] = mapped_column(Boolean, default=True)  # "不要再通知我" turns it off
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When an erasure request was carried out (`crm_backend.services.privacy.forget_citizen`).
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    identities: Mapped[list[ChannelIdentity]] = relationship(back_populates="citizen", lazy="raise_on_sql")


# The channels a citizen reaches us through, as staff read them. ``board`` is a public message
# board's past messages imported as history (`crm_backend.importer`): nobody can be reached there.
HISTORY_CHANNEL = "board"
CHANNEL_LABELS = {"web": "网页", "telegram": "Telegram", "rest": "接口", HISTORY_CHANNEL: "留言板（历史导入）"}


class ChannelIdentity(Base):
    """One way of reaching a citizen: a channel and that channel's id for them."""

    __tablename__ = "channel_identity"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizen.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    citizen: Mapped[Citizen] = relationship(back_populates="identities", lazy="raise_on_sql")

    @property
    def sender_id(self) -> str:
        """The conversation id the dialogue engine knows this identity by."""
        return f"{self.channel}:{self.external_id}"


class Conversation(Base):
    """A continuous exchange between one channel identity and the service."""

    __tablename__ = "conversation"
    __table_args__ = (Index("ix_conversation_started_at", "started_at"),)  # the dashboard's period

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    handoff_status: Mapped[str] = mapped_column(String(16), default="bot")
    handoff_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    handoff_reason: Mapped[str | None] = mapped_column(String(32))
    assigned_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))  # whose inbox
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    identity: Mapped[ChannelIdentity] = relationship(lazy="raise_on_sql")


class Message(Base):
    """Every message in or out, as it was sent (truncated if huge)."""

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("conversation_id", "client_msg_id"),
        Index("ix_message_conversation_id_id", "conversation_id", "id"),
        Index("ix_message_created_at", "created_at"),  # the dashboard's messages per day
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    channel: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(3))  # "in" | "out"
    sender_kind: Mapped[str] = mapped_column(String(16))  # citizen | bot | staff | system
    sender_name: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(EncryptedText("message.text"), default="")
    original_length: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    buttons: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    # What came with a message besides text: {"kind": "photo", "file_id": ...} or
    # {"kind": "location", "latitude": ..., "longitude": ...} (Telegram).
    attachment: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON("message.attachment"))
    # A citizen's message the engine has not answered yet: set when it is logged, cleared in the
    # transaction that logs the engine's answer. Still set after an engine outage (or a crash):
    # the replay loop sends ``engine_input`` (the text or button payload the engine is given) again.
    engine_pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    engine_input: Mapped[str | None] = mapped_column(EncryptedText("message.engine_input"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ServiceCase(Base):
    """A problem a citizen reported, from intake to archive."""

    __tablename__ = "service_case"
    __table_args__ = (
        Index("ix_service_case_status_created_at", "status", "created_at"),
        # The console's case lists: 督办 first, then newest, overall and per department.
        Index("ix_service_case_supervised_id", "supervised", "id"),
        Index("ix_service_case_status_supervised_id", "status", "supervised", "id"),
        Index("ix_service_case_department_supervised_id", "department_id", "supervised", "id"),
        # The case list's 类型 filter.
        Index("ix_service_case_case_type_id", "case_type", "id"),
        # The dashboard: a period's cases, and 重复投诉 (same citizen, or same place and category).
        Index("ix_service_case_created_at", "created_at"),
        Index("ix_service_case_category_location_index_created_at", "category", "location_index", "created_at"),
        Index("ix_service_case_citizen_id_created_at", "citizen_id", "created_at"),
        Index("uq_service_case_filing_key", "filing_key", unique=True),
        # The 企业 segment: the few cases whose text names a business, by citizen (a partial index;
        # queries must spell the predicate as `segments._named_business` does for the planner to use it).
        Index(
            "ix_service_case_business_citizen_id",
            "citizen_id",
            sqlite_where=text("names_business = 1"),
            postgresql_where=text("names_business"),
        ),
        # Progress lookups, linking and "my cases" by the phone (or its last four digits).
        Index("ix_service_case_contact_phone_index", "contact_phone_index"),
        Index("ix_service_case_contact_phone_last4_index", "contact_phone_last4_index"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_number: Mapped[str] = mapped_column(String(20), unique=True)
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizen.id"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id"), index=True)
    description: Mapped[str] = mapped_column(EncryptedText("service_case.description"))
    location: Mapped[str] = mapped_column(EncryptedText("service_case.location"))
    district: Mapped[str | None] = mapped_column(String(32))
    contact_phone: Mapped[str] = mapped_column(EncryptedText("service_case.contact_phone"))
    # Blind indexes (`blind_index`) of the encrypted columns that are searched by equality, kept
    # in step by the attribute events below; and whether the description names a business.
    contact_phone_index: Mapped[str | None] = mapped_column(String(32))
    contact_phone_last4_index: Mapped[str | None] = mapped_column(String(32))
    location_index: Mapped[str | None] = mapped_column(String(32))
    names_business: Mapped[bool] = mapped_column(Boolean, default=False)
    category: Mapped[str | None] = mapped_column(String(32))
    # The 12345 type (咨询 求助 投诉 举报 建议 表扬); NULL for cases filed before types existed (未分类).
    case_type: Mapped[str | None] = mapped_column(String(8))
    department: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"), index=True)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("service_case.id"), index=True)
    supervised: Mapped[bool] = mapped_column(Boolean, default=False)  # 督办
    followup_asked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # 回访 question sent
    followup_reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # its one reminder sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # The engine's call that filed it (`intake.filing_key`): the same call made again files nothing.
    filing_key: Mapped[str | None] = mapped_column(String(64))
    # When its personal data was removed: kept past the retention period, or the citizen's erasure.
    pseudonymised_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[CaseEvent]] = relationship(back_populates="case", order_by="CaseEvent.id", lazy="raise_on_sql")


class CaseEvent(Base):
    """One entry of a case's append-only history: a status change or an update."""

    __tablename__ = "case_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16), default="status")  # status | note | reply | supervise | extension
    note: Mapped[str] = mapped_column(EncryptedText("case_event.note"), default="")
    actor: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    case: Mapped[ServiceCase] = relationship(back_populates="events", lazy="raise_on_sql")


class LookupAttempt(Base):
    """A proof attempt (progress query or link), kept to throttle guessing of case numbers and phone digits."""

    __tablename__ = "lookup_attempt"
    __table_args__ = (
        Index("ix_lookup_attempt_sender_created", "sender_key", "created_at"),
        Index("ix_lookup_attempt_case_created", "case_number", "created_at"),
        Index("ix_lookup_attempt_created_at", "created_at"),  # the hourly ceiling counts every failure
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sender_key: Mapped[str] = mapped_column(String(160))
    case_number: Mapped[str] = mapped_column(String(20))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CaseProofLock(Base):
    """A case number closed to digit proofs (its phone's last four) after too many failures.

    One row per number ever locked, keyed by the number as typed (a number no case has can be
    locked too); a lock ends at `locked_until` and the next one reuses the row.
    """

    __tablename__ = "case_proof_lock"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_number: Mapped[str] = mapped_column(String(20), unique=True)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime())


class RateEvent(Base):
    """One counted event (a new web chat session, a message) under a limit, kept while its window lasts."""

    __tablename__ = "rate_event"
    __table_args__ = (
        Index("ix_rate_event_rule_subject_created_at", "rule", "subject", "created_at"),
        Index("ix_rate_event_rule_created_at", "rule", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str] = mapped_column(String(32))  # the limit's name: web_session | message
    subject: Mapped[str] = mapped_column(String(200))  # what is counted: an address, a sender id
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Department(Base):
    """A body that handles cases: a district bureau or a city-level department."""

    __tablename__ = "department"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    district: Mapped[str | None] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class CategoryPolicy(Base):
    """Per first-level category: the reply deadline and the department when no rule matches."""

    __tablename__ = "category_policy"

    category: Mapped[str] = mapped_column(String(32), primary_key=True)
    deadline_working_days: Mapped[int] = mapped_column(Integer)
    default_department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))


class RoutingRule(Base):
    """Category × district → department."""

    __tablename__ = "routing_rule"
    __table_args__ = (UniqueConstraint("category", "district"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(String(32))
    district: Mapped[str] = mapped_column(String(32))
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))


class RoutingDecision(Base):
    """Why a case went where it went: the model's view, the rule that fired, the outcome."""

    __tablename__ = "routing_decision"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    category: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    suggestions: Mapped[list[str]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))
    district: Mapped[str | None] = mapped_column(String(32))
    queued: Mapped[bool] = mapped_column(Boolean)
    urgent: Mapped[bool] = mapped_column(Boolean)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StaffLabel(Base):
    """A category a person decided for a case: a labelled example the category model has not seen.

    Written by `crm_backend.services.staff_labels.record_staff_label` wherever a person states a
    case's category: 派单 from the manual queue, 改派, a correction, or a category chosen when the
    case was filed (staff drafting it in the console, a citizen's category button in the chat).
    ``text`` is what the model classified (the case's description, personal data: encrypted,
    erased with the case); the model's own answer is kept beside the person's.
    """

    __tablename__ = "staff_label"
    __table_args__ = (Index("ix_staff_label_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    text: Mapped[str] = mapped_column(EncryptedText("staff_label.text"))
    model_version: Mapped[str | None] = mapped_column(String(64))  # None: no routing decision to compare
    model_category: Mapped[str | None] = mapped_column(String(32))
    model_confidence: Mapped[float | None] = mapped_column(Float)
    staff_category: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))  # dispatch | reassign | correction | filing
    channel: Mapped[str] = mapped_column(String(16))  # console | api | bot
    actor: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CategoryModelVersion(Base):
    """One trained category model, kept with what it was trained on, its figures and its artifact.

    ``id`` is the classifier's ``model_version``. ``status``: ``candidate`` (being judged),
    ``current`` (the one every app process serves; exactly one), ``retired`` (served before),
    ``rejected`` (refused by the retraining gate). ``artifact`` is the model file itself, so every
    app process on every machine loads the current model from the database.
    """

    __tablename__ = "category_model_version"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    shipped_rows: Mapped[int] = mapped_column(Integer)
    staff_labels: Mapped[int] = mapped_column(Integer)  # how many staff labels it was trained on
    last_label_id: Mapped[int | None] = mapped_column(Integer)  # the newest of them
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str] = mapped_column(String(64), default="")  # who promoted, rejected or rolled back
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StaffUser(Base):
    """A member of staff who signs in to the console."""

    __tablename__ = "staff_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # agent | supervisor | admin | auditor
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Two-factor sign-in (TOTP, RFC 6238): the base32 secret once enrolment is confirmed (or
    # while it is being confirmed), and the last time step a code was accepted for, so a code
    # is accepted once.
    totp_secret: Mapped[str | None] = mapped_column(EncryptedText("staff_user.totp_secret"))
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)


class StaffRecoveryCode(Base):
    """A one-time code that stands in for a TOTP code (the phone is lost); only its Argon2 hash is kept."""

    __tablename__ = "staff_recovery_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(200))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SecuritySetting(Base):
    """A security switch an admin sets in the console (e.g. two-factor sign-in for everyone)."""

    __tablename__ = "security_setting"

    key: Mapped[str] = mapped_column(String(48), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StaffSession(Base):
    """A signed-in browser: the cookie holds the token, the table only its hash."""

    __tablename__ = "staff_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # What the browser must still do before it may use the console: None (nothing, signed in),
    # "totp" (give a code) or "enrol" (set up two-factor sign-in). See `staff.SessionStep`.
    pending_step: Mapped[str | None] = mapped_column(String(16))


class LoginFailure(Base):
    """A failed sign-in, counted to throttle password guessing."""

    __tablename__ = "login_failure"
    __table_args__ = (
        Index("ix_login_failure_username_created_at", "username", "created_at"),
        Index("ix_login_failure_address_created_at", "address", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """Who did or saw what, when: sign-ins, views of personal data, every change.

    Append-only (database triggers refuse UPDATE and DELETE) and hash-chained: ``row_hash`` is
    the SHA-256 of ``prev_hash`` and the row's own fields, ``prev_hash`` the row before's
    ``row_hash`` (`crm_backend.audit_chain`). Ids are given by the chain, in order, not by the
    database.
    """

    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(48))
    target: Mapped[str] = mapped_column(String(80), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64), default="")
    row_hash: Mapped[str] = mapped_column(String(64), default="")


class AuditChainHead(Base):
    """The audit chain's newest link, one row (id 1): appends lock it, so writers form one chain."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


class ApiClient(Base):
    """An integration that calls /api/v1 with its own key; the table keeps only the key's SHA-256.

    The key is shown once, when the client is made. ``key_prefix`` (the key's first, non-secret
    part) finds the row and tells staff which key is which; revoking a client refuses its key at
    once, and the row stays so the audit log's ``api:<name>`` keeps meaning someone.
    """

    __tablename__ = "api_client"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    scope: Mapped[str] = mapped_column(String(8))  # read | write
    key_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))  # a staff username, or "cli"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Open311Request(Base):
    """A case filed through Open311 GeoReport v2 (``POST /open311/v2/requests``).

    The coordinates and the address id are what the partner gave and the standard publishes;
    ``address_given`` says the case's location is an address the partner gave (published too),
    not a citizen's words. ``contact`` holds the reporter's optional details (email, first and
    last name, device and account ids): personal data, encrypted, never published.
    """

    __tablename__ = "open311_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), unique=True)
    api_client_id: Mapped[int] = mapped_column(ForeignKey("api_client.id"), index=True)
    service_code: Mapped[str] = mapped_column(String(64))
    lat: Mapped[float | None] = mapped_column(Float)
    long: Mapped[float | None] = mapped_column(Float)
    address_id: Mapped[str | None] = mapped_column(String(64))
    address_given: Mapped[bool] = mapped_column(Boolean, default=False)
    contact: Mapped[dict[str, str] | None] = mapped_column(EncryptedJSON("open311_request.contact"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ExtensionRequest(Base):
    """延期: a department asks for more working days; a supervisor approves or refuses."""

    __tablename__ = "extension_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    working_days: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(EncryptedText("extension_request.reason"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | refused
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"))
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TelegramOutbox(Base):
    """A message to a Telegram chat that could not be delivered at once, retried until it goes or gives up."""

    __tablename__ = "telegram_outbox"
    __table_args__ = (
        Index("ix_telegram_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_telegram_outbox_chat_id_status", "chat_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(EncryptedText("telegram_outbox.text"))
    # Inline keyboard rows as sent: [[{"text": ..., "callback_data": ...}], ...]
    keyboard: Mapped[list[list[dict[str, str]]] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TelegramUpdate(Base):
    """An update as Telegram sent it, stored before the webhook answers; processed from here, once."""

    __tablename__ = "telegram_update"

    id: Mapped[int] = mapped_column(primary_key=True)
    update_id: Mapped[int] = mapped_column(BigInteger, unique=True)  # Telegram's; a resend repeats it
    chat_id: Mapped[str | None] = mapped_column(String(32))  # one chat's updates are processed in order
    payload: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON("telegram_update.payload"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # processing runs that failed or finished
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class TelegramCallbackPayload(Base):
    """A button payload too long for Telegram's 64-byte callback_data, kept under a short token."""

    __tablename__ = "telegram_callback_payload"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkCode(Base):
    """A one-time code shown on one channel and sent from another to link the two."""

    __tablename__ = "link_code"
    __table_args__ = (Index("ix_link_code_code_expires_at", "code", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(6))
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizen.id"))
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    used_by_identity_id: Mapped[int | None] = mapped_column(ForeignKey("channel_identity.id"))


class PrivacyRequest(Base):
    """A citizen's request about their personal data (个人信息保护法 arts. 45, 47): a copy or erasure.

    Filed from the chat; staff see it in the console, and an admin carries it out (or refuses
    it, saying why). ``identity_id`` is the channel it came from, where the answer goes.
    """

    __tablename__ = "privacy_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizen.id"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"))
    kind: Mapped[str] = mapped_column(String(8))  # copy | erasure
    status: Mapped[str] = mapped_column(String(8), default="pending")  # pending | done | refused
    note: Mapped[str] = mapped_column(Text, default="")  # staff's reason when refused
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    handled_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))


class Satisfaction(Base):
    """A citizen's 回访 answer about a handled case: 1-5 and an optional comment."""

    __tablename__ = "satisfaction"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(EncryptedText("satisfaction.comment"), default="")
    channel: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeEntry(Base):
    """A knowledge-base entry: how to get one government service done, as the bot answers it.

    `questions` are the ways citizens ask for it (what retrieval matches against), `follow_ups`
    short answers to follow-up questions keyed by aspect (材料, 地点, 时间, 费用, 时限, 线上).
    Every saved change bumps `version` and keeps the full entry in `KnowledgeEntryVersion`.
    """

    __tablename__ = "knowledge_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(32))
    department: Mapped[str] = mapped_column(String(100))
    questions: Mapped[list[str]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    follow_ups: Mapped[dict[str, str]] = mapped_column(JSON)
    last_reviewed: Mapped[date] = mapped_column(Date)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))


class KnowledgeEntryVersion(Base):
    """One saved state of a knowledge-base entry: who saved it, when, and which fields changed."""

    __tablename__ = "knowledge_entry_version"
    __table_args__ = (UniqueConstraint("entry_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("knowledge_entry.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    changed_fields: Mapped[list[str]] = mapped_column(JSON)
    changed_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    changed_by: Mapped[str] = mapped_column(String(64))  # display name then, or "数据文件" for the seed
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeFeedback(Base):
    """A citizen's answer to "这个回答有帮助吗？" about one entry, kept for staff to review."""

    __tablename__ = "knowledge_feedback"
    __table_args__ = (Index("ix_knowledge_feedback_entry_id_helpful", "entry_id", "helpful"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("knowledge_entry.id"))
    helpful: Mapped[bool] = mapped_column(Boolean)
    question: Mapped[str] = mapped_column(EncryptedText("knowledge_feedback.question"), default="")
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeMiss(Base):
    """A question the knowledge base had no entry for, kept so staff can see what to add."""

    __tablename__ = "knowledge_miss"
    __table_args__ = (Index("ix_knowledge_miss_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    question: Mapped[str] = mapped_column(EncryptedText("knowledge_miss.question"))
    nearest_entry_id: Mapped[int | None] = mapped_column(ForeignKey("knowledge_entry.id"))
    evidence: Mapped[float] = mapped_column(Float, default=0.0)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReplyScore(Base):
    """答复质量: the score of one staff reply or 办结 result (a `CaseEvent`), kept for averages.

    Written with the reply (``crm_backend.services.reply_scores``); ``department_id`` is the
    case's department when the reply was scored, so a department's average is one indexed
    aggregate over (department, time). ``reasons`` says why, one short line per dimension.
    """

    __tablename__ = "reply_score"
    __table_args__ = (
        Index("ix_reply_score_department_id_replied_at", "department_id", "replied_at"),
        Index("ix_reply_score_replied_at", "replied_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("case_event.id"), unique=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))
    kind: Mapped[str] = mapped_column(String(8))  # reply | result (the 办结 note)
    relevance: Mapped[int] = mapped_column(Integer)
    completeness: Mapped[int] = mapped_column(Integer)
    interpretability: Mapped[int] = mapped_column(Integer)
    timeliness: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    scorer_version: Mapped[str] = mapped_column(String(16))
    replied_at: Mapped[datetime] = mapped_column(UTCDateTime())
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    event: Mapped[CaseEvent] = relationship(lazy="raise_on_sql")


class HotIssueDecision(Base):
    """A supervisor's correction of the hot-issue grouping, kept for every recomputation.

    ``merge``: the issues holding messages ``message_key`` and ``other_key`` are one.
    ``unrelated``: message ``message_key`` belongs to no issue. Messages are named by their
    keys (a case number, or a message-board msg_id).
    """

    __tablename__ = "hot_issue_decision"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # merge | unrelated
    message_key: Mapped[str] = mapped_column(String(64))
    other_key: Mapped[str | None] = mapped_column(String(64))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HotIssueSnapshot(Base):
    """A computed hot-issue ranking for one window of China dates, cached for the dashboard.

    ``issues`` holds the top issues as `crm_backend.hotissues.core.HotIssue.to_json` gives
    them, with every message behind each; decisions made since are applied when it is read.
    """

    __tablename__ = "hot_issue_snapshot"
    __table_args__ = (Index("ix_hot_issue_snapshot_since_until_id", "since", "until", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    since: Mapped[date] = mapped_column(Date)
    until: Mapped[date] = mapped_column(Date)
    message_count: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)  # how long the computation took
    issues: Mapped[list[dict[str, Any]]] = mapped_column(EncryptedJSON("hot_issue_snapshot.issues"))
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HotIssueMember(Base):
    """A case in an issue of a stored hot-issue ranking, written with its `HotIssueSnapshot`.

    The snapshot's JSON names every message behind each issue; this table holds the same
    membership as rows, so "the citizens of a hot issue" (the 热点问题相关 segment, the
    citizen page) is a join on indexed columns instead of a JSON scan, which is not portable SQL.
    """

    __tablename__ = "hot_issue_member"

    snapshot_id: Mapped[int] = mapped_column(ForeignKey("hot_issue_snapshot.id"), primary_key=True)
    case_number: Mapped[str] = mapped_column(String(64), primary_key=True)  # the message's key
    issue_id: Mapped[str] = mapped_column(String(64))  # the key of the issue's earliest message


class ImportedMessage(Base):
    """A message of a public message board imported as a historical case (``import-messages``).

    One row per board message, keyed by the board (`source`, also its citizens' channel name)
    and the board's own message number, so importing a file twice adds nothing. Keeps what the
    case has no column for: the message's title, and the support other residents gave it
    (likes and dislikes; None where the file had none), which hot issues count.
    """

    __tablename__ = "imported_message"
    __table_args__ = (UniqueConstraint("source", "msg_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    msg_id: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[int] = mapped_column(ForeignKey("service_case.id"), unique=True)
    title: Mapped[str] = mapped_column(Text, default="")
    likes: Mapped[int | None] = mapped_column(Integer)
    dislikes: Mapped[int | None] = mapped_column(Integer)
    source_file: Mapped[str] = mapped_column(String(200))  # the file's name, for the record
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# The blind indexes follow the encrypted values they index whenever the ORM sets one (a bulk
# ``update()`` of these columns must set the index columns too).


@orm_event.listens_for(Citizen.phone, "set")
def _citizen_phone_set(target: Citizen, value: str | None, _old: Any, _initiator: Any) -> None:
    target.phone_index = blind_index(value, PHONE)


@orm_event.listens_for(ServiceCase.contact_phone, "set")
def _case_phone_set(target: ServiceCase, value: str | None, _old: Any, _initiator: Any) -> None:
    target.contact_phone_index = blind_index(value, PHONE)
    target.contact_phone_last4_index = phone_last4_index(value)


@orm_event.listens_for(ServiceCase.location, "set")
def _case_location_set(target: ServiceCase, value: str | None, _old: Any, _initiator: Any) -> None:
    target.location_index = blind_index(value, LOCATION)


@orm_event.listens_for(ServiceCase.description, "set")
def _case_description_set(target: ServiceCase, value: str | None, _old: Any, _initiator: Any) -> None:
    target.names_business = names_business(value)
