"""The learning-content tables as data, and the pure record -> row function.

Each table of the warehouse is declared once (:data:`TABLES`): its fields with their SQL type and
source expression, and the fields that get an index ``{table}_{field}_idx``. The declarations follow
DESIGN.md step 7 field by field. Every table also has ``"id" text PRIMARY KEY``.

Source expressions (``Field.source``) are a tiny, closed language, written like DESIGN.md's ``<-``:

=================  ===========================================================================
``None``           the record's field of the same name
``"a.b"``          a nested value (``name_i18n.fr``); missing at any level -> ``None``
``"[a]"``          a one-element list holding ``a`` (``[]`` when ``a`` is missing)
``"=1"``           a constant, as JSON (``=1``, ``=null``)
``"truthy(a)"``    ``True`` when ``a`` is truthy (non-empty string/list, non-zero, ``true``)
=================  ===========================================================================

Then, whatever the source: a list reaching a non-array field keeps its first element, a scalar
reaching an array field becomes a one-element array, boolean fields are never null (missing ->
``False``), and each value is checked against its SQL type here, before the database is touched,
so that a bad value fails with the table, the record id and the field in the message.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Mapping

from pgrepl.errors import PgreplError

SMALLINT_RANGE = (-32768, 32767)


class LearningContentError(PgreplError, ValueError):
    """The learning content does not fit the declared tables; the message names table, record and field. No retry:
    the API serves the same content until someone fixes it."""

    retryable = False


@dataclass(frozen=True)
class Field:
    """One column: ``name`` (exact, case-sensitive), SQL ``type``, optional source expression."""

    name: str
    type: str
    source: str | None = None

    @cached_property
    def is_array(self) -> bool:
        return self.type.endswith("[]")

    @cached_property
    def base_type(self) -> str:
        """``text`` for ``text[]``, ``numeric`` for ``numeric(6,5)``."""
        return re.sub(r"\(.*\)$", "", self.type.removesuffix("[]").strip())


@dataclass(frozen=True)
class Table:
    """One learning-content table: payload key = table name; ``indexes`` lists indexed fields."""

    name: str
    fields: tuple[Field, ...]
    indexes: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return ("id",) + tuple(f.name for f in self.fields)

    def index_name(self, field: str) -> str:
        return f"{self.name}_{field}_idx"


def _f(names: str, type_: str, source: str | None = None) -> tuple[Field, ...]:
    """``_f("type challengeId alt url", "text")`` -> several fields of one type (no source)."""
    return tuple(Field(name, type_, source) for name in names.split())


#: DESIGN.md step 7, in its order
TABLES: tuple[Table, ...] = (
    Table("areas", _f("name", "text")),
    Table("attachments", _f("type challengeId alt url", "text") + _f("size", "numeric")),
    Table(
        "competences",
        (
            Field("name", "text", "name_i18n.fr"),
            Field("code", "text", "index"),
            Field("title", "text", "name_i18n.fr"),
            Field("origin", "text"),
            Field("areaId", "text"),
        ),
        indexes=("areaId",),
    ),
    Table(
        "tubes",
        (
            Field("name", "text"),
            Field("practicalTitle", "text", "practicalTitle_i18n.fr"),
            Field("practicalDescription", "text", "practicalDescription_i18n.fr"),
            Field("competenceId", "text"),
        ),
        indexes=("competenceId",),
    ),
    Table(
        "skills",
        _f("name description", "text")
        + _f("level", "smallint")
        + _f("tubeId status", "text")
        + _f("pixValue", "numeric(6,5)")
        + (Field("hint", "text", "hint_i18n.fr"),)
        + _f("hintStatus", "text")
        + _f("tutorialIds learningMoreTutorialIds", "text[]")
        + _f("internationalisation", "text"),
        indexes=("tubeId",),
    ),
    Table(
        "challenges",
        _f("instruction status type", "text")
        + _f("timer", "smallint")
        + _f("autoReply", "boolean")
        + _f("skillId", "text")
        + (
            Field("skillIds", "text[]", "[skillId]"),
            Field("skillCount", "smallint", "=1"),
            Field("firstSkillId", "text", "skillId"),
            Field("secondSkillId", "text", "=null"),
            Field("thirdSkillId", "text", "=null"),
            Field("languages", "text[]", "locales"),
            Field("embedUrl", "text"),
            Field("hasEmbedUrl", "boolean", "truthy(embedUrl)"),
            Field("alternativeInstruction", "text"),
            Field("hasAlternativeInstruction", "boolean", "truthy(alternativeInstruction)"),
            Field("area", "text"),
            Field("focus", "boolean", "truthy(focusable)"),
            Field("explicativeResponse", "text", "solutionToDisplay"),
        )
        + _f("delta alpha", "numeric")
        + _f("createdAt validatedAt archivedAt madeObsoleteAt", "timestamptz")
        + _f("accessibility1 accessibility2 spoil responsive deafAndHardOfHearing", "text")
        + _f("requireGafamWebsiteAccess isIncompatibleIpadCertif toRephrase isAwarenessChallenge", "boolean")
        + _f("genealogy", "text")
        + _f("version alternativeVersion", "smallint")
        + _f("declinable proposals solution pedagogy", "text")
        + (Field("shuffled", "boolean", "truthy(shuffled)"),)
        + _f("contextualizedFields urlsToConsult", "text[]"),
        indexes=("firstSkillId",),
    ),
    Table("courses", _f("name", "text")),
    Table(
        "tutorials",
        _f("title link", "text") + _f("tutorialForSkills furtherInformation", "text[]") + _f("locale", "text"),
        indexes=("title",),
    ),
)

TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLES)


# -- source expressions --------------------------------------------------------------------------

def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _truthy(value: Any) -> bool:
    """JavaScript's ``!!value`` on JSON values (``[]`` and ``{}`` are truthy there; here empty = false)."""
    if isinstance(value, (list, dict, str)):
        return len(value) > 0
    return bool(value)


