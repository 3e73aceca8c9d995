"""Normalising citizens' questions before retrieval: one script, one name per service.

Citizens write traditional characters, full-width letters, typos and nicknames (居主证, 暂住证,
gjj), and colloquial wording (咋, 啥, 弄, 这边). Questions and entries both pass through
`normalise`, which rewrites colloquial words to careful ones (``data/wording.yml``), then
variants to their canonical term (``data/synonyms.yml``), so 「社保咋转到这边来」 and
「社保怎么转移到本市」 meet in the index.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parent / "data"
WORDING_PATH = DATA / "wording.yml"
SYNONYMS_PATH = DATA / "synonyms.yml"
# Applied in this order, each in one pass: colloquial wording first, then names and phrases.
TABLES = (WORDING_PATH, SYNONYMS_PATH)
_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)


@functools.cache
def _to_simplified():  # type: ignore[no-untyped-def]
    from opencc import OpenCC

    return OpenCC("t2s")


@functools.cache
def _synonym_pattern(path: Path) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    """One alternation of every variant (longest first) and the canonical term of each."""
    if not path.exists():
        return None, {}
    table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    canonical: dict[str, str] = {}
    for term, variants in table.items():
        for variant in variants or ():
            key = _plain(str(variant))
            if key and key != term:
                canonical[key] = str(term)
    if not canonical:
        return None, {}
    alternation = "|".join(re.escape(v) for v in sorted(canonical, key=len, reverse=True))
    return re.compile(alternation), canonical


def _plain(text: str) -> str:
    """NFKC, lower case, simplified characters."""
    return _to_simplified().convert(unicodedata.normalize("NFKC", text).lower())


def _replace_variants(text: str, path: Path) -> str:
    """Every variant of one table in `text` replaced by its canonical term, in one pass."""
    pattern, canonical = _synonym_pattern(path)
    if pattern is None:
        return text
    return pattern.sub(lambda match: canonical[match.group(0)], text)


def normalise(text: str) -> str:
    """A question as the index sees it: plain, careful wording, canonical names, no punctuation."""
    text = _plain(text)
    for path in TABLES:
        text = _replace_variants(text, path)
    return _NOISE.sub(" ", text).strip()
