"""Incremental copy of append-only tables: the rows of the source whose key is above the target's ``max(key)``,
the rows committed late below it, and (per table) the rows deleted at the source.

The key (:func:`choose_key`): ``BACKUP_MODE``'s ``key``, else an integer ``id``, else the single-column integer
primary key; :func:`check_incremental_keys` checks every table in one catalog query at ``preflight``.

The rows stream from ``COPY (SELECT ...) TO STDOUT`` on the source into ``COPY ... FROM STDIN`` on the target,
chunk by chunk (nothing on disk, nothing whole in memory), in binary format when every column has the same
built-in type on both sides, in text format otherwise. Everything written to the target happens in ONE
transaction: a failure anywhere (network, killed session, constraint) leaves the target as it was.

The source is read in one ``REPEATABLE READ, READ ONLY`` transaction, so ``max(key)``, ``count(*)`` and the
copied rows all come from the same snapshot (``source_count`` is what verification compares ``rows_after`` to).

In the same target transaction, after the new rows:

* **late commits** -- the key window ``(recheck_from, old watermark]`` that the recorded source snapshot
  horizons allow (:func:`next_recheck_from`, bookkeeping in ``_pgrepl.incremental_state``) is compared by
  ``(count, sum(key))``, then by buckets where it differs (:func:`pgrepl.verify.diff_keys`); missing rows are copied;
* **deletes and losses** -- when the source is counted and the totals disagree, the whole key range is compared by
  buckets: rows deleted at the source are deleted (``"deletes": "propagate"``) or kept and counted; rows missing
  in the warehouse are copied back and reported (``missing``: verify fails the run).

Guards:

* target table missing or empty -> *bootstrap*: create it from the source definition (columns, types,
  collations, NOT NULL, defaults that use no sequence, partition tree, primary key, then the other indexes) and
  copy every row;
* target ``max(key)`` above the source's -> :class:`SourceRewoundError`, nothing copied;
* no usable key -> :class:`NoUsableKeyError`.

Foreign keys (mapped tasks run in parallel, so "parents first" is not enough): bootstrapped tables get no
foreign keys at all. When the target already has foreign keys from the table to other *incremental* tables,
the parents are caught up first in the same target transaction, from the same source snapshot, under table
locks taken in one global (name) order: every referenced row is there before the child rows arrive, whatever
order the tasks run in, and no two tasks can deadlock.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import psycopg
from psycopg import sql

from pgrepl import sqlfiles, verify
from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn
from pgrepl.settings import TableMode, TableName

#: integer types an ``id`` watermark may have: int2, int4, int8
INTEGER_TYPE_OIDS = {21: "smallint", 23: "integer", 20: "bigint"}
#: OIDs below this are built-in types, identical in every database: safe for binary COPY
FIRST_NORMAL_OID = 16384
#: bytes gathered from the source before one write to the target
BLOCK_SIZE = 128 * 1024
#: default bytes between two progress callbacks (and progress log lines)
PROGRESS_EVERY = 64 * 1024 * 1024
APPLICATION_NAME = "pgrepl-incremental"

log = logging.getLogger(__name__)


# -- errors -------------------------------------------------------------------------------------

class IncrementalError(PgreplError, RuntimeError):
    """The incremental copy of a table cannot proceed; unless said otherwise, a retry would meet the same data."""

    retryable = False


class TableNotFoundError(IncrementalError):
    """The table is not in the source (or is not a table)."""


class NoUsableKeyError(IncrementalError):
    """The table has no usable incremental key (``key``, else an integer ``id``, else a one-column integer primary key)."""


#: the former name (the key used to be ``id`` only)
NoIntegerIdError = NoUsableKeyError


class SourceRewoundError(IncrementalError):
    """The target holds ids above the source's maximum: the source was restored or rewound."""


class SchemaMismatchError(IncrementalError):
    """Source and target definitions of the table differ in a way that would lose data."""


class ForeignKeyError(IncrementalError):
    """New rows reference rows the target lacks in a table that is not copied incrementally."""


class CopyMismatchError(IncrementalError):
    """The number of rows written differs from the number of rows read."""

    retryable = True


# -- pure helpers -------------------------------------------------------------------------------

