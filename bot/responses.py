"""The few sentences the app says itself (engine busy, empty message), read from domain.yml.

All citizen-facing Chinese lives in the domain; the app borrows from it rather than
keeping its own copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crm_backend.lifecycle import CaseStatus

STATUS_RESPONSES = {status: f"utter_status_{status.value}" for status in CaseStatus}
APP_RESPONSES = (
    "utter_welcome",
    "utter_system_busy",
    "utter_empty_message",
    "utter_unsupported_content",
    "utter_message_truncated",
    "utter_handoff_on_duty",
    "utter_handoff_off_duty",
    "utter_handoff_released",
    "utter_handoff_closed",
    "utter_attachment_received",
    "utter_telegram_help",
    "utter_case_notice",
    "utter_case_proof_alert",
    "utter_too_many_messages",
    "utter_too_many_sessions",
    "utter_replay_intro",
    "utter_case_resolved_notice",
    "utter_linked_case_resolved_notice",
    "utter_privacy_notice",
    "utter_case_created_routed",  # Open311's service_notice for a request filed and routed
    "utter_case_created_queued",  # … and for one waiting in the manual queue
    *STATUS_RESPONSES.values(),
)


class Responses:
    """Response texts (and their buttons) by name."""

    def __init__(self, texts: dict[str, str], buttons: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self._texts = texts
        self._buttons = buttons or {}

    @classmethod
    def load(cls, domain_path: Path) -> "Responses":
        """Read the responses the app needs; fail at start if one is missing."""
        domain = yaml.safe_load(domain_path.read_text(encoding="utf-8"))
        responses = domain.get("responses", {})
        texts, buttons = {}, {}
        for name in APP_RESPONSES:
            variants = responses.get(name)
            if not variants:
                raise KeyError(f"{domain_path} has no response {name}")
            texts[name] = variants[0]["text"]
            if variants[0].get("buttons"):
                buttons[name] = [dict(button) for button in variants[0]["buttons"]]
        return cls(texts, buttons)

    def text(self, name: str) -> str:
        """The first variant of a response."""
        return self._texts[name]

    def buttons(self, name: str) -> list[dict[str, Any]]:
        """The buttons of a response's first variant (none for most)."""
        return [dict(button) for button in self._buttons.get(name, [])]

    def status(self, status: CaseStatus) -> str:
        """What a status means to the citizen (「正在重新安排负责部门」 for 退回), from the domain."""
        return self._texts[STATUS_RESPONSES[status]]
