"""Check the warehouse against what the copy saw, before any success webhook.

* full tables: the row count in the warehouse equals the count taken in ``pg_dump``'s snapshot
  (``dump`` XCom ``source_counts``);
* incremental tables: the count equals the source's count in the copy's snapshot (``source_count``, or
  ``rows_after`` when the copy did not count the source) plus the rows deleted at the source that the warehouse
  keeps (``deleted_at_source``, reported, not a failure), and ``max(key)`` equals the source's ``max(key)`` the copy
  read (``source_max_id``); rows the copy found *missing in the warehouse* below its watermark (``missing``:
  a loss, the copy put them back) fail the run naming the table, the number of rows and the first key ranges;
* the row-level comparison itself (:func:`diff_keys`) runs inside the copy's transactions, where the source
  snapshot and the warehouse's rows are those the copy used: key-range bucketed ``(count, sum(key))`` on both
  sides, only where the totals disagree, drilling into the differing buckets only, so the differing keys are
  found in O(buckets x depth + differing rows) and no scan happens where the totals agree;
* learning-content tables: the count equals what the load wrote.

Every mismatch is collected, then one :class:`VerificationError` names each table with both numbers.
Identifiers go through :class:`psycopg.sql.Identifier`; counts are exact (``count(*)``), read in one
repeatable-read, read-only transaction so all tables are seen at the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from psycopg import sql

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
    what: str  # "rows", "max(id)" / "max(<key>)" or "missing"
    expected: int | None
    actual: int | None
    detail: str = ""

    def __str__(self) -> str:
        if self.what == "missing":
            return (f"table {self.table}: {self.actual} row(s) the source has were missing in the warehouse "
                    f"(keys {self.detail}): a loss, not a source delete; the copy put them back from the source, "
                    f"find what deleted them in the warehouse")
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
        if source_count is not None:  # + the rows deleted at the source that the warehouse keeps
            counts[key] = int(source_count) + int(result.get("deleted_at_source") or 0)
        else:
            counts[key] = int(result["rows_after"])
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


#: tables counted per warehouse transaction by :func:`verify_counts`
COUNT_BATCH = 500


def count_rows(db, tables: Iterable[str]) -> dict[str, int | None]:
    """Exact ``count(*)`` of each ``schema.table`` on an open psycopg connection; ``None`` if missing.

    Runs in the caller's transaction (so the dump step can call it inside its exported snapshot).
    """
    from pgrepl.catalog import count_rows as count_present

    keys = [table_key(t) for t in tables]
    present = existing_tables(db, keys)
    counted = count_present(db, [(t.schema, t.name) for t in map(TableName.parse, keys) if f"{t.schema}.{t.name}" in present])
    return {key: counted.get(key) for key in keys}


def max_ids(db, tables: Iterable[str], key_columns: Mapping[str, str] | None = None) -> dict[str, int | None]:
    """``max(key)`` of each ``schema.table`` on an open psycopg connection (key ``id`` unless ``key_columns`` names it)."""
    result: dict[str, int | None] = {}
    for key in (table_key(t) for t in tables):
        table = TableName.parse(key)
        column = (key_columns or {}).get(key, "id")
        query = sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(table.schema, table.name))
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


def incremental_findings(incremental: Iterable[Mapping] | None) -> dict:
    """What the incremental copies found by comparing rows (pure), from their XComs.

    :return: ``{"losses": [Mismatch], "deleted_at_source": {table: rows kept}, "deleted_propagated": {table: rows},
        "late_copied": {table: rows}, "key_columns": {table: key}}`` (tables as ``schema.table``)
    """
    found: dict = {"losses": [], "deleted_at_source": {}, "deleted_propagated": {}, "late_copied": {}, "key_columns": {}}
    for result in incremental or []:
        if not result:
            continue
        table = table_key(str(result["table"]))
        if result.get("key"):
            found["key_columns"][table] = str(result["key"])
        if result.get("missing"):
            found["losses"].append(Mismatch(table, "missing", None, int(result["missing"]),
                                            ", ".join(result.get("missing_ranges") or [])))
        for name in ("deleted_at_source", "deleted_propagated", "late_copied"):
            if result.get(name):
                found[name][table] = int(result[name])
    return found


def verify_counts(target: PgConn, expected: Mapping[str, int],
                  expected_max_ids: Mapping[str, int | None] | None = None,
                  key_columns: Mapping[str, str] | None = None,
                  losses: Sequence[Mismatch] = ()) -> dict:
    """Compare the warehouse with ``expected``; raise :class:`VerificationError` listing ALL mismatches.

    :param target: the warehouse
    :param expected: ``{"public.answers": rows, ...}`` (``answers`` means ``public.answers``)
    :param expected_max_ids: ``{"public.answers": max_key}`` for incremental tables
    :param key_columns: ``{"public.events": "event_id"}``: the key of incremental tables not keyed ``id``
    :param losses: rows the copies found missing in the warehouse (:func:`incremental_findings`): each fails
    :return: ``{"tables": n, "rows": total, "counts": {table: rows}}``
    """
    expected = {table_key(k): int(v) for k, v in expected.items()}
    expected_max = {table_key(k): v for k, v in (expected_max_ids or {}).items()}
    keys = {table_key(k): v for k, v in (key_columns or {}).items()}
    with target.connect() as db:
        # a count locks its table until the transaction ends: COUNT_BATCH tables per transaction, so thousands of
        # tables never fill the server's lock table (the night's writers are done; nothing moves meanwhile)
        actual: dict[str, int | None] = {}
        tables = list(expected)
        for start in range(0, len(tables), COUNT_BATCH):
            actual.update(count_rows(db, tables[start:start + COUNT_BATCH]))
            db.rollback()
        present = [t for t in expected_max if actual.get(t) is not None]
        actual_max = {}
        for start in range(0, len(present), COUNT_BATCH):
            actual_max.update(max_ids(db, present[start:start + COUNT_BATCH], keys))
            db.rollback()
    mismatches = list(losses) + compare(expected, actual, expected_max, actual_max)
    if mismatches:
        raise VerificationError(mismatches)
    return {"tables": len(actual), "rows": sum(v or 0 for v in actual.values()), "counts": dict(sorted(actual.items()))}


# -- row-level comparison by key ranges (runs inside the incremental copy's transactions) ----------------------

#: buckets a differing key range is split into at each level
BUCKETS = 64
#: a differing bucket holding at most this many rows (on either side) is compared key by key
LEAF_ROWS = 4096


@dataclass
class KeyDiff:
    """Keys that differ between the source and the warehouse in a key range."""

    missing: list[int] = field(default_factory=list)  # the source has them, the warehouse lacks them
    extra: list[int] = field(default_factory=list)  # the warehouse has them, the source no longer does
    buckets: int = 0  # bucket rows compared (both sides)
    queries: int = 0  # queries run on each side


def _range(key: str, lo: int | None, hi: int | None) -> sql.Composed:
    """``key > lo AND key <= hi`` (``None``: unbounded)."""
    parts = [sql.SQL("true")]
    if lo is not None:
        parts.append(sql.SQL("{} > {}").format(sql.Identifier(key), sql.Literal(int(lo))))
    if hi is not None:
        parts.append(sql.SQL("{} <= {}").format(sql.Identifier(key), sql.Literal(int(hi))))
    return sql.SQL(" AND ").join(parts)


def key_stats(cur, table: TableName, key: str, lo: int | None = None, hi: int | None = None) -> tuple[int, int, int | None, int | None]:
    """``(count, sum(key), min(key), max(key))`` of the rows with ``lo < key <= hi`` (one index range scan)."""
    count, total, low, high = cur.execute(sql.SQL(
        "SELECT count(*), coalesce(sum({k}), 0), min({k}), max({k}) FROM {t} WHERE {w}").format(
        k=sql.Identifier(key), t=sql.Identifier(table.schema, table.name), w=_range(key, lo, hi))).fetchone()
    return int(count), int(total), low, high


def _buckets(cur, table: TableName, key: str, lo: int, hi: int, step: int) -> dict[int, tuple[int, int]]:
    rows = cur.execute(sql.SQL(
        "SELECT ({k}::int8 - {lo} - 1) / {step} AS b, count(*), sum({k}) FROM {t} WHERE {w} GROUP BY 1").format(
        k=sql.Identifier(key), lo=sql.Literal(int(lo)), step=sql.Literal(int(step)),
        t=sql.Identifier(table.schema, table.name), w=_range(key, lo, hi))).fetchall()
    return {int(b): (int(n), int(s)) for b, n, s in rows}


def _keys(cur, table: TableName, key: str, lo: int, hi: int) -> set[int]:
    rows = cur.execute(sql.SQL("SELECT {k} FROM {t} WHERE {w}").format(
        k=sql.Identifier(key), t=sql.Identifier(table.schema, table.name), w=_range(key, lo, hi))).fetchall()
    return {int(r[0]) for r in rows}


def diff_keys(src_cur, tgt_cur, table: TableName, key: str, lo: int, hi: int, *,
              buckets: int = BUCKETS, leaf_rows: int = LEAF_ROWS) -> KeyDiff:
    """The keys that differ between source and warehouse in ``lo < key <= hi``.

    Splits the range into ``buckets`` equal key intervals, compares ``(count, sum(key))`` per bucket on both
    sides, and goes down only into the buckets that differ; a bucket of at most ``leaf_rows`` rows (or as
    narrow as ``buckets`` keys) is compared key by key. Equal buckets are never read again.
    """
    diff = KeyDiff()
    todo: list[tuple[int, int, int | None]] = [(int(lo), int(hi), None)]
    while todo:
        low, high, rows = todo.pop()
        if high <= low:
            continue
        if (rows is not None and rows <= leaf_rows) or high - low <= buckets:
            source_keys, target_keys = _keys(src_cur, table, key, low, high), _keys(tgt_cur, table, key, low, high)
            diff.queries += 1
            diff.missing += source_keys - target_keys
            diff.extra += target_keys - source_keys
            continue
        step = -(-(high - low) // buckets)
        source, target = _buckets(src_cur, table, key, low, high, step), _buckets(tgt_cur, table, key, low, high, step)
        diff.queries += 1
        diff.buckets += len(source) + len(target)
        for bucket in sorted(set(source) | set(target)):
            if source.get(bucket) != target.get(bucket):
                start = low + bucket * step
                todo.append((start, min(start + step, high),
                             max(source.get(bucket, (0, 0))[0], target.get(bucket, (0, 0))[0])))
    diff.missing.sort()
    diff.extra.sort()
    return diff


def key_ranges(keys: Sequence[int], limit: int = 5) -> list[str]:
    """``[1, 2, 3, 7, 9, 10]`` -> ``["1-3", "7", "9-10"]`` (the first ``limit`` runs of consecutive keys)."""
    runs: list[list[int]] = []
    for k in sorted(keys):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        elif not runs or k != runs[-1][1]:
            runs.append([k, k])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        text.append(f"... ({len(runs) - limit} more range(s))")
    return text
