"""The few sentences the app says itself (engine busy, empty message), read from domain.yml.

All citizen-facing Chinese lives in the domain; the app borrows from it rather than
keeping its own copies.
"""

from __future__ import annotations

from pathlib import Path

import yaml

APP_RESPONSES = (
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
)


class Responses:
    """Response texts by name."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts

    @classmethod
    def load(cls, domain_path: Path) -> "Responses":
        """Read the responses the app needs; fail at start if one is missing."""
        domain = yaml.safe_load(domain_path.read_text(encoding="utf-8"))
        responses = domain.get("responses", {})
        texts = {}
        for name in APP_RESPONSES:
            variants = responses.get(name)
            if not variants:
                raise KeyError(f"{domain_path} has no response {name}")
            texts[name] = variants[0]["text"]
        return cls(texts)

    def text(self, name: str) -> str:
        """The first variant of a response."""
        return self._texts[name]
