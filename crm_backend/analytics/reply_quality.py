"""答复质量: a staff reply or 办结 result scored on four documented dimensions, each 0-100.

The rules are plain and written down so that a department can see why a reply scored what it
did (each score carries its reasons); they were calibrated on the 2,816 real message/reply
pairs of ``citizen_messages_with_replies.csv`` (``benchmarks/reply_quality_benchmark.py``).

Relevance (相关性): does the reply talk about what the citizen wrote? The message's key terms
  are its 12 words of highest TF-IDF weight (jieba segmentation, jieba's general-corpus IDF,
  stop words and one-character words left out). Score = 100 × (0.7 × the weighted share of
  those key terms the reply contains + 0.3 × min(1, 2 × the TF-IDF cosine of message and
  reply)). Text the reply quotes back from the message (“…” 「…」 found verbatim in it) is
  removed first: repeating the citizen's title is not an answer.
Completeness (完整性): 40 points for saying what was done or will be done (已…处理/安排/责令/
  整改…, 进行了…, 将…, 正在…, 责令, 督促, 约谈…: 20 per distinct signal, at most 40; a question in the
  message that the reply answers counts as one), 20 for telling the
  citizen whom to contact (a phone number, 联系电话, 窗口, 可向…咨询), 20 for answering (a
  decision or explanation: 符合/不符合, 可以/不能, 应当, 需要, a date), 20 for substance
  (the reply's own text, greetings and thanks left out, 10 points per 100 characters).
Interpretability (可解释性): 40 points for a finding (经核实, 经调查, 经查, 现场查看…), 30 for
  naming its basis (根据/依据/按照… a 规定, 条例, 办法, 政策, 标准…), 30 for citing a
  document by name (《…》, not the message board's own name) or an article (第…条).
Timeliness (及时性): working days (China's holidays and adjusted working days, as deadlines
  are counted) from the message to the reply, against the case's deadline (its ``due_at``,
  else `DEFAULT_DEADLINE_WORKING_DAYS`). On time: 100 − 20 × used / allowed (80-100). Late:
  60 × (1 − working days late / allowed), at least 0 (twice the deadline or later scores 0).
Total: the weighted mean of the four (`WEIGHTS`), rounded.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from crm_backend.dispatch.deadlines import CHINA_TZ, due_at, is_working_day

if TYPE_CHECKING:
    import jieba

# Bump when a rule changes meaning: stored scores of an older version are redone by
# ``python -m crm_backend score-replies``.
SCORER_VERSION = "1"

# The deadline assumed for a case without one (the most common category deadline).
DEFAULT_DEADLINE_WORKING_DAYS = 10

# How the total weighs the four dimensions; chosen after reading the real replies (see
# docs/reply-quality.md): completeness and relevance say most about whether the citizen was helped.
WEIGHTS: dict[str, float] = {"relevance": 0.3, "completeness": 0.35, "interpretability": 0.15, "timeliness": 0.2}

KEY_TERMS = 12
_STOP_WORDS = frozenset(
    "您好 你好 网友 留言 反映 问题 感谢 谢谢 支持 关注 关心 理解 情况 我们 你们 他们 您的 有关 相关 部门 答复 回复 "
    "如下 现将 收悉 工作 已经 进行 目前 现在 这个 那个 什么 怎么 为什么 请问 一下 希望 领导 政府 市民 百姓 老百姓 "
    "可以 没有 不是 就是 还是 但是 因为 所以 如果 这样 那么 以及 并且 或者 及时 尽快 非常 特此 此致 敬礼 平台 栏目 "
    "本人 自己 大家 一个 一些 这些 那些 其中 同时 由于 对于 关于 通过 根据 按照 要求 今年 去年 时间 现在".split()
)
_QUOTED = re.compile(r"“([^”]{4,200})”|「([^」]{4,200})」|\"([^\"]{4,200})\"|『([^』]{4,200})』")
_HAS_WORD_CHAR = re.compile(r"[\u4e00-\u9fffA-Za-z]")
# The source's stray spreadsheet line breaks and its stand-in for removed numbers and links.
_NOISE = re.compile(r"_x000D_|x000D|https?://\S*?(?:baidu\.com/?|(?=\s|$))")

# Completeness.
_DONE = re.compile(
    r"已(?:经)?[^，。；！？,;]{0,8}?(?:处理|安排|责令|督促|要求|整改|维修|修复|修缮|清理|清除|拆除|落实|解决|完成|协调|约谈|"
    r"立案|查处|办理|发放|补发|退还|更换|恢复|疏通|下发|制定|启动|开展|组织|联系|沟通|纳入|批复|审批|核发|处罚|罚款|"
    r"转交|移交|派员|到场|封堵|关停|取缔|暂停|停止|改正|整治|规范|告知|通知|答复了|安装|设置|增设|铺设|建成|修建|改造|翻新|"
    r"硬化|批评教育|拆除|核实|调查|检查)"
)
# What was done, said without 已: 进行了批评教育, 作出了…处罚, 给予…处理.
_DID = re.compile(
    r"(?:进行了|作出了|做出了|给予了?|开展了|组织了)[^，。；]{0,8}?(?:批评教育|处罚|处理|整改|清理|维修|修复|调查|检查|核查|执法|整治)"
)
# What will be done (将…; not 现将, the greeting's "herewith"), or is being done (正在…).
_WILL = re.compile(
    r"(?<![现并])将(?:于|在|会|继续|尽快|加快|进一步|按|对|组织|安排|督促|协调|加强|适时|积极|及时|认真|结合|依法|逐步|"
    r"[^，。；“”]{0,8}?(?:纳入|列入|建设|改造|实施|推进|停放|处理|解决|考虑|研究|修复|维修|整治|增设|设置|安装|调整))|"
    r"(?:拟|计划|预计|争取|力争|决定)(?:于|在|年|月|\d)|正在(?:进行|开展|组织|实施|建设|推进|制定|办理|处理|协调|整改|修复|施工)"
)
_ENFORCE = re.compile(r"责令|督促|约谈|立案|查处|行政处罚|罚款|下达[^，。]{0,6}通知书|限期|整改")
_PHONE = re.compile(
    r"(?<![A-Za-z\d])(?:0\d{2,3}\s*[-－—]\s*)?(?:\d{4}\s*[-－—]\s*)?\d{7,8}(?!\d)|(?<![A-Za-z\d])1[3-9]\d{9}(?!\d)"
)
_CONTACT = re.compile(
    r"联系电话|咨询电话|举报电话|办公电话|服务热线|热线|窗口|联系人|来电|致电|拨打|"
    r"(?:可|请|建议)(?:您)?(?:直接)?(?:向|与|到|至|前往|联系|咨询)"
)
_QUESTION = re.compile(r"？|\?|吗|是否|能否|可否|何时|什么时候|怎么|怎样|如何|为什么|请问|咨询|多少")
_ANSWER = re.compile(
    r"不符合|符合|不可以|可以|不能|不予|无法|应当|应该|需要|须|必须|不属于|属于|标准为|标准是|有效期|期限|"
    r"\d{1,2}月(?:\d{1,2}日)?|年底|月底|近期|目前|现已|已于"
)
_COURTESY = re.compile(
    r"[^。！!；;：:\n]*(?:您好|你好|感谢|谢谢|收悉|特此|此复|欢迎|关注|理解和支持|支持和理解|如下)[^。！!；;：:\n]*[。！!；;：:]?"
)
_DATE_LINE = re.compile(r"\d{4}年\d{1,2}月\d{1,2}日")
# Interpretability.
_FINDING = re.compile(
    r"经(?:过)?(?:核实|调查|查|了解|现场|实地|排查|研究|走访|查证|核查|检测|勘察|审核|复核)|调查核实|现场查看|实地查看|"
    r"现场核查|实地核查|现场勘察|调查了解|核实情况|调查处理|前去调查|执法检查|(?:检查|查看|调查)发现|"
    r"(?:到|赴|前往|深入)[^，。；]{0,8}现场"
)
_BASIS = re.compile(
    r"(?:根据|依据|按照|依照|参照|遵照|对照|按)[^。；]{0,40}?(?:规定|条例|办法|法律|法规|政策|文件|标准|通知|意见|细则|规范|"
    r"规划|方案|精神|制度|法》|条》|要求|权限|职责)"
)
_DOCUMENT = re.compile(r"《([^》]{2,60})》")
# 《问政西地省》 is the message board, 《…的投诉》 the citizen's own title: neither is a basis.
_NOT_A_DOCUMENT = re.compile(r"问政|留言|栏目|平台|网站|信箱|热线|(?:投诉|问题|反映|咨询|建议|请求|呼吁|举报|求助)$")
_ARTICLE = re.compile(r"第[一二三四五六七八九十百零〇\d]+条")


@dataclass(frozen=True)
class ReplyQuality:
    """A reply's four scores (0-100 each), their weighted total and why."""

    relevance: int
    completeness: int
    interpretability: int
    timeliness: int
    total: int
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, int]:
        return {
            "relevance": self.relevance,
            "completeness": self.completeness,
            "interpretability": self.interpretability,
            "timeliness": self.timeliness,
            "total": self.total,
        }


