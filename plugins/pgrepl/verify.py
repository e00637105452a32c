"""Check the warehouse against what the copy saw, before any success webhook.

* full tables: the row count in the warehouse equals the count taken in ``pg_dump``'s snapshot
  (``dump`` XCom ``source_counts``);
* incremental tables: the count equals the source's count in the copy's snapshot (``source_count``, or
  ``rows_after`` when the copy did not count the source) and ``max(id)`` equals the source's ``max(id)``
  the copy read (``source_max_id``);
* learning-content tables: the count equals what the load wrote.

Every mismatch is collected, then one :class:`VerificationError` names each table with both numbers.
Identifiers go through :class:`psycopg.sql.Identifier`; counts are exact (``count(*)``), read in one
repeatable-read, read-only transaction so all tables are seen at the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pgrepl import sqlfiles
from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn
from pgrepl.settings import TableName


class VerificationError(PgreplError, RuntimeError):
    """The warehouse differs from what the copy saw; the message lists every difference. A retry would count the
    same rows."""

    retryable = False

    def __init__(self, mismatches: Sequence["Mismatch"]) -> None:
        self.mismatches = list(mismatches)
        lines = [str(m) for m in self.mismatches]
        super().__init__(f"warehouse verification failed for {len(lines)} table(s): " + "; ".join(lines))


@dataclass(frozen=True)
class Mismatch:
    table: str
    what: str  # "rows" or "max(id)"
    expected: int | None
    actual: int | None

    def __str__(self) -> str:
        if self.actual is None and self.what == "rows":
            return f"table {self.table} is missing from the warehouse (expected {self.expected} rows)"
        return f"table {self.table}: {self.expected} {self.what} expected (source), {self.actual} in the warehouse"


def table_key(name: str) -> str:
    """``answers`` / ``public.answers`` -> ``public.answers`` (the form of the ``dump`` XCom)."""
    table = TableName.parse(name)
    return f"{table.schema}.{table.name}"


def expected_from_runs(dump: Mapping | None, incremental: Iterable[Mapping] | None = None,
                       learning_content: Mapping | None = None,
                       learning_content_schema: str = "public") -> tuple[dict[str, int], dict[str, int | None]]:
    """``(expected rows per table, expected max(id) per incremental table)`` from the tasks' XComs.

    :param dump: ``{"source_counts": {"public.answers": 123, ...}}``
    :param incremental: the mapped ``incremental`` results (``table``, ``source_count`` / ``rows_after``,
        ``source_max_id``)
    :param learning_content: ``{"tables": {name: rows}}`` or ``None`` when the step was skipped
    """
    counts = {table_key(name): int(rows) for name, rows in ((dump or {}).get("source_counts") or {}).items()}
    max_ids: dict[str, int | None] = {}
    for result in incremental or []:
        if not result:
            continue
        key = table_key(str(result["table"]))
        # the source's count in the copy's snapshot; rows_after when the copy did not count the source
        source_count = result.get("source_count")
        counts[key] = int(source_count if source_count is not None else result["rows_after"])
        if "source_max_id" in result:
            max_ids[key] = None if result["source_max_id"] is None else int(result["source_max_id"])
    for name, rows in ((learning_content or {}).get("tables") or {}).items():
        counts[f"{learning_content_schema}.{name}" if "." not in name else name] = int(rows)
    return counts, max_ids


def existing_tables(db, keys: Iterable[str]) -> set[str]:
    """Which of ``schema.table`` keys exist (tables, partitioned tables or views) in ``db``."""
    pairs = [TableName.parse(key) for key in keys]
    if not pairs:
        return set()
    rows = db.execute(sqlfiles.load("warehouse/existing_tables"),
                      ([p.schema for p in pairs], [p.name for p in pairs])).fetchall()
    return {row[0] for row in rows}


def count_rows(db, tables: Iterable[str]) -> dict[str, int | None]:
    """Exact ``count(*)`` of each ``schema.table`` on an open psycopg connection; ``None`` if missing.

    Runs in the caller's transaction (so the dump step can call it inside its exported snapshot).
    """
    from pgrepl.catalog import count_rows as count_present

    keys = [table_key(t) for t in tables]
    present = existing_tables(db, keys)
    counted = count_present(db, [(t.schema, t.name) for t in map(TableName.parse, keys) if f"{t.schema}.{t.name}" in present])
    return {key: counted.get(key) for key in keys}


def max_ids(db, tables: Iterable[str]) -> dict[str, int | None]:
    """``max(id)`` of each ``schema.table`` on an open psycopg connection."""
    from psycopg import sql

    result: dict[str, int | None] = {}
    for key in (table_key(t) for t in tables):
        table = TableName.parse(key)
        query = sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier("id"), sql.Identifier(table.schema, table.name))
        result[key] = db.execute(query).fetchone()[0]
    return result


def compare(expected: Mapping[str, int], actual: Mapping[str, int | None],
            expected_max_ids: Mapping[str, int | None] | None = None,
            actual_max_ids: Mapping[str, int | None] | None = None) -> list[Mismatch]:
    """Every difference between expected and actual counts / max ids (pure; sorted by table)."""
    mismatches = []
    for table in sorted(expected):
        if actual.get(table) != expected[table]:
            mismatches.append(Mismatch(table, "rows", expected[table], actual.get(table)))
    for table in sorted(expected_max_ids or {}):
        if actual.get(table) is None:
            continue  # already reported missing
        got = (actual_max_ids or {}).get(table)
        if got != expected_max_ids[table]:
            mismatches.append(Mismatch(table, "max(id)", expected_max_ids[table], got))
    return mismatches


def verify_counts(target: PgConn, expected: Mapping[str, int],
                  expected_max_ids: Mapping[str, int | None] | None = None) -> dict:
    """Compare the warehouse with ``expected``; raise :class:`VerificationError` listing ALL mismatches.

    :param target: the warehouse
    :param expected: ``{"public.answers": rows, ...}`` (``answers`` means ``public.answers``)
    :param expected_max_ids: ``{"public.answers": max_id}`` for incremental tables
    :return: ``{"tables": n, "rows": total, "counts": {table: rows}}``
    """
    expected = {table_key(k): int(v) for k, v in expected.items()}
    expected_max = {table_key(k): v for k, v in (expected_max_ids or {}).items()}
    with target.connect() as db:
        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        actual = count_rows(db, expected)
        present = [t for t in expected_max if actual.get(t) is not None]
        actual_max = max_ids(db, present)
        db.rollback()
    mismatches = compare(expected, actual, expected_max, actual_max)
    if mismatches:
        raise VerificationError(mismatches)
    return {"tables": len(actual), "rows": sum(v or 0 for v in actual.values()), "counts": dict(sorted(actual.items()))}