_TRUTHY = re.compile(r"^truthy\(([^()]+)\)$")
_LISTOF = re.compile(r"^\[([^\[\]]+)\]$")


@lru_cache(maxsize=None)
def extractor(field: Field) -> Callable[[Mapping[str, Any]], Any]:
    """The function reading ``field``'s raw value from a record, compiled once from its source expression."""
    source = field.source
    if source is None:
        name = field.name
        return lambda record: record.get(name)
    if source.startswith("="):
        constant = json.loads(source[1:])
        return lambda record: copy.deepcopy(constant)
    match = _TRUTHY.match(source)
    if match:
        path = match.group(1)
        return lambda record: _truthy(_lookup(record, path))
    match = _LISTOF.match(source)
    if match:
        path = match.group(1)

        def one_element_list(record: Mapping[str, Any]) -> list:
            value = _first(_lookup(record, path))
            return [] if value is None else [value]

        return one_element_list
    if "." not in source:
        return lambda record: record.get(source)
    return lambda record: _lookup(record, source)


def check_declarations(tables: Iterable[Table] = TABLES) -> None:
    """Fail fast on a declaration this module cannot handle (unknown type or source, bad index)."""
    for table in tables:
        names = [f.name for f in table.fields]
        if "id" in names or len(set(names)) != len(names):
            raise LearningContentError(f"table {table.name}: duplicate column or a field named id")
        for field in table.fields:
            if field.base_type not in CONVERTERS:
                raise LearningContentError(f"table {table.name}: field {field.name} has unsupported type {field.type!r}")
            source = field.source
            if source is not None and not (
                source.startswith("=") or _TRUTHY.match(source) or _LISTOF.match(source)
                or re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", source)
            ):
                raise LearningContentError(f"table {table.name}: field {field.name} has unsupported source {source!r}")
        for index in table.indexes:
            if index not in names:
                raise LearningContentError(f"table {table.name}: index on unknown field {index}")
            if len(table.index_name(index)) > 63:
                raise LearningContentError(f"table {table.name}: index name {table.index_name(index)} exceeds 63 bytes")


# -- type conversion -----------------------------------------------------------------------------