def topological_order(tables: Sequence[TableName], edges: Iterable[tuple[TableName, TableName]]) -> list[TableName]:
    """``tables`` with every parent before its children; ``edges`` are ``(child, parent)`` pairs.

    Stable: tables keep their given order unless an edge moves them. Edges to tables outside ``tables`` and
    self-references are ignored; tables in a cycle keep their given order after the others.
    """
    index = {table: i for i, table in enumerate(tables)}
    parents: dict[TableName, set[TableName]] = {t: set() for t in tables}
    for child, parent in edges:
        if child in index and parent in index and child != parent:
            parents[child].add(parent)
    ordered: list[TableName] = []
    placed: set[TableName] = set()
    remaining = list(tables)
    while remaining:
        ready = [t for t in remaining if parents[t] <= placed]
        if not ready:  # a cycle: keep the given order for what is left
            ordered += remaining
            break
        first = ready[0]
        ordered.append(first)
        placed.add(first)
        remaining.remove(first)
    return ordered


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_sql: str
    not_null: bool = False
    default_sql: str | None = None
    generated: str = ""
    collation_sql: str | None = None
    default_uses_sequence: bool = False

    @property
    def keeps_default(self) -> bool:
        """Bootstrap keeps plain defaults, not those drawing from a sequence (serial, nextval, identity)."""
        return bool(self.default_sql) and not self.generated and not self.default_uses_sequence \
            and "nextval(" not in (self.default_sql or "")


def column_ddl(column: Column) -> sql.Composed:
    """One column of a bootstrap ``CREATE TABLE``; type/default/collation are DDL text from the source catalog."""
    parts = [sql.Identifier(column.name), sql.SQL(column.type_sql)]
    if column.collation_sql:
        parts.append(sql.SQL("COLLATE " + column.collation_sql))
    if column.generated == "s":
        parts.append(sql.SQL(f"GENERATED ALWAYS AS ({column.default_sql}) STORED"))
    elif column.keeps_default:
        parts.append(sql.SQL("DEFAULT " + column.default_sql))
    if column.not_null:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def copy_columns(table: TableName, source: Sequence[Column], target: Sequence[Column]) -> tuple[list[str], bool]:
    """Columns to copy (the source's stored ones) and whether binary COPY is safe.

    Raises :class:`SchemaMismatchError` when the target lacks a source column (its data would be lost).
    Binary needs, column by column, the same built-in type on both sides; anything else goes as text,
    which the target converts.
    """
    target_by_name = {c.name: c for c in target}
    wanted = [c for c in source if not c.generated]
    missing = [c.name for c in wanted if c.name not in target_by_name]
    if missing:
        raise SchemaMismatchError(
            f"table {table}: the target lacks source column(s) {', '.join(missing)}; add them to the target "
            f"table (ALTER TABLE ... ADD COLUMN) or drop the target table so that the next run bootstraps it"
        )
    generated_on_target = [c.name for c in wanted if target_by_name[c.name].generated]
    if generated_on_target:
        raise SchemaMismatchError(f"table {table}: column(s) {', '.join(generated_on_target)} are generated on the target only")
    binary = all(
        c.type_oid == target_by_name[c.name].type_oid and c.type_oid < FIRST_NORMAL_OID for c in wanted
    )
    return [c.name for c in wanted], binary


def check_watermark(table: TableName, target_max: int | None, source_max: int | None, key: str = "id") -> None:
    """Fail when the target holds keys the source no longer has (the source was restored or rewound)."""
    if target_max is None:
        return
    if source_max is None or target_max > source_max:
        raise SourceRewoundError(
            f"table {table}: target max({key}) = {target_max} is above source max({key}) = "
            f"{'none (empty table)' if source_max is None else source_max}; the source was restored or rewound. "
            f"Nothing copied. Check the source, then drop or truncate the target table to bootstrap it again"
        )


@dataclass
class TableResult:
    """What one table's copy did; ``as_dict`` is the XCom."""

    table: str
    mode: str  # "append" | "bootstrap"
    rows_before: int
    copied: int
    rows_after: int
    source_count: int | None
    source_max_id: int | None
    target_max_id_before: int | None
    format: str
    seconds: float
    copy_seconds: float
    rows_per_second: float
    bytes: int = 0
    created: bool = False
    caught_up: list[dict] = field(default_factory=list)
    key: str = "id"
    late_copied: int = 0  # rows committed late below the watermark, copied this run
    missing: int = 0  # rows the source has that were missing in the warehouse outside the window: a loss
    missing_ranges: list[str] = field(default_factory=list)
    deleted_at_source: int = 0  # rows deleted at the source that the warehouse keeps ("deletes": "ignore")
    deleted_propagated: int = 0  # rows deleted at the source deleted in the warehouse this run
    window: list | None = None  # (low, high] of keys checked for late commits; low None = the whole range
    buckets_compared: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# -- database work ------------------------------------------------------------------------------