def score_reply(
    message: str, reply: str, *, asked_at: datetime, replied_at: datetime, due: datetime | None = None
) -> ReplyQuality:
    """Score one reply to one citizen's message.

    Args:
        message: what the citizen wrote (the case's description).
        reply: the staff reply or the 办结 result.
        asked_at: when the citizen wrote (the case's filing time), timezone-aware.
        replied_at: when the reply was written, timezone-aware.
        due: the case's deadline; None means `DEFAULT_DEADLINE_WORKING_DAYS` after `asked_at`.
    """
    relevance, relevance_why = _relevance(message, reply)
    completeness, completeness_why = _completeness(message, reply)
    interpretability, interpretability_why = _interpretability(reply)
    timeliness, timeliness_why = _timeliness(asked_at, replied_at, due)
    parts = {
        "relevance": relevance,
        "completeness": completeness,
        "interpretability": interpretability,
        "timeliness": timeliness,
    }
    total = round(sum(WEIGHTS[name] * value for name, value in parts.items()))
    return ReplyQuality(
        relevance,
        completeness,
        interpretability,
        timeliness,
        total,
        (relevance_why, completeness_why, interpretability_why, timeliness_why),
    )


# --- relevance ----------------------------------------------------------------------------


_load_lock = threading.Lock()


