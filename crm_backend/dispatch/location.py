"""Where a report is: district, street and address from what the citizen wrote.

The places come from a gazetteer kept as data (`data/gazetteer/districts.csv` and
`streets.csv`, described in `data/gazetteer/README.md`): its names and aliases go into a
private jieba dictionary, and `NameMatcher` finds them in the words that jieba cuts (labels
``DISTRICT`` and ``STREET``). Rasa's ``district`` and ``address`` entities, and a district the
citizen already chose, are weighed with them.

Which evidence wins, strongest first:

1. a district named in the text (or by a Rasa ``district`` entity the gazetteer knows);
   two different districts make the place ambiguous (unless the chosen district or a street
   settles it);
2. the district the citizen already chose (``hint_district``);
3. a street the gazetteer knows in exactly one district (several: ambiguous);
4. a city named alone: not a district, so its districts become the candidates to ask about.

Nothing is loaded at import: the matcher is built on first use (about a second, mostly
jieba's dictionary); then a message of a few hundred characters takes about a millisecond.

The matcher finds exactly what a blank Chinese spaCy pipeline with an ``entity_ruler``
(``phrase_matcher_attr="LOWER"``) on the same jieba found before it (the names matched word for
word, case-insensitively; overlapping matches resolved longest first, then leftmost), without
spaCy in the app process: spaCy, its vocabulary and the second jieba dictionary it loaded for
its own tokenizer cost about 100 MB per app process (`benchmarks/memory_benchmark.py`).
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DISTRICT_LABEL = "DISTRICT"
STREET_LABEL = "STREET"
KINDS = ("city", "district", "county")
DISTRICT_COLUMNS = ("district", "parent", "kind", "aliases")
STREET_COLUMNS = ("street", "district", "aliases")
ALIAS_SEPARATOR = "|"
# Longer texts are cut before segmenting, as for the engine: real reports name their place
# early (on the training messages a 4,000-character limit changes 4 results of 2,594), and
# a 20,000-character paste stays fast.
MAX_TEXT_CHARS = 2000
MAX_ADDRESS_CHARS = 60
# At least this frequency for gazetteer words in jieba (jieba's own suggestion can lose to a
# dictionary word overlapping the name, as 侍郎村 to 侍郎|村干部).
MIN_WORD_FREQ = 1000

Source = Literal["text", "rasa", "hint", "street", "city", "none"]

# Full-width ASCII (Ａ１区) and the ideographic space become their half-width forms, one
# character for one, so offsets in the cleaned text are offsets in the original.
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# The characters of a place name the gazetteer does not know: Chinese, minus the little
# words that glue a sentence together, so "门口的路", "住在人民路" or "各大小区" are never
# taken for names; a name does not start with a number word or an administrative level.
_GLUE = "的了在是和与及有被把将对从向到给让这那该我你他她们个些也都就还很不没住说请问各所最要位于其每此某"
_NAME_CHAR = rf"(?:(?![{_GLUE}])[\u4e00-\u9fff])"
_NAME_START = rf"(?:(?![{_GLUE}一第民原省市县区])[\u4e00-\u9fff])"
_PLACE_SUFFIX = r"(?:大道|街道|社区|小区|广场|公园|花园|家园|新村|新城|山庄|大厦|公寓|市场|路|街|巷|镇|乡|村|苑|园)"
_PLACE_UNIT = _NAME_START + _NAME_CHAR + r"{1,5}?" + _PLACE_SUFFIX
_DOOR = (
    r"(?:[0-9]+(?:[-~][0-9]+)?(?:号院|号楼|号|栋|幢|单元|室|楼|层|组|期)"
    r"|[一二三四五六七八九十百]+(?:号院|号楼|号|栋|幢|单元|组|期)"
    r"|第[0-9一二三四五六七八九十]+(?:组|栋|幢|单元|期)"
    r"|[A-Za-z][0-9]*(?:栋|幢|座))"
)
_DOOR_PIECE = re.compile(_DOOR)
_UNIT_PIECE = re.compile(_PLACE_UNIT)
_ROAD_WITH_NUMBER = re.compile(_NAME_START + _NAME_CHAR + r"{1,5}?(?:大道|路|街|巷)(?=[0-9]+号)")


class GazetteerError(ValueError):
    """A gazetteer file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class District:
    """A row of districts.csv: a city, or a district or county (the unit cases are routed to)."""

    name: str
    parent: str
    kind: str
    aliases: tuple[str, ...] = ()

    @property
    def is_city(self) -> bool:
        """Cities are not districts: naming one alone does not say where a case goes."""
        return self.kind == "city"