def _ident(table: TableName) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def _relation(cur, table: TableName) -> tuple[int, str] | None:
    row = cur.execute(sqlfiles.load("both/relation"), {"schema": table.schema, "name": table.name}).fetchone()
    return (row[0], row[1]) if row else None


def _columns(cur, oid: int) -> list[Column]:
    rows = cur.execute(sqlfiles.load("both/columns"), {"oid": oid}).fetchall()
    return [Column(*row) for row in rows]


@dataclass(frozen=True)
class KeyChoice:
    """The incremental key of one table (``column``), or why it has none (``problem``, one line)."""

    table: TableName
    column: str | None
    problem: str | None = None
    relkind: str | None = None


def _key_fix(table: TableName) -> str:
    return (f'name an integer column that grows with each insert in BACKUP_MODE: {{"{table}": {{"mode": "incremental", '
            f'"key": "<column>"}}}}, or use mode "none" or a full copy for this table')


def choose_key(table: TableName, named: str | None, row: Sequence | None) -> KeyChoice:
    """The key of ``table`` from one row of ``source/incremental_keys.sql`` (pure): ``named`` if given, else an integer ``id``,
    else the single-column integer primary key. Only integer types are accepted (see README, "keys")."""
    if row is None or row[2] is None:
        return KeyChoice(table, None, f"table {table}: absent in the source database; check BACKUP_MODE")
    (_, _, relkind, _, key_exists, key_type_oid, key_type, id_type_oid, id_type, pk_columns, pk_column,
     pk_type_oid) = row
    if relkind not in ("r", "p"):
        return KeyChoice(table, None, f"table {table}: not a table in the source (relkind {relkind!r}); check BACKUP_MODE",
                         relkind)
    if named is not None:
        if not key_exists:
            return KeyChoice(table, None, f"table {table}: key column {named!r} does not exist in the source table; "
                                          + _key_fix(table), relkind)
        if key_type_oid not in INTEGER_TYPE_OIDS:
            return KeyChoice(table, None, f"table {table}: key column {named!r} is {key_type}, not an integer (smallint, "
                                          f"integer, bigint); " + _key_fix(table), relkind)
        return KeyChoice(table, named, None, relkind)
    if id_type_oid in INTEGER_TYPE_OIDS:
        return KeyChoice(table, "id", None, relkind)
    if pk_column is not None and pk_type_oid in INTEGER_TYPE_OIDS:
        return KeyChoice(table, pk_column, None, relkind)
    why = [f"column id is {id_type}, not an integer" if id_type_oid is not None else "no column id"]
    if pk_columns:
        cols = ", ".join(pk_columns)
        why.append(f"primary key ({cols}) " + ("has several columns" if len(pk_columns) > 1 else "is not an integer"))
    else:
        why.append("no primary key")
    return KeyChoice(table, None, f"table {table}: no usable incremental key ({'; '.join(why)}); " + _key_fix(table), relkind)


def resolve_keys(cur, wanted: Sequence[tuple[TableName, str | None]]) -> list[KeyChoice]:
    """:func:`choose_key` for several tables with ONE catalog query (``source/incremental_keys.sql``)."""
    if not wanted:
        return []
    rows = cur.execute(sqlfiles.load("source/incremental_keys"), {
        "schemas": [t.schema for t, _ in wanted], "names": [t.name for t, _ in wanted],
        "keys": [k for _, k in wanted]}).fetchall()
    return [choose_key(table, named, row) for (table, named), row in zip(wanted, rows)]


def check_incremental_keys(db, backup_mode: Mapping[TableName, "TableMode"]) -> list[KeyChoice]:
    """Preflight: every ``incremental`` table of ``BACKUP_MODE`` has a usable key in the source (one query).

    :param db: an open connection to the source
    :raises NoUsableKeyError: one line naming each table without a usable key, its column and the fix
    """
    wanted = [(t, m.key) for t, m in sorted(backup_mode.items(), key=lambda item: str(item[0])) if m.incremental]
    choices = resolve_keys(db.cursor(), wanted)
    problems = [c.problem for c in choices if c.problem]
    if problems:
        raise NoUsableKeyError("BACKUP_MODE: " + "; ".join(problems))
    return choices