def _segmenter() -> jieba.Tokenizer:
    from crm_backend.segmentation import shared_segmenter

    return shared_segmenter()


@cache
def _idf() -> tuple[dict[str, float], float]:
    """jieba's general-corpus IDF table and its median (for words it does not know)."""
    import jieba.analyse

    path = Path(jieba.analyse.__file__).resolve().parent / "idf.txt"
    table: dict[str, float] = {}
    with _load_lock, path.open(encoding="utf-8") as lines:
        for line in lines:
            word, _, value = line.rstrip("\n").partition(" ")
            if value:
                table[word] = float(value)
    values = sorted(table.values())
    return table, values[len(values) // 2]


def warm_up() -> None:
    """Load the segmenter and the IDF table now (a few seconds), not on the first reply."""
    _segmenter()
    _idf()


def _words(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for word in _segmenter().lcut(_NOISE.sub(" ", text)):
        word = word.strip()
        if len(word) >= 2 and _HAS_WORD_CHAR.search(word) and word not in _STOP_WORDS:
            counts[word] += 1
    return counts


def _weights(counts: Counter[str]) -> dict[str, float]:
    table, median = _idf()
    return {word: count * table.get(word, median) for word, count in counts.items()}


def without_quotes_of(message: str, reply: str) -> str:
    """The reply without the passages it quotes verbatim from the message."""

    def drop(match: re.Match[str]) -> str:
        quoted = next(group for group in match.groups() if group is not None)
        return "" if quoted in message else match.group(0)

    return _QUOTED.sub(drop, reply)


def key_terms(message: str) -> list[tuple[str, float]]:
    """The message's `KEY_TERMS` words of highest TF-IDF weight, heaviest first."""
    weights = _weights(_words(message))
    return sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:KEY_TERMS]


def _relevance(message: str, reply: str) -> tuple[int, str]:
    own = without_quotes_of(message, reply)
    terms = key_terms(message)
    if not terms:
        return 0, "相关性：留言没有可比对的内容"
    present = _bigrams(own)
    shares = {word: _covered_share(word, present) for word, _ in terms}
    covered = [word for word, _ in terms if shares[word] >= 0.5]
    coverage = sum(weight * shares[word] for word, weight in terms) / sum(weight for _, weight in terms)
    cosine = _cosine(_weights(_words(message)), _weights(_words(own)))
    score = round(100 * (0.7 * coverage + 0.3 * min(1.0, 2 * cosine)))
    if covered:
        why = f"相关性：回应了留言要点 {len(covered)}/{len(terms)}（{'、'.join(covered[:4])}）"
    else:
        why = f"相关性：没有回应留言要点（如{'、'.join(word for word, _ in terms[:3])}）"
    return score, why


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)}


