"""Custom actions the dialogue engine calls. Thin: each delegates to `crm_backend` services.

The app builds them with their collaborators (`build_actions`) and mounts them on its
action endpoint; nothing here connects to anything at import.
"""

from __future__ import annotations

from rasa_sdk import Action
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.dispatch import ActionAskCategoryChoice, ActionAskDistrict, ActionAskReportConfirmed, ActionSubmitReport
from actions.handoff import ActionHandoff
from actions.progress import ActionAskCaseNumber, ActionCheckProgress, ActionStartProgress, ValidateProgressForm
from actions.report import ActionCancelRequest, ActionStartReport, ValidateReportForm
from crm_backend.dispatch.service import Dispatcher


def build_actions(sessions: async_sessionmaker[AsyncSession], desk: Dispatcher) -> list[Action]:
    """Every custom action, wired to the CRM database and the dispatch desk."""
    return [
        ActionStartReport(),
        ValidateReportForm(desk),
        ActionAskDistrict(desk),
        ActionAskCategoryChoice(),
        ActionAskReportConfirmed(sessions, desk),
        ActionSubmitReport(sessions, desk),
        ActionCancelRequest(),
        ActionStartProgress(),
        ValidateProgressForm(sessions),
        ActionAskCaseNumber(sessions),
        ActionCheckProgress(sessions),
        ActionHandoff(sessions),
    ]