class _Misfit(Exception):
    """A value does not fit its column; the message says why (without table/record, added by the caller)."""


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _to_text(value: Any, _type: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Misfit(f"expected text, got {type(value).__name__} {_short(value)}")
    text = value if isinstance(value, str) else json.dumps(value)
    if "\x00" in text:
        raise _Misfit("text contains a NUL character, which PostgreSQL cannot store")
    return text


def _to_smallint(value: Any, _type: str) -> int:
    number: Any = value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise _Misfit(f"expected a whole number (smallint), got {_short(value)}")
    if not SMALLINT_RANGE[0] <= number <= SMALLINT_RANGE[1]:
        raise _Misfit(f"{number} is out of the smallint range")
    return number


def _to_numeric(value: Any, type_: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Misfit(f"expected a number, got {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Misfit(f"expected a finite number, got {value}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _Misfit(f"expected a number, got {_short(value)}") from None
    if not number.is_finite():
        raise _Misfit(f"expected a finite number, got {_short(value)}")
    match = re.search(r"\((\d+)\s*,\s*(\d+)\)", type_)
    if match:  # numeric(p,s): PostgreSQL rounds to s decimals (half away from zero), then checks p
        precision, scale = int(match.group(1)), int(match.group(2))
        number = number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
        if abs(number) >= Decimal(10) ** (precision - scale):
            raise _Misfit(f"{value} does not fit {type_} (absolute value must be below 10^{precision - scale})")
    return number


def _to_boolean(value: Any, _type: str) -> bool:
    if not isinstance(value, bool):
        raise _Misfit(f"expected true or false, got {_short(value)}")
    return value


def _to_timestamptz(value: Any, _type: str) -> datetime:
    if not isinstance(value, str):
        raise _Misfit(f"expected an ISO 8601 date-time string, got {_short(value)}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Misfit(f"expected an ISO 8601 date-time, got {_short(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


CONVERTERS = {
    "text": _to_text,
    "smallint": _to_smallint,
    "numeric": _to_numeric,
    "boolean": _to_boolean,
    "timestamptz": _to_timestamptz,
}

#: psycopg type names for COPY ``set_types``
PG_TYPE_NAMES = {"text": "text", "smallint": "int2", "numeric": "numeric", "boolean": "bool", "timestamptz": "timestamptz"}


def convert(field: Field, value: Any) -> Any:
    """Shape and type-check one extracted value for ``field``; raises ``_Misfit``."""
    if field.is_array:
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if isinstance(item, (list, dict)):
                raise _Misfit(f"array element {_short(item)} is not a scalar")
            out.append(None if item is None else CONVERTERS[field.base_type](item, field.base_type))
        return out
    value = _first(value)
    if value is None:
        return False if field.base_type == "boolean" else None
    return CONVERTERS[field.base_type](value, field.type)


# -- records and payloads ------------------------------------------------------------------------

def record_id(table: Table, record: Any, position: int) -> str:
    """The record's ``id`` as text; a record without one fails naming the table and its position."""
    if not isinstance(record, dict):
        raise LearningContentError(
            f"table {table.name}: record #{position} is a {type(record).__name__}, not a JSON object"
        )
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        shown = "no id" if value is None else f"id {_short(value)} that is not a non-empty string"
        raise LearningContentError(f"table {table.name}: record #{position} has {shown}")
    return str(value)


def compile_table(table: Table) -> list[tuple[Field, Callable[[Mapping[str, Any]], Any]]]:
    """Per field, the function record -> checked value (extraction then conversion), built once per table."""
    plan = []
    for field in table.fields:
        read = extractor(field)
        if field.is_array:
            def value(record: Mapping[str, Any], read=read, field=field) -> Any:
                return convert(field, read(record))
        else:
            to_type = CONVERTERS[field.base_type]
            missing = False if field.base_type == "boolean" else None

            def value(record: Mapping[str, Any], read=read, to_type=to_type, missing=missing, type_=field.type) -> Any:
                raw = read(record)
                if type(raw) is list:
                    raw = raw[0] if raw else None
                return missing if raw is None else to_type(raw, type_)
        plan.append((field, value))
    return plan


def _row(table: Table, plan: list, record: Any, position: int) -> tuple:
    rid = record_id(table, record, position)
    row: list[Any] = [rid]
    for field, value in plan:
        try:
            row.append(value(record))
        except _Misfit as exc:
            raise LearningContentError(f"table {table.name}: record {rid}: field {field.name} ({field.type}): {exc}") from None
    return tuple(row)


def to_row(table: Table, record: Mapping[str, Any], position: int = 0) -> tuple:
    """One record -> one row ``(id, field1, field2, ...)`` in :attr:`Table.columns` order.

    :raises LearningContentError: naming the table, the record id and the field.
    """
    return _row(table, compile_table(table), record, position)


def map_payload(payload: Any, tables: Iterable[Table] = TABLES) -> dict[str, list[tuple]]:
    """The whole API payload ``{table: [record, ...]}`` -> ``{table: [row, ...]}``, all checked.

    Every table must be present as a list; ids must be unique within a table. Keys of the payload
    that are not declared tables are ignored.
    """
    if not isinstance(payload, Mapping):
        raise LearningContentError(f"the learning content is a JSON {type(payload).__name__}, expected an object of tables")
    result: dict[str, list[tuple]] = {}
    for table in tables:
        if table.name not in payload:
            raise LearningContentError(f"table {table.name}: missing from the learning content (no key {table.name!r})")
        records = payload[table.name]
        if not isinstance(records, list):
            raise LearningContentError(f"table {table.name}: expected a list of records, got a {type(records).__name__}")
        rows = []
        seen: set[str] = set()
        plan = compile_table(table)
        for position, record in enumerate(records):
            row = _row(table, plan, record, position)
            if row[0] in seen:
                raise LearningContentError(f"table {table.name}: record {row[0]} appears twice (id must be unique)")
            seen.add(row[0])
            rows.append(row)
        result[table.name] = rows
    return result