def _covered_share(word: str, present: set[str]) -> float:
    """How much of a key term the reply contains: the share of its character pairs found in it
    (污染环境 is half-covered by a reply that says 污染, fully by one that says it whole)."""
    pairs = _bigrams(word)
    return sum(pair in present for pair in pairs) / len(pairs) if pairs else 0.0


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(weight * b[word] for word, weight in a.items() if word in b)
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


# --- completeness -------------------------------------------------------------------------


def substance(reply: str) -> str:
    """The reply without greetings, thanks, acknowledgements and its date line."""
    return _DATE_LINE.sub("", _COURTESY.sub("", reply)).strip()


def _completeness(message: str, reply: str) -> tuple[int, str]:
    actions = {m.group(0) for pattern in (_DONE, _DID, _WILL, _ENFORCE) for m in pattern.finditer(reply)}
    own = substance(reply)
    answer = bool(_ANSWER.search(own))
    # A question answered is what was done for it (a 咨询 has nothing else to do).
    answered_question = answer and bool(_QUESTION.search(message)) and len(own) >= 20
    action_points = min(40, 20 * (len(actions) + answered_question))
    contact = bool(_PHONE.search(reply) or _CONTACT.search(reply))
    substance_points = min(20, 10 * len(own) // 100)
    score = action_points + (20 if contact else 0) + (20 if answer else 0) + substance_points
    said = []
    if actions:
        said.append(f"说明了办理措施（{'、'.join(sorted(actions)[:3])}）")
    elif answered_question:
        said.append("答复了所问")
    else:
        said.append("没有说明做了什么")
    said.append("留了联系方式" if contact else "没有联系方式")
    if not answer:
        said.append("没有明确答复")
    if len(own) < 50:
        said.append("实质内容很少")
    return score, "完整性：" + "，".join(said)


# --- interpretability ---------------------------------------------------------------------


def _interpretability(reply: str) -> tuple[int, str]:
    documents = [name for name in _DOCUMENT.findall(reply) if not _NOT_A_DOCUMENT.search(name)]
    finding = _FINDING.search(reply)
    basis = _BASIS.search(reply)
    article = _ARTICLE.search(reply)
    score = (40 if finding else 0) + (30 if basis else 0) + (30 if documents or article else 0)
    said = []
    if finding:
        said.append(f"有核查结论（{finding.group(0)}）")
    if basis:
        said.append("说明了依据")
    if documents:
        said.append(f"引用《{documents[0]}》")
    elif article:
        said.append(f"引用{article.group(0)}")
    return score, "可解释性：" + ("，".join(said) if said else "没有说明依据或核查结论")


# --- timeliness ---------------------------------------------------------------------------


def working_days_between(start: date, end: date) -> int:
    """Working days after `start` up to and including `end` (0 on the same day or before)."""
    days = 0
    day = start
    while day < end:
        day += timedelta(days=1)
        if is_working_day(day):
            days += 1
    return days


def _timeliness(asked_at: datetime, replied_at: datetime, due: datetime | None) -> tuple[int, str]:
    deadline = due if due is not None else due_at(asked_at, DEFAULT_DEADLINE_WORKING_DAYS)
    asked_day = asked_at.astimezone(CHINA_TZ).date()
    replied_day = replied_at.astimezone(CHINA_TZ).date()
    due_day = deadline.astimezone(CHINA_TZ).date()
    allowed = max(1, working_days_between(asked_day, due_day))
    used = working_days_between(asked_day, replied_day)
    if replied_at <= deadline:
        return round(100 - 20 * min(used, allowed) / allowed), f"及时性：用时 {used} 个工作日（期限 {allowed} 个）"
    late = max(1, working_days_between(due_day, replied_day))
    return round(max(0.0, 60 * (1 - late / allowed))), f"及时性：超期 {late} 个工作日（期限 {allowed} 个）"
