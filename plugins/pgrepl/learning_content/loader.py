"""Load mapped learning content into the warehouse and swap it in atomically.

All eight tables are replaced in ONE transaction:

1. build phase, for each table: ``DROP TABLE IF EXISTS "<t>__lc_new"`` (a leftover), ``CREATE TABLE``
   ``"<t>__lc_new"``, fill it with ``COPY``, add its primary key and its ``{table}_{field}``
   indexes (under staging names);
2. swap phase, for each table: ``DROP TABLE "<t>"``, rename the staging table, its primary key
   and its indexes to the final names (``<t>_pkey``, ``<t>_<field>_idx``).

Readers keep seeing yesterday's tables until the commit, then today's: never a missing or half-filled
table. Heavy work (COPY, index builds) happens before the old tables are locked, so the ACCESS
EXCLUSIVE locks are held only for the short swap phase. Any error rolls back everything: every table
keeps its previous content and no staging table remains.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping

import psycopg
from psycopg import sql

from pgrepl.errors import PgreplError
from pgrepl.learning_content.mapping import PG_TYPE_NAMES, TABLES, Table

STAGING_SUFFIX = "__lc_new"
#: serialises concurrent loads into one warehouse (two deployments, a manual run during the nightly one)
ADVISORY_LOCK_KEY = "pgrepl.learning_content"

log = logging.getLogger(__name__)


class LearningContentLoadError(PgreplError, RuntimeError):
    """The database refused the content; the message names the table. Retried (the warehouse may be busy)."""


def staging_name(table: Table) -> str:
    return f"{table.name}{STAGING_SUFFIX}"


def _staging_index_name(table: Table, field: str) -> str:
    return f"{table.name}_{field}{STAGING_SUFFIX}"


def _create_staging(cur: psycopg.Cursor, table: Table, schema: str) -> None:
    columns = [sql.SQL("{} text").format(sql.Identifier("id"))] + [
        # field types come from the fixed declarations in mapping.py, never from the payload
        sql.SQL("{} {}{}").format(
            sql.Identifier(field.name),
            sql.SQL(field.type),
            sql.SQL(" NOT NULL") if field.base_type == "boolean" else sql.SQL(""),
        )
        for field in table.fields
    ]
    staging = sql.Identifier(schema, staging_name(table))
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(staging, sql.SQL(", ").join(columns)))


def _copy_rows(cur: psycopg.Cursor, table: Table, schema: str, rows: Iterable[tuple]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, staging_name(table)), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    types = ["text"] + [PG_TYPE_NAMES[f.base_type] + ("[]" if f.is_array else "") for f in table.fields]
    with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _index_staging(cur: psycopg.Cursor, table: Table, schema: str) -> None:
    staging = sql.Identifier(schema, staging_name(table))
    cur.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            staging, sql.Identifier(f"{staging_name(table)}_pkey"), sql.Identifier("id")
        )
    )
    for field in table.indexes:
        cur.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(_staging_index_name(table, field)), staging, sql.Identifier(field)
            )
        )
    cur.execute(sql.SQL("ANALYZE {}").format(staging))


def _swap(cur: psycopg.Cursor, table: Table, schema: str, cascade: bool = False) -> None:
    cur.execute(
        sql.SQL("DROP TABLE IF EXISTS {}{}").format(
            sql.Identifier(schema, table.name), sql.SQL(" CASCADE" if cascade else "")
        )
    )
    cur.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(schema, staging_name(table)), sql.Identifier(table.name)
        )
    )
    final = sql.Identifier(schema, table.name)
    cur.execute(
        sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            final, sql.Identifier(f"{staging_name(table)}_pkey"), sql.Identifier(f"{table.name}_pkey")
        )
    )
    for field in table.indexes:
        cur.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(schema, _staging_index_name(table, field)), sql.Identifier(table.index_name(field))
            )
        )


def replace_tables(
    conn: psycopg.Connection,
    rows_by_table: Mapping[str, list[tuple]],
    *,
    tables: Iterable[Table] = TABLES,
    schema: str = "public",
    cascade: bool = False,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, int]:
    """Replace every table of ``tables`` by its rows, atomically; return ``{table: rows}``.

    :param conn: a psycopg 3 connection to the warehouse, not in a transaction; committed on success,
        rolled back on failure
    :param rows_by_table: the output of :func:`pgrepl.learning_content.mapping.map_payload`
    :param cascade: also drop objects that depend on the old tables (views, foreign keys), as the
        seed did; by default such a dependency fails the load, naming it, and nothing changes
    :raises LearningContentLoadError: naming the table and the database's reason
    """
    logger = logger or log
    tables = list(tables)
    missing = [t.name for t in tables if t.name not in rows_by_table]
    if missing:
        raise LearningContentLoadError(f"no rows given for table(s) {', '.join(missing)}")
    counts: dict[str, int] = {}
    current = "(setup)"
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (ADVISORY_LOCK_KEY,))
            for table in tables:
                current = table.name
                started = time.monotonic()
                rows = rows_by_table[table.name]
                _create_staging(cur, table, schema)
                _copy_rows(cur, table, schema, rows)
                _index_staging(cur, table, schema)
                counts[table.name] = len(rows)
                logger.info(
                    "learning content: staged %s rows for %s.%s (%.2f s)",
                    len(rows), schema, table.name, time.monotonic() - started,
                )
            started = time.monotonic()
            for table in tables:
                current = table.name
                _swap(cur, table, schema, cascade)
            current = "(commit)"
        logger.info("learning content: swapped %s tables in (%.2f s)", len(counts), time.monotonic() - started)
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary or str(exc)).strip() if hasattr(exc, "diag") else str(exc)
        detail = getattr(exc.diag, "message_detail", None) if hasattr(exc, "diag") else None
        raise LearningContentLoadError(
            f"table {schema}.{current}: {reason}{f' ({detail})' if detail else ''}; "
            "every learning-content table keeps its previous content"
        ) from None
    return counts