def foreign_keys(cur, tables: Sequence[TableName]) -> list[tuple[TableName, TableName, str]]:
    """``(child, parent, constraint)`` for every foreign key whose child is one of ``tables``."""
    if not tables:
        return []
    rows = cur.execute(
        sqlfiles.load("both/foreign_keys"),
        {"schemas": [t.schema for t in tables], "names": [t.name for t in tables]},
    ).fetchall()
    return [(TableName(cs, cn), TableName(ps, pn), con) for cs, cn, ps, pn, con in rows]


def order_incremental_tables(source: PgConn, tables: list[TableName]) -> list[TableName]:
    """``tables`` ordered parents first by the source's foreign keys among them (stable otherwise).

    The order is a courtesy for the grid; correctness does not depend on it (see the module docstring).
    """
    if len(tables) < 2:
        return list(tables)
    with source.connect(autocommit=True, application_name=APPLICATION_NAME) as conn:
        edges = [(child, parent) for child, parent, _ in foreign_keys(conn.cursor(), tables)]
    return topological_order(list(tables), edges)


def _parents_to_catch_up(tgt_cur, table: TableName, incremental: set[TableName]) -> list[TableName]:
    """Incremental tables the target's foreign keys make ``table`` depend on, transitively, parents first."""
    found: set[TableName] = set()
    edges: list[tuple[TableName, TableName]] = []
    frontier = [table]
    while frontier:
        fks = foreign_keys(tgt_cur, frontier)
        frontier = []
        for child, parent, _ in fks:
            if parent in incremental and parent != child:
                edges.append((child, parent))
                if parent not in found and parent != table:
                    found.add(parent)
                    frontier.append(parent)
    return topological_order(sorted(found, key=str), edges)


class _Stream:
    """Copies the rows of one query from a source cursor into a target table, chunk by chunk."""

    def __init__(self, progress: Callable[[TableName, int, int], None] | None, progress_every: int, logger) -> None:
        self.progress = progress
        self.progress_every = max(1, progress_every)
        self.log = logger

    def _report(self, table: TableName, rows: int, nbytes: int) -> None:
        if self.progress is not None:
            self.progress(table, rows, nbytes)
        else:
            self.log.info("table %s: %s rows, %.1f MB streamed so far", table, rows, nbytes / 1e6)

    def run(self, src_cur, tgt_cur, table: TableName, columns: list[str], where: sql.Composable | None,
            binary: bool, freeze: bool) -> tuple[int, int]:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        select = sql.SQL("SELECT {cols} FROM {table}").format(cols=cols, table=_ident(table))
        if where is not None:
            select += sql.SQL(" WHERE ") + where
        fmt = "FORMAT BINARY" if binary else "FORMAT TEXT"
        options = [fmt, "FREEZE"] if freeze else [fmt]
        copy_out = sql.SQL("COPY ({select}) TO STDOUT ({fmt})").format(select=select, fmt=sql.SQL(fmt))
        copy_in = sql.SQL("COPY {table} ({cols}) FROM STDIN ({opts})").format(
            table=_ident(table), cols=cols, opts=sql.SQL(", ".join(options)))
        rows = nbytes = 0
        next_report = self.progress_every
        with tgt_cur.copy(copy_in) as sink:
            write = sink.write
            with src_cur.copy(copy_out) as feed:
                # the source sends one message per row: gather them into blocks of BLOCK_SIZE bytes before
                # handing them on (40 % less client CPU than a write per row); memory stays at one block
                block = bytearray()
                for chunk in feed:
                    block += chunk
                    rows += 1
                    if len(block) >= BLOCK_SIZE:
                        write(block)
                        nbytes += len(block)
                        block = bytearray()
                        if nbytes >= next_report:
                            next_report = nbytes + self.progress_every
                            self._report(table, rows, nbytes)
                if block:
                    write(block)
                    nbytes += len(block)
        read = src_cur.rowcount
        written = tgt_cur.rowcount
        if binary and rows:
            rows -= 1  # the binary trailer is one more message
        if read >= 0 and written >= 0 and read != written:
            raise CopyMismatchError(f"table {table}: read {read} rows from the source but the target took {written}")
        return (written if written >= 0 else rows), nbytes


