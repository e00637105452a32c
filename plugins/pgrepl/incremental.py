"""Incremental copy of append-only tables: the rows of the source whose ``id`` is above the target's ``max(id)``.

The rows stream from ``COPY (SELECT ...) TO STDOUT`` on the source into ``COPY ... FROM STDIN`` on the target,
chunk by chunk (nothing on disk, nothing whole in memory), in binary format when every column has the same
built-in type on both sides, in text format otherwise. Everything written to the target happens in ONE
transaction: a failure anywhere (network, killed session, constraint) leaves the target as it was.

The source is read in one ``REPEATABLE READ, READ ONLY`` transaction, so ``max(id)``, ``count(*)`` and the
copied rows all come from the same snapshot (``source_count`` is what verification compares ``rows_after`` to).

Guards:

* target table missing or empty -> *bootstrap*: create it from the source definition (columns, types,
  collations, NOT NULL, defaults that use no sequence, primary key, then the other indexes) and copy every row;
* target ``max(id)`` above the source's -> :class:`SourceRewoundError`, nothing copied;
* no integer ``id`` column -> :class:`NoIntegerIdError`.

Foreign keys (mapped tasks run in parallel, so "parents first" is not enough): bootstrapped tables get no
foreign keys at all. When the target already has foreign keys from the table to other *incremental* tables,
the parents are caught up first in the same target transaction, from the same source snapshot, under table
locks taken in one global (name) order: every referenced row is there before the child rows arrive, whatever
order the tasks run in, and no two tasks can deadlock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import psycopg
from psycopg import sql

from pgrepl import sqlfiles
from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn
from pgrepl.settings import TableName

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


class NoIntegerIdError(IncrementalError):
    """The table has no ``id`` column of an integer type."""


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


def check_watermark(table: TableName, target_max: int | None, source_max: int | None) -> None:
    """Fail when the target holds ids the source no longer has (the source was restored or rewound)."""
    if target_max is None:
        return
    if source_max is None or target_max > source_max:
        raise SourceRewoundError(
            f"table {table}: target max(id) = {target_max} is above source max(id) = "
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


def _id_column(table: TableName, columns: Sequence[Column], where: str) -> Column:
    for column in columns:
        if column.name == "id":
            if column.type_oid not in INTEGER_TYPE_OIDS:
                raise NoIntegerIdError(
                    f"table {table}: column id on the {where} is {column.type_sql}, not an integer type "
                    f"(smallint, integer, bigint); incremental copy needs an integer id; use mode \"none\" or a full copy"
                )
            return column
    raise NoIntegerIdError(
        f"table {table}: no id column on the {where}; incremental copy needs an integer id column; "
        f"use mode \"none\" or a full copy for this table"
    )


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

    def run(self, src_cur, tgt_cur, table: TableName, columns: list[str], where_id_above: int | None,
            binary: bool, freeze: bool) -> tuple[int, int]:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        select = sql.SQL("SELECT {cols} FROM {table}").format(cols=cols, table=_ident(table))
        if where_id_above is not None:
            select += sql.SQL(" WHERE id > {}").format(sql.Literal(int(where_id_above)))
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


def _bootstrap_create(src_cur, tgt_cur, table: TableName, columns: list[Column]) -> None:
    tgt_cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    ddl = sql.SQL("CREATE TABLE {table} ({cols})").format(
        table=_ident(table), cols=sql.SQL(", ").join(column_ddl(c) for c in columns))
    tgt_cur.execute(ddl)


def _bootstrap_indexes(src_cur, tgt_cur, table: TableName, src_oid: int, logger) -> list[str]:
    """Primary key, then the source's other indexes (built after the rows: faster than row by row)."""
    created = []
    for con_name, con_sql, index_sql, is_primary in src_cur.execute(sqlfiles.load("source/table_indexes"), {"oid": src_oid}).fetchall():
        if is_primary and con_name:
            tgt_cur.execute(sql.SQL("ALTER TABLE {table} ADD CONSTRAINT {name} " + con_sql).format(
                table=_ident(table), name=sql.Identifier(con_name)))
            created.append(con_name)
        else:
            tgt_cur.execute(sql.SQL(index_sql))
            created.append(index_sql.split(" ON ")[0].rsplit(" ", 1)[-1])
    logger.info("table %s: bootstrap built %s", table, ", ".join(created) or "no index")
    return created