@dataclass(frozen=True)
class Street:
    """A row of streets.csv: a road, street, town, village or community inside one district."""

    name: str
    district: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocationResult:
    """Where a report is, as far as the text, Rasa and the citizen's choice tell.

    Attributes:
        district: canonical district (or county) name, None when missing or ambiguous.
        street: canonical gazetteer street, else the road or place named in the address.
        address: the most specific span of the text naming the place, e.g.
            "A1区人民路23号阳光小区" (None if the text names nothing below a district).
        candidates: districts to offer as buttons when ``district`` is None: the districts
            mentioned, those of an ambiguous street, or those of a city named alone.
        ambiguous: True when the dialogue should ask which of ``candidates`` it is.
        source: which evidence decided: text, rasa, hint, street, city or none.
        city: the city of ``district``, or the one city named.
    """

    district: str | None = None
    street: str | None = None
    address: str | None = None
    candidates: list[str] = field(default_factory=list)
    ambiguous: bool = False
    source: Source = "none"
    city: str | None = None


def surface_key(name: str) -> str:
    """How names are compared: half-width, lower-case, surrounding spaces dropped."""
    return name.translate(_HALF_WIDTH).strip().lower()


class Gazetteer:
    """Districts and streets with their aliases, and the lookups extraction needs."""

    def __init__(self, districts: Iterable[District], streets: Iterable[Street], home_city: str | None = None) -> None:
        """Check the rows against each other and index them.

        Args:
            districts: cities, districts and counties, in the order candidates are offered.
            streets: streets, each in a district or county of ``districts``.
            home_city: the service's own city (default: the first city in ``districts``).

        Raises:
            GazetteerError: duplicates, unknown kinds, parents or districts, clashing aliases.
        """
        self.districts: dict[str, District] = {}
        for district in districts:
            if district.kind not in KINDS:
                raise GazetteerError(f"district {district.name!r}: kind must be one of {', '.join(KINDS)}")
            if district.name in self.districts:
                raise GazetteerError(f"district {district.name!r} is listed twice")
            self.districts[district.name] = district
        for district in self.districts.values():
            if district.is_city:
                continue
            parent = self.districts.get(district.parent)
            if parent is None or not parent.is_city:
                raise GazetteerError(
                    f"district {district.name!r}: parent {district.parent!r} is not a city in the file"
                )
        self._district_by_surface: dict[str, str] = {}
        for district in self.districts.values():
            for surface in (district.name, *district.aliases):
                owner = self._district_by_surface.setdefault(surface_key(surface), district.name)
                if owner != district.name:
                    raise GazetteerError(f"{surface!r} names both {owner!r} and {district.name!r}")

        self.streets: tuple[Street, ...] = tuple(streets)
        self._streets_by_surface: dict[str, list[Street]] = {}
        seen: set[tuple[str, str]] = set()
        for street in self.streets:
            home = self.districts.get(street.district)
            if home is None or home.is_city:
                raise GazetteerError(f"street {street.name!r}: {street.district!r} is not a district in districts.csv")
            if (street.name, street.district) in seen:
                raise GazetteerError(f"street {street.name!r} is listed twice in {street.district!r}")
            seen.add((street.name, street.district))
            for surface in dict.fromkeys((street.name, *street.aliases)):
                if surface_key(surface) in self._district_by_surface:
                    raise GazetteerError(f"street {street.name!r}: {surface!r} is already a district name")
                self._streets_by_surface.setdefault(surface_key(surface), []).append(street)

        cities = [district.name for district in self.districts.values() if district.is_city]
        if home_city is not None and home_city not in cities:
            raise GazetteerError(f"home city {home_city!r} is not a city in districts.csv")
        self.home_city: str | None = home_city if home_city is not None else next(iter(cities), None)

    @classmethod
    def load(cls, directory: Path | str, home_city: str | None = None) -> Gazetteer:
        """Read ``districts.csv`` and ``streets.csv`` from a directory.

        Raises:
            GazetteerError: a file is missing, lacks a column, or has a malformed row.
        """
        directory = Path(directory)
        districts = [
            District(
                name=row["district"],
                parent=row["parent"],
                kind=row["kind"],
                aliases=_split_aliases(row["aliases"]),
            )
            for row in _read_rows(directory / "districts.csv", DISTRICT_COLUMNS, required=("district", "kind"))
        ]
        streets = [
            Street(name=row["street"], district=row["district"], aliases=_split_aliases(row["aliases"]))
            for row in _read_rows(directory / "streets.csv", STREET_COLUMNS, required=("street", "district"))
        ]
        return cls(districts, streets, home_city=home_city)

    def canonical_district(self, name: str) -> str | None:
        """The canonical name of a city, district or county named by ``name`` or an alias."""
        return self._district_by_surface.get(surface_key(name))

    def streets_named(self, name: str) -> list[Street]:
        """Every gazetteer street called ``name`` (or aliased so), one per district."""
        return list(self._streets_by_surface.get(surface_key(name), ()))

    def city_districts(self, city: str | None = None) -> list[str]:
        """The districts and counties of a city (default: the home city), in file order."""
        city = city if city is not None else self.home_city
        return [d.name for d in self.districts.values() if not d.is_city and d.parent == city]

    def jieba_words(self) -> list[str]:
        """Every name and alias (and its lower-case form) for jieba's user dictionary.

        Names containing spaces are left out: jieba never joins across a space, and the
        matcher matches them as several words anyway.
        """
        surfaces: list[str] = []
        for district in self.districts.values():
            surfaces += [district.name, *district.aliases]
        for street in self.streets:
            surfaces += [street.name, *street.aliases]
        words = dict.fromkeys(
            variant
            for surface in surfaces
            for variant in (surface, surface_key(surface))
            if not re.search(r"\s", variant)
        )
        return list(words)

    def entity_patterns(self) -> list[dict[str, str]]:
        """The names `NameMatcher` finds, as phrase patterns: ``DISTRICT`` (cities too) and ``STREET``."""
        patterns = [
            {"label": DISTRICT_LABEL, "pattern": surface, "id": district.name}
            for district in self.districts.values()
            for surface in (district.name, *district.aliases)
        ]
        patterns += [
            {"label": STREET_LABEL, "pattern": surface, "id": street.name}
            for street in self.streets
            for surface in (street.name, *street.aliases)
        ]
        return patterns