def _bootstrap_create(src_cur, tgt_cur, table: TableName, columns: list[Column], src_oid: int, relkind: str,
                      logger) -> None:
    """The table as in the source; a partitioned parent with its whole partition tree (rows routed by the parent)."""
    tgt_cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    ddl = sql.SQL("CREATE TABLE {table} ({cols})").format(
        table=_ident(table), cols=sql.SQL(", ").join(column_ddl(c) for c in columns))
    if relkind == "p":
        key_sql = src_cur.execute(sqlfiles.load("source/partition_key"), {"oid": src_oid}).fetchone()[0]
        ddl += sql.SQL(" PARTITION BY " + key_sql)
    tgt_cur.execute(ddl)
    if relkind != "p":
        return
    partitions = src_cur.execute(sqlfiles.load("source/partition_tree"), {"oid": src_oid}).fetchall()
    for schema, name, parent_schema, parent_name, bound_sql, key_sql in partitions:
        tgt_cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        part = sql.SQL("CREATE TABLE {part} PARTITION OF {parent} " + bound_sql).format(
            part=sql.Identifier(schema, name), parent=sql.Identifier(parent_schema, parent_name))
        if key_sql:
            part += sql.SQL(" PARTITION BY " + key_sql)
        tgt_cur.execute(part)
    logger.info("table %s: bootstrap created the partitioned table with %s partition(s)", table, len(partitions))


def _bootstrap_indexes(src_cur, tgt_cur, table: TableName, src_oid: int, logger) -> list[str]:
    """Primary key, then the source's other indexes (built after the rows: faster than row by row).

    On a partitioned parent the indexes are created on the parent (``ON``, not ``ON ONLY``): PostgreSQL builds
    and attaches one on each partition.
    """
    created = []
    for con_name, con_sql, index_sql, is_primary in src_cur.execute(sqlfiles.load("source/table_indexes"), {"oid": src_oid}).fetchall():
        if is_primary and con_name:
            tgt_cur.execute(sql.SQL("ALTER TABLE {table} ADD CONSTRAINT {name} " + con_sql).format(
                table=_ident(table), name=sql.Identifier(con_name)))
            created.append(con_name)
        else:
            tgt_cur.execute(sql.SQL(index_sql.replace(" ON ONLY ", " ON ", 1)))
            created.append(index_sql.split(" ON ")[0].rsplit(" ", 1)[-1])
    logger.info("table %s: bootstrap built %s", table, ", ".join(created) or "no index")
    return created


# -- bookkeeping in the warehouse: late-commit window and kept deletes ---------------------------------------------

#: most copies remembered per table (each: watermark and source snapshot horizon)
MAX_HISTORY = 32
#: keys per statement when rows are fetched or deleted by key
KEYS_PER_STATEMENT = 10_000


def ensure_state(target: PgConn) -> None:
    """Create ``_pgrepl.incremental_state`` if needed (its own short transaction; parallel tasks serialised)."""
    with target.connect(application_name=APPLICATION_NAME) as db:
        db.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgrepl.incremental_state'))")
        db.execute(sqlfiles.load("warehouse/incremental_state"))
        db.commit()


def _load_state(tgt_cur, table: TableName) -> dict | None:
    row = tgt_cur.execute(sqlfiles.load("warehouse/incremental_state_get"), {"table": str(table)}).fetchone()
    if row is None:
        return None
    key, history, recheck_from, kept, kept_sum = row
    return {"key": key, "history": list(history or []), "recheck_from": None if recheck_from is None else int(recheck_from),
            "kept": int(kept), "kept_sum": int(kept_sum)}


def _save_state(tgt_cur, table: TableName, key: str, history: list[dict], recheck_from: int | None,
                kept: int, kept_sum: int) -> None:
    tgt_cur.execute(sqlfiles.load("warehouse/incremental_state_put"), {
        "table": str(table), "key": key, "history": json.dumps(history), "recheck_from": recheck_from,
        "kept": kept, "kept_sum": kept_sum})


def next_recheck_from(history: Sequence[Mapping]) -> tuple[int | None, list[dict]]:
    """Lowest key a row missed by the latest copy (``history[-1]``) can have, and the history still needed (pure).

    Each entry is one copy: ``w`` its watermark (source ``max(key)`` in its snapshot), ``xmin``/``xmax`` the horizon
    of that snapshot. A row the latest copy missed below its watermark belongs to a transaction running at its
    snapshot (xid >= ``xmin`` of the latest). Take the latest earlier copy j whose ``xmax`` <= that ``xmin``: such a
    transaction had no xid at copy j, i.e. had written nothing yet, so its keys were drawn after copy j's snapshot,
    above ``w_j``. One more copy back absorbs the microseconds between ``nextval()`` and the xid assignment of the
    same INSERT. ``None``: no such copy yet (first nights, or a transaction older than the history): the whole key
    range is checked next time.
    """
    history = [dict(h) for h in history][-MAX_HISTORY:]
    latest = history[-1]
    for j in range(len(history) - 2, -1, -1):
        if history[j]["xmax"] <= latest["xmin"]:
            if j == 0 or history[j - 1]["w"] is None:
                return None, history
            return int(history[j - 1]["w"]), history[j - 1:]
    return None, history


