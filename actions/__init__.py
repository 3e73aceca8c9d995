"""Custom actions the dialogue engine calls. Thin: each delegates to `crm_backend` services.

The app builds them with their collaborators (`build_actions`) and mounts them on its
action endpoint; nothing here connects to anything at import.
"""

from __future__ import annotations

from rasa_sdk import Action
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.account import ActionLinkAccount, ActionListMyCases, ActionSetNotices
from actions.common import ProofWatcher, StatusWords
from actions.dispatch import (
    ActionAskCaseTypeChoice,
    ActionAskCategoryChoice,
    ActionAskDistrict,
    ActionAskReportConfirmed,
    ActionSubmitReport,
)
from actions.followup import ActionAskFollowup, ActionRecordRating, ValidateFollowupForm
from actions.handoff import ActionFallback, ActionHandoff, ActionRejectAnswer
from actions.knowledge import ActionAcceptAnswer, ActionAnswerQuestion, KnowledgeAnswers
from actions.privacy import ActionMyPersonalData, ActionRequestPrivacy
from actions.progress import ActionAskCaseNumber, ActionCheckProgress, ActionStartProgress, ValidateProgressForm
from actions.report import ActionCancelRequest, ActionStartReport, ValidateReportForm
from crm_backend.dispatch.service import Dispatcher
from crm_backend.duty import DutyHours
from crm_backend.services import privacy
from crm_backend.services.knowledge import KnowledgeBase
from crm_backend.settings import LimitSettings, RetentionSettings


def build_actions(
    sessions: async_sessionmaker[AsyncSession],
    desk: Dispatcher,
    knowledge: KnowledgeBase,
    proofs: ProofWatcher,
    status_words: StatusWords,
    *,
    daily_case_limit: int = LimitSettings().cases_per_citizen_per_day,
    retention: RetentionSettings | None = None,
) -> list[Action]:
    """Every custom action, wired to the CRM database, the dispatch desk, the knowledge base,
    the watcher of failed proofs (case digits, link codes) and the citizen's wording of statuses.

    Args:
        daily_case_limit: cases a citizen may file per day through the assistant (0: no limit).
        retention: the retention periods 「我的个人信息」 states (the defaults if None).

    Raises:
        InvalidDutyHours: `STAFF_DUTY_HOURS` is set to something unreadable.
    """
    hours = DutyHours.from_env()
    answers = KnowledgeAnswers(knowledge)
    return [
        ActionStartReport(sessions, daily_case_limit=daily_case_limit, desk=desk),
        ValidateReportForm(desk),
        ActionAskDistrict(desk),
        ActionAskCategoryChoice(),
        ActionAskCaseTypeChoice(),
        ActionAskReportConfirmed(sessions, desk),
        ActionSubmitReport(sessions, desk, daily_case_limit=daily_case_limit),
        ActionCancelRequest(),
        ActionStartProgress(),
        ValidateProgressForm(sessions),
        ActionAskCaseNumber(sessions),
        ActionCheckProgress(sessions, proofs, status_words),
        ActionHandoff(sessions, hours),
        ActionFallback(sessions, hours, answers=answers),
        ActionRejectAnswer(sessions, hours),
        ActionListMyCases(sessions, status_words),
        ActionLinkAccount(sessions, proofs),
        ActionSetNotices(sessions),
        ActionMyPersonalData(sessions, retention or RetentionSettings()),
        ActionRequestPrivacy(sessions, privacy.ERASURE),
        ActionRequestPrivacy(sessions, privacy.COPY),
        ActionAskFollowup(),
        ValidateFollowupForm(),
        ActionRecordRating(sessions),
        ActionAnswerQuestion(answers),
        ActionAcceptAnswer(sessions),
    ]