def _sync_one(src_cur, tgt_cur, table: TableName, stream: _Stream, count_source: bool, logger,
              role: str = "table") -> TableResult:
    started = time.monotonic()
    src_rel = _relation(src_cur, table)
    if src_rel is None or src_rel[1] not in ("r", "p"):
        kind = "absent" if src_rel is None else f"not a table (relkind {src_rel[1]!r})"
        raise TableNotFoundError(f"table {table}: {kind} in the source database; check BACKUP_MODE")
    src_columns = _columns(src_cur, src_rel[0])
    _id_column(table, src_columns, "source")

    tgt_rel = _relation(tgt_cur, table)
    created = False
    target_max: int | None = None
    rows_before = 0
    if tgt_rel is None:
        logger.info("table %s: missing on the target: bootstrap (create from the source definition, copy every row)", table)
        _bootstrap_create(src_cur, tgt_cur, table, src_columns)
        created = True
        tgt_columns = src_columns
    else:
        if tgt_rel[1] not in ("r", "p"):
            raise SchemaMismatchError(f"table {table}: the target object is not a table (relkind {tgt_rel[1]!r})")
        tgt_columns = _columns(tgt_cur, tgt_rel[0])
        _id_column(table, tgt_columns, "target")
        rows_before, target_max = tgt_cur.execute(
            sql.SQL("SELECT count(*), max(id) FROM {}").format(_ident(table))).fetchone()
        if rows_before == 0:
            logger.info("table %s: empty on the target: bootstrap (copy every row)", table)
            target_max = None

    stats = "count(*), max(id)" if count_source else "NULL::int8, max(id)"
    source_count, source_max = src_cur.execute(
        sql.SQL("SELECT " + stats + " FROM {}").format(_ident(table))).fetchone()
    check_watermark(table, target_max, source_max)

    names, binary = copy_columns(table, src_columns, tgt_columns)
    mode = "bootstrap" if target_max is None else "append"
    copy_started = time.monotonic()
    if target_max is not None and source_max == target_max:
        copied, nbytes = 0, 0
    else:
        copied, nbytes = stream.run(src_cur, tgt_cur, table, names, target_max, binary, freeze=created)
    copy_seconds = time.monotonic() - copy_started
    if created:
        _bootstrap_indexes(src_cur, tgt_cur, table, src_rel[0], logger)
    seconds = time.monotonic() - started
    result = TableResult(
        table=str(table), mode=mode, rows_before=rows_before, copied=copied, rows_after=rows_before + copied,
        source_count=source_count, source_max_id=source_max, target_max_id_before=target_max,
        format="binary" if binary else "text", seconds=round(seconds, 3), copy_seconds=round(copy_seconds, 3),
        rows_per_second=round(copied / copy_seconds, 1) if copied and copy_seconds > 0 else 0.0,
        bytes=nbytes, created=created,
    )
    logger.info(
        "%s %s (%s, %s): rows before %s, copied %s, rows after %s (source count %s, source max id %s, target max id "
        "before %s) in %.2f s, %.0f rows/s",
        role, table, mode, result.format, rows_before, copied, result.rows_after, source_count, source_max,
        target_max, seconds, result.rows_per_second,
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
) -> TableResult:
    """Copy the source rows of ``table`` with ``id`` above the target's ``max(id)``; bootstrap if needed.

    :param source: the production database (read in one REPEATABLE READ, READ ONLY transaction)
    :param target: the warehouse (written in one transaction, committed at the end)
    :param table: the table, same schema and name on both sides
    :param incremental_tables: every incremental table of the run; the target's foreign keys from ``table``
        to one of them make this copy catch that parent up first, in the same transaction
    :param count_source: also ``count(*)`` the source table in the copy's snapshot (``source_count``)
    :param progress: called as ``progress(table, rows, bytes)`` about every ``progress_every`` bytes
    :return: the table's :class:`TableResult` (its ``caught_up`` lists parents caught up on the way)
    """
    logger = logger or log
    incremental = set(incremental_tables) - {table}
    stream = _Stream(progress, progress_every, logger)
    app = f"{APPLICATION_NAME}:{table}"[:63]
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
        try:
            caught_up = [_sync_one(src_cur, tgt_cur, parent, stream, False, logger, role="parent")
                         for parent in parents]
            result = _sync_one(src_cur, tgt_cur, table, stream, count_source, logger)
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