def _keys_where(key: str, keys: Sequence[int]) -> sql.Composed:
    return sql.SQL("{} = ANY({}::int8[])").format(sql.Identifier(key), sql.Literal("{" + ",".join(map(str, keys)) + "}"))


def _copy_keys(stream: "_Stream", src_cur, tgt_cur, table: TableName, key: str, names: list[str], keys: Sequence[int],
               binary: bool) -> int:
    copied = 0
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        copied += stream.run(src_cur, tgt_cur, table, names, _keys_where(key, keys[start:start + KEYS_PER_STATEMENT]),
                             binary, freeze=False)[0]
    return copied


def _delete_keys(tgt_cur, table: TableName, key: str, keys: Sequence[int]) -> int:
    deleted = 0
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        deleted += tgt_cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
            _ident(table), _keys_where(key, keys[start:start + KEYS_PER_STATEMENT]))).rowcount
    return deleted


# -- one table ------------------------------------------------------------------------------------------------------

def _sync_one(src_cur, tgt_cur, table: TableName, stream: _Stream, count_source: bool, logger, horizon: dict,
              mode: TableMode | None = None, role: str = "table") -> TableResult:
    started = time.monotonic()
    mode = mode or TableMode("incremental")
    choice = resolve_keys(src_cur, [(table, mode.key)])[0]
    if choice.problem:
        error = TableNotFoundError if choice.relkind is None or choice.relkind not in ("r", "p") else NoUsableKeyError
        raise error(choice.problem)
    key = choice.column
    k = sql.Identifier(key)
    src_rel = _relation(src_cur, table)
    src_columns = _columns(src_cur, src_rel[0])

    tgt_rel = _relation(tgt_cur, table)
    created = False
    target_max: int | None = None
    rows_before, sum_before, min_before = 0, 0, None
    if tgt_rel is None:
        logger.info("table %s: missing on the target: bootstrap (create from the source definition, copy every row)", table)
        _bootstrap_create(src_cur, tgt_cur, table, src_columns, src_rel[0], src_rel[1], logger)
        created = True
        tgt_columns = src_columns
        tgt_kind = src_rel[1]
    else:
        if tgt_rel[1] not in ("r", "p"):
            raise SchemaMismatchError(f"table {table}: the target object is not a table (relkind {tgt_rel[1]!r})")
        tgt_kind = tgt_rel[1]
        tgt_columns = _columns(tgt_cur, tgt_rel[0])
        if key not in {c.name for c in tgt_columns}:
            raise SchemaMismatchError(f"table {table}: the target has no key column {key!r}; add it or drop the target "
                                      f"table so that the next run bootstraps it")
        rows_before, sum_before, min_before, target_max = verify.key_stats(tgt_cur, table, key)
        if rows_before == 0:
            logger.info("table %s: empty on the target: bootstrap (copy every row)", table)
            target_max = None

    # the source's totals in the copy's snapshot: what the warehouse must hold once the copy is done
    stats = sql.SQL("count(*), coalesce(sum({k}), 0), min({k}), max({k})" if count_source
                    else "NULL::int8, NULL::int8, min({k}), max({k})").format(k=k)
    source_count, source_sum, source_min, source_max = src_cur.execute(
        sql.SQL("SELECT {} FROM {}").format(stats, _ident(table))).fetchone()
    check_watermark(table, target_max, source_max, key)

    names, binary = copy_columns(table, src_columns, tgt_columns)
    state = None if created or target_max is None else _load_state(tgt_cur, table)
    if state is not None and state["key"] != key:
        logger.info("table %s: key changed from %s to %s: the whole key range is checked", table, state["key"], key)
        state = None
    result_mode = "bootstrap" if target_max is None else "append"
    copy_started = time.monotonic()
    where = None if target_max is None else sql.SQL("{} > {}").format(k, sql.Literal(int(target_max)))
    if target_max is not None and source_max == target_max:
        copied, nbytes = 0, 0
    else:
        copied, nbytes = stream.run(src_cur, tgt_cur, table, names, where, binary,
                                    freeze=created and tgt_kind != "p")
    copy_seconds = time.monotonic() - copy_started

    late: list[int] = []
    missing: list[int] = []
    extra: list[int] = []
    window: list[int | None] | None = None
    buckets = 0
    # source deletes the warehouse keeps ("ignore"): remembered so that the totals agree without a new comparison
    kept, kept_sum = (state["kept"], state["kept_sum"]) if state and mode.deletes == "ignore" else (0, 0)
    deleted_propagated = 0
    if target_max is not None:
        # 1. late commits: rows committed after earlier copies' snapshots with keys below the watermark; only the
        #    window the snapshots allow (recheck_from, target_max] is compared, by (count, sum) then by buckets
        low = state["recheck_from"] if state else None
        window = [low, int(target_max)]
        src_win = verify.key_stats(src_cur, table, key, low, target_max)
        tgt_win = verify.key_stats(tgt_cur, table, key, low, target_max)
        if src_win[:2] != tgt_win[:2]:
            lows = [v for v in (src_win[2], tgt_win[2]) if v is not None]
            start = low if low is not None else min(lows) - 1
            diff = verify.diff_keys(src_cur, tgt_cur, table, key, start, int(target_max))
            buckets += diff.buckets
            late = diff.missing
            if late:
                _copy_keys(stream, src_cur, tgt_cur, table, key, names, late, binary)
                logger.info("table %s: %s late-committed row(s) below the watermark copied (keys %s)", table,
                            len(late), ", ".join(verify.key_ranges(late)))
        # 2. the whole table, only when the totals disagree: rows deleted at the source, rows lost in the warehouse
        if count_source:
            new_sum = 0
            if copied:
                new_sum = verify.key_stats(src_cur, table, key, target_max, source_max)[1]
            target_now = (rows_before + copied + len(late), sum_before + new_sum + sum(late))
            if target_now != (source_count + kept, source_sum + kept_sum):
                lows = [v for v in (source_min, min_before) if v is not None]
                diff = verify.diff_keys(src_cur, tgt_cur, table, key, min(lows) - 1, int(source_max if source_max is not None else target_max))
                buckets += diff.buckets
                missing, extra = diff.missing, diff.extra
                if missing:
                    _copy_keys(stream, src_cur, tgt_cur, table, key, names, missing, binary)
                    logger.error("table %s: %s row(s) the source has were missing in the warehouse (keys %s): copied "
                                 "back; verify fails the run", table, len(missing), ", ".join(verify.key_ranges(missing)))
                if mode.deletes == "propagate":
                    deleted_propagated = _delete_keys(tgt_cur, table, key, extra)
                    kept, kept_sum = 0, 0
                    if extra:
                        logger.info("table %s: %s row(s) deleted at the source deleted in the warehouse (keys %s)",
                                    table, len(extra), ", ".join(verify.key_ranges(extra)))
                else:
                    kept, kept_sum = len(extra), sum(extra)
            if kept:
                logger.warning("table %s: %s row(s) deleted at the source are kept in the warehouse (\"deletes\": "
                               "\"ignore\"); not a failure", table, kept)

    watermark = source_max if source_max is not None and (target_max is None or source_max > target_max) else target_max
    history = ([] if state is None else state["history"]) + [{"w": watermark, **horizon}]
    recheck_from, history = next_recheck_from(history)
    _save_state(tgt_cur, table, key, history, recheck_from, kept, kept_sum)

    if created:
        _bootstrap_indexes(src_cur, tgt_cur, table, src_rel[0], logger)
    seconds = time.monotonic() - started
    rows_after = rows_before + copied + len(late) + len(missing) - deleted_propagated
    result = TableResult(
        table=str(table), mode=result_mode, rows_before=rows_before, copied=copied, rows_after=rows_after,
        source_count=source_count, source_max_id=source_max, target_max_id_before=target_max,
        format="binary" if binary else "text", seconds=round(seconds, 3), copy_seconds=round(copy_seconds, 3),
        rows_per_second=round(copied / copy_seconds, 1) if copied and copy_seconds > 0 else 0.0,
        bytes=nbytes, created=created, key=key, late_copied=len(late), missing=len(missing),
        missing_ranges=verify.key_ranges(missing), deleted_at_source=kept, deleted_propagated=deleted_propagated,
        window=window, buckets_compared=buckets,
    )
    logger.info(
        "%s %s (%s, %s, key %s): rows before %s, copied %s, rows after %s (late commits %s, source count %s, source "
        "max %s, target max before %s) in %.2f s, %.0f rows/s",
        role, table, result_mode, result.format, key, rows_before, copied, result.rows_after, len(late), source_count,
        source_max, target_max, seconds, result.rows_per_second,
    )
    return result