def _split_aliases(cell: str | None) -> tuple[str, ...]:
    return tuple(alias.strip() for alias in (cell or "").split(ALIAS_SEPARATOR) if alias.strip())


def _read_rows(path: Path, columns: Sequence[str], required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a gazetteer CSV (UTF-8, a BOM from spreadsheet programs is fine), checked."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise GazetteerError(f"{path}: cannot read ({error.strerror})") from error
    with handle:
        reader = csv.reader(handle)
        try:
            header = [cell.strip() for cell in next(reader, [])]
            missing = [column for column in columns if column not in header]
            if missing:
                raise GazetteerError(
                    f"{path.name}: header must have the columns {','.join(columns)} (missing {', '.join(missing)})"
                )
            rows = []
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    raise GazetteerError(
                        f"{path.name} line {reader.line_num}: {len(cells)} fields, expected {len(header)} "
                        f"(separate aliases with {ALIAS_SEPARATOR!r}, not commas)"
                    )
                row = {column: cell.strip() for column, cell in zip(header, cells, strict=True)}
                empty = [column for column in required if not row[column]]
                if empty:
                    raise GazetteerError(f"{path.name} line {reader.line_num}: empty {', '.join(empty)}")
                rows.append(row)
        except (csv.Error, UnicodeDecodeError) as error:
            raise GazetteerError(f"{path.name}: not a UTF-8 CSV file ({error})") from error
    return rows


@dataclass(frozen=True)
class _Mention:
    """A gazetteer name found in a text."""

    start: int
    end: int
    label: str
    surface: str


@dataclass(frozen=True)
class _Evidence:
    """What one text says, resolved against the gazetteer."""

    districts: list[str]
    cities: list[str]
    streets: list[tuple[_Mention, list[Street]]]


Word = tuple[int, int, str]  # start and end offsets in the text, and the text between them


class NameMatcher:
    """The gazetteer's names in a text: jieba's words (its dictionary only, no guesses for unknown
    words), each name matched word for word and case-insensitively; of overlapping matches the
    longest wins, then the leftmost.

    Thread-safe: built once, it only reads its tables and jieba's.
    """

    def __init__(self, segmenter: Any, patterns: Iterable[Mapping[str, str]]) -> None:
        """Index the names by their words.

        Args:
            segmenter: a jieba ``Tokenizer`` holding the names as words.
            patterns: ``{"label": ..., "pattern": name}`` (`Gazetteer.entity_patterns`).
        """
        self._segmenter = segmenter
        self._labels: dict[tuple[str, ...], list[str]] = {}
        for pattern in patterns:
            key = tuple(text.lower() for _, _, text in self.words(pattern["pattern"]))
            labels = self._labels.setdefault(key, []) if key else []
            if key and pattern["label"] not in labels:
                labels.append(pattern["label"])
        self._longest = max(map(len, self._labels), default=0)

    def words(self, text: str) -> list[Word]:
        """The text cut into words, every character in one word but single spaces after a word.

        jieba's words without its HMM guesses for unknown words (every place name is in the
        dictionary, and the guesses only glue a name's last character to the next word:
        "J10 县御林"); white space is kept as spaCy's tokenizer kept it (one space after a word
        belongs to that word, any other run of white space is a word of its own), so names
        with spaces match as they always did.
        """
        words: list[Word] = []
        position = 0
        for word in self._segmenter.cut(text, HMM=False):
            if not word or word.isspace():
                continue
            start = text.index(word, position)
            if start > position:
                words.append((position, start, text[position:start]))
            position = start + len(word)
            words.append((start, position, word))
            if text.startswith(" ", position):
                position += 1
        if position < len(text):
            words.append((position, len(text), text[position:]))
        return words

    def find(self, text: str) -> list[_Mention]:
        """The names in a text, in the order they appear."""
        words = self.words(text)
        lowered = [word.lower() for _, _, word in words]
        found = [
            (first, first + length, label)
            for first in range(len(words))
            for length in range(1, min(self._longest, len(words) - first) + 1)
            for label in self._labels.get(tuple(lowered[first : first + length]), ())
        ]
        found.sort(key=lambda match: (match[1] - match[0], -match[0]), reverse=True)
        taken: set[int] = set()
        kept: list[tuple[int, int, str]] = []
        for first, end, label in found:
            if first not in taken and end - 1 not in taken:
                taken.update(range(first, end))
                kept.append((first, end, label))
        return [
            _Mention(words[first][0], words[end - 1][1], label, text[words[first][0] : words[end - 1][1]])
            for first, end, label in sorted(kept)
        ]


class LocationExtractor:
    """District, street and address from a citizen's message (thread-safe; built on first use)."""

    def __init__(self, gazetteer: Gazetteer) -> None:
        self.gazetteer = gazetteer
        self._matcher: NameMatcher | None = None
        self._lock = threading.Lock()

    @property
    def matcher(self) -> NameMatcher:
        """The name matcher: a private jieba with the gazetteer's words (built on first use)."""
        with self._lock:
            if self._matcher is None:
                self._matcher = self._build()
            return self._matcher

    def _build(self) -> NameMatcher:
        from crm_backend.segmentation import layered_segmenter

        # A jieba of our own, so the place names never change how the rest of the process
        # (the category classifier) segments text: the place names on top of the shared dictionary.
        segmenter = layered_segmenter()
        for word in self.gazetteer.jieba_words():
            segmenter.add_word(word, max(segmenter.suggest_freq(word, False), MIN_WORD_FREQ))
        return NameMatcher(segmenter, self.gazetteer.entity_patterns())

    def warm_up(self) -> None:
        """Build the matcher now rather than on the first message."""
        self.extract("A1区人民路23号")

    def extract(
        self,
        text: str,
        hint_district: str | None = None,
        rasa_entities: Sequence[Mapping[str, Any]] | None = None,
    ) -> LocationResult:
        """Locate a report.

        Args:
            text: what the citizen wrote (anything; only the first ``MAX_TEXT_CHARS`` count).
            hint_district: a district the citizen already chose (a button), name or alias.
            rasa_entities: Rasa's entities for the message, e.g. ``{"entity": "district",
                "value": "A1区", "start": 0, "end": 3}``; ``district`` and ``address`` are used.

        Returns:
            The district (or candidates to ask about), street, address and which evidence won.
        """
        clean = _clean(text)[:MAX_TEXT_CHARS]
        mentions = self._mentions(clean)
        found = self._resolve(mentions)
        rasa = self._rasa_evidence(clean, rasa_entities or ())
        districts = _unique(found.districts + rasa.districts)
        cities = _unique(found.cities + rasa.cities)
        streets = found.streets + rasa.streets
        hint = self._hint(hint_district)

        district: str | None = None
        candidates: list[str] = []
        source: Source = "none"
        if districts:
            source = "text" if found.districts else "rasa"
            if len(districts) == 1:
                district = districts[0]
            elif hint in districts:
                district, source = hint, "hint"
            else:
                supported = [d for d in districts if any(s.district == d for _, named in streets for s in named)]
                if len(supported) == 1:
                    district = supported[0]
                else:
                    candidates = districts
        elif hint is not None:
            district, source = hint, "hint"
        elif street_districts := self._street_districts(streets, cities):
            source = "street"
            if len(street_districts) == 1:
                district = street_districts[0]
            else:
                candidates = street_districts
        elif cities:
            source = "city"
            candidates = _unique([d for city in cities for d in self.gazetteer.city_districts(city)])

        address, address_piece = self._address(clean, mentions, district, candidates, rasa_entities or ())
        return LocationResult(
            district=district,
            street=self._street(streets, district) or address_piece,
            address=address,
            candidates=candidates,
            ambiguous=district is None and bool(candidates),
            source=source,
            city=self.gazetteer.districts[district].parent if district else (cities[0] if len(cities) == 1 else None),
        )

    def _mentions(self, text: str) -> list[_Mention]:
        if not text.strip():
            return []
        return self.matcher.find(text)

    def _resolve(self, mentions: Iterable[_Mention]) -> _Evidence:
        districts: list[str] = []
        cities: list[str] = []
        streets: list[tuple[_Mention, list[Street]]] = []
        for mention in mentions:
            if mention.label == DISTRICT_LABEL:
                name = self.gazetteer.canonical_district(mention.surface)
                if name is not None:
                    (cities if self.gazetteer.districts[name].is_city else districts).append(name)
            elif mention.label == STREET_LABEL:
                named = self.gazetteer.streets_named(mention.surface)
                if named:
                    streets.append((mention, named))
        return _Evidence(_unique(districts), _unique(cities), streets)

    def _rasa_evidence(self, text: str, entities: Iterable[Mapping[str, Any]]) -> _Evidence:
        districts: list[str] = []
        cities: list[str] = []
        streets: list[tuple[_Mention, list[Street]]] = []
        for entity in entities:
            kind, value = _entity_value(entity)
            if kind not in ("district", "address") or not value:
                continue
            name = self.gazetteer.canonical_district(value) if kind == "district" else None
            if name is not None:
                (cities if self.gazetteer.districts[name].is_city else districts).append(name)
                continue
            inner = self._resolve(self._mentions(_clean(value)[:MAX_ADDRESS_CHARS]))
            districts += inner.districts
            cities += inner.cities
            streets += inner.streets
        return _Evidence(_unique(districts), _unique(cities), streets)

    def _hint(self, hint_district: str | None) -> str | None:
        if not isinstance(hint_district, str):
            return None
        name = self.gazetteer.canonical_district(hint_district)
        if name is None or self.gazetteer.districts[name].is_city:
            return None
        return name

    def _street_districts(self, streets: Sequence[tuple[_Mention, list[Street]]], cities: Sequence[str]) -> list[str]:
        """The districts the streets named are in: those all of them share if any (a crossing of
        two roads is where both are), and only those of the cities named, if any."""
        districts = _unique([s.district for _, named in streets for s in named])
        shared = [d for d in districts if all(any(s.district == d for s in named) for _, named in streets)]
        districts = shared or districts
        if cities:
            districts = [d for d in districts if self.gazetteer.districts[d].parent in cities]
        return districts

    def _street(self, streets: Sequence[tuple[_Mention, list[Street]]], district: str | None) -> str | None:
        for _, named in streets:
            for street in named:
                if district is None or street.district == district:
                    return street.name
        return None

    def _address(
        self,
        text: str,
        mentions: Sequence[_Mention],
        district: str | None,
        candidates: Sequence[str],
        entities: Iterable[Mapping[str, Any]],
    ) -> tuple[str | None, str | None]:
        """The best address span, and the first place below the district named in it."""
        # (start, end, a place the anchor itself names that the gazetteer does not know)
        anchors: list[tuple[int, int, str | None]] = [(m.start, m.end, None) for m in mentions]
        anchors += [
            (road.start(), road.start(), None)
            for road in _ROAD_WITH_NUMBER.finditer(text)
            if not any(m.start < road.start() < m.end for m in mentions)
        ]
        outside: list[str] = []
        for entity in entities:
            kind, value = _entity_value(entity)
            value = _clean(value).strip()[:MAX_ADDRESS_CHARS]
            if kind != "address" or not value:
                continue
            start = entity.get("start")
            if not (isinstance(start, int) and start >= 0 and text[start : start + len(value)] == value):
                start = text.find(value)
            if start >= 0:
                anchors.append((start, start + len(value), value))
            else:
                outside.append(value)

        best: tuple[tuple[int, int, int], str, str | None] | None = None
        for start, end, named_piece in sorted(dict.fromkeys(anchors), key=lambda anchor: anchor[:2]):
            span_end, piece = _extend(text, start, end, mentions)
            piece = named_piece or piece
            inside = [m for m in mentions if start <= m.start < span_end]
            below = [m for m in inside if m.label == STREET_LABEL]
            if not below and piece is None:
                continue
            named = self._resolve(inside)
            places = named.districts + [s.district for _, streets in named.streets for s in streets]
            agrees = int(district in places) if district else int(any(c in places for c in candidates))
            score = (agrees, len(below) or 1, span_end - start)
            if best is None or score > best[0]:
                best = (score, text[start:span_end].strip(), piece)
        if best is not None:
            return best[1], best[2]
        return (outside[0], None) if outside else (None, None)


def _extend(text: str, start: int, end: int, mentions: Sequence[_Mention]) -> tuple[int, str | None]:
    """Grow an address from an anchor over adjacent names, place units and door numbers.

    Returns:
        Where the address ends, and the first place unit it took that the gazetteer does not know.
    """
    starts = {m.start: m.end for m in mentions}
    first_piece: str | None = None
    while end - start < MAX_ADDRESS_CHARS:
        if end in starts:
            end = starts[end]
            continue
        door = _DOOR_PIECE.match(text, end)
        if door and end > start:
            end = door.end()
            continue
        unit = _UNIT_PIECE.match(text, end)
        if unit is None:
            break
        first_piece = first_piece or unit.group(0)
        end = unit.end()
    return min(end, start + MAX_ADDRESS_CHARS), first_piece


def _entity_value(entity: Any) -> tuple[str | None, str | None]:
    if not isinstance(entity, Mapping):
        return None, None
    kind, value = entity.get("entity"), entity.get("value")
    return (kind if isinstance(kind, str) else None), (value if isinstance(value, str) else None)


def _clean(text: Any) -> str:
    """Half-width forms and no lone surrogates, keeping every offset where it was."""
    if not isinstance(text, str):
        return ""
    return _LONE_SURROGATE.sub("\ufffd", text.translate(_HALF_WIDTH))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
