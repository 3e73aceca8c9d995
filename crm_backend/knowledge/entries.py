"""Knowledge-base entries as data: the fields, their checks, and the data file they start from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from crm_backend.knowledge.facts import CITY_FILE_NAME, FACTS, unknown_facts

DATA_FILE = Path(__file__).resolve().parent / "data" / "entries.yml"

# The aspects a follow-up question can ask about, in the order the console shows them.
ASPECTS: tuple[str, ...] = ("材料", "条件", "地点", "时间", "费用", "时限", "线上")
SLUG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_TITLE = 100
MAX_DEPARTMENT = 100
MAX_CATEGORY = 32
MAX_QUESTION = 200
MAX_ANSWER = 4000
MIN_QUESTIONS = 1
MAX_QUESTIONS = 50


class InvalidEntry(ValueError):
    """An entry that cannot be stored; `problems` says what is wrong, in Chinese for the console."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class EntryData:
    """The editable fields of an entry (a version's snapshot is exactly this, plus `active`)."""

    slug: str
    title: str
    category: str
    department: str
    questions: tuple[str, ...]
    answer: str
    follow_ups: Mapping[str, str] = field(default_factory=dict)
    last_reviewed: date = field(default_factory=date.today)
    active: bool = True

    def problems(self) -> list[str]:
        """What stops this entry from being stored (empty when it is fine)."""
        problems = []
        if not self.slug or not set(self.slug) <= SLUG_CHARS or len(self.slug) > 80:
            problems.append("编号只能由小写字母、数字和连字符组成（不超过80个字符）")
        for label, value, limit in (
            ("标题", self.title, MAX_TITLE),
            ("类别", self.category, MAX_CATEGORY),
            ("承办部门", self.department, MAX_DEPARTMENT),
            ("答案", self.answer, MAX_ANSWER),
        ):
            if not value.strip():
                problems.append(f"{label}不能为空")
            elif len(value) > limit:
                problems.append(f"{label}不能超过{limit}个字符")
        if not MIN_QUESTIONS <= len(self.questions) <= MAX_QUESTIONS:
            problems.append(f"问法需要{MIN_QUESTIONS}到{MAX_QUESTIONS}条")
        if any(len(question) > MAX_QUESTION for question in self.questions):
            problems.append(f"每条问法不能超过{MAX_QUESTION}个字符")
        unknown = set(self.follow_ups) - set(ASPECTS)
        if unknown:
            problems.append("追问只能按这些方面填写：" + "、".join(ASPECTS))
        if any(len(text) > MAX_ANSWER for text in self.follow_ups.values()):
            problems.append(f"追问答案不能超过{MAX_ANSWER}个字符")
        if names := unknown_facts((self.answer, *self.follow_ups.values())):
            unknown_names = "、".join(f"【{name}】" for name in names)
            known_names = "、".join(f"【{name}】" for name in FACTS)
            problems.append(
                f"本地信息只能使用 {CITY_FILE_NAME} 中的名称：{unknown_names} 不在其中（可用：{known_names}）"
            )
        return problems

    def checked(self) -> EntryData:
        """This entry, or InvalidEntry saying what is wrong with it."""
        if problems := self.problems():
            raise InvalidEntry(problems)
        return self

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready copy of every field, as kept in the version history."""
        data = asdict(self)
        data["questions"] = list(self.questions)
        data["follow_ups"] = dict(self.follow_ups)
        data["last_reviewed"] = self.last_reviewed.isoformat()
        return data

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> EntryData:
        return cls(
            slug=str(data["slug"]),
            title=str(data["title"]),
            category=str(data["category"]),
            department=str(data["department"]),
            questions=tuple(str(q) for q in data["questions"]),
            answer=str(data["answer"]),
            follow_ups={str(k): str(v) for k, v in (data.get("follow_ups") or {}).items()},
            last_reviewed=date.fromisoformat(str(data["last_reviewed"])),
            active=bool(data.get("active", True)),
        )

    def changed_fields(self, other: EntryData) -> list[str]:
        """Names of the fields whose values differ from `other`'s."""
        mine, theirs = self.snapshot(), other.snapshot()
        return [name for name in mine if mine[name] != theirs[name]]


def clean_lines(text: str) -> tuple[str, ...]:
    """Non-empty lines, stripped, without repeats (how the console reads a list of questions)."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line := line.strip():
            seen.setdefault(line, None)
    return tuple(seen)


def load_file(path: Path = DATA_FILE) -> list[EntryData]:
    """The entries of a data file, each checked; InvalidEntry names the first bad one."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    entries = []
    for item in raw:
        try:
            entry = EntryData.from_snapshot(
                {**item, "slug": item.get("id", ""), "answer": str(item.get("answer", "")).strip()}
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidEntry([f"{path.name}: entry {item.get('id')!r}: {error}"]) from error
        if problems := entry.problems():
            raise InvalidEntry([f"{path.name}: entry {entry.slug!r}: {problem}" for problem in problems])
        entries.append(entry)
    slugs = [entry.slug for entry in entries]
    if len(set(slugs)) != len(slugs):
        raise InvalidEntry([f"{path.name}: an id is used twice"])
    return entries