def copy_incremental(
    source: PgConn,
    target: PgConn,
    table: TableName,
    *,
    incremental_tables: Iterable[TableName] = (),
    count_source: bool = True,
    progress: Callable[[TableName, int, int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    modes: Mapping[TableName, TableMode] | None = None,
) -> TableResult:
    """Copy the source rows of ``table`` with a key above the target's ``max(key)``; bootstrap if needed.

    In the same target transaction: rows committed late below the watermark (within the window the recorded
    source snapshots allow) are copied; when ``count_source`` and the totals disagree, the key ranges are compared
    by buckets: rows deleted at the source are deleted (``"deletes": "propagate"``) or counted as kept, rows
    missing in the warehouse are copied back and reported as a loss (``missing``: verify fails the run).

    :param source: the production database (read in one REPEATABLE READ, READ ONLY transaction)
    :param target: the warehouse (written in one transaction, committed at the end)
    :param table: the table, same schema and name on both sides
    :param incremental_tables: every incremental table of the run; the target's foreign keys from ``table``
        to one of them make this copy catch that parent up first, in the same transaction
    :param count_source: also ``count(*)`` the source table in the copy's snapshot (``source_count``) and
        reconcile deletes/losses; off: no whole-table check (late commits are still caught)
    :param progress: called as ``progress(table, rows, bytes)`` about every ``progress_every`` bytes
    :param modes: ``BACKUP_MODE`` entries (key, deletes) of ``table`` and of the parents caught up
    :return: the table's :class:`TableResult` (its ``caught_up`` lists parents caught up on the way)
    """
    logger = logger or log
    modes = dict(modes or {})
    incremental = set(incremental_tables) - {table}
    stream = _Stream(progress, progress_every, logger)
    app = f"{APPLICATION_NAME}:{table}"[:63]
    ensure_state(target)
    with target.connect(application_name=app) as tgt, source.connect(application_name=app) as src:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        src_cur, tgt_cur = src.cursor(), tgt.cursor()
        # qualified names in format_type / pg_get_expr / pg_get_indexdef on the target side too
        tgt_cur.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        # the same table never runs twice at once (a cleared task beside a running one), even before it exists
        tgt_cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(%s))", (f"pgrepl.incremental:{table}",))
        parents = _parents_to_catch_up(tgt_cur, table, incremental) if incremental else []
        if parents:
            logger.info("table %s: the target has foreign keys to incremental table(s) %s: catching them up first",
                        table, ", ".join(map(str, parents)))
        # Lock every table this copy writes, in one global order (by name) shared by all tasks: no deadlock,
        # whatever runs in parallel. The locks come BEFORE the source snapshot, so whatever another task
        # committed into these tables came from an older snapshot than ours (no false "rewound" alarm).
        for locked in sorted([*parents, table], key=str):
            if _relation(tgt_cur, locked) is not None:
                tgt_cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_ident(locked)))
        # first statement of the source transaction: the snapshot every count, max and row comes from
        src_cur.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        xmin, xmax = src_cur.execute(sqlfiles.load("source/snapshot_horizon")).fetchone()
        horizon = {"xmin": int(xmin), "xmax": int(xmax)}
        try:
            caught_up = [_sync_one(src_cur, tgt_cur, parent, stream, False, logger, horizon, modes.get(parent),
                                   role="parent")
                         for parent in parents]
            result = _sync_one(src_cur, tgt_cur, table, stream, count_source, logger, horizon, modes.get(table))
        except psycopg.errors.ForeignKeyViolation as exc:
            raise ForeignKeyError(
                f"table {table}: new rows reference rows missing on the target ({exc.diag.constraint_name or 'a foreign key'}: "
                f"{exc.diag.message_detail or exc}); the referenced table is not incremental, so its copy is older than "
                f"these rows: restore without that foreign key (RESTORE_FK_CONSTRAINTS=false) or drop it on the target"
            ) from None
        result.caught_up = [{"table": r.table, "copied": r.copied, "mode": r.mode} for r in caught_up]
        tgt.commit()
        src.rollback()
    return result

