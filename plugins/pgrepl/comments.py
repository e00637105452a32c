"""Comments of the kept tables: the source's current table and column comments copied onto the warehouse.

The tables of ``BACKUP_MODE`` (``incremental``/``none``) are never restored, so the dump's COMMENT entries
cannot reach them. After the restore and the incremental copies, :func:`copy_kept_comments` reads the comments
of those tables and their columns from both catalogs (``pg_description``, by table and column) and sets on the
warehouse every one that differs — a comment removed in the source is removed in the warehouse too. Running it
twice changes nothing the second time. A kept table the warehouse does not have (a ``none`` table never
created there) is skipped, as is a column only one side has. Indexes and constraints of kept tables follow the
rule of every other object of those tables: the replication does not touch them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from psycopg import sql

from pgrepl import sqlfiles, swap
from pgrepl.settings import ReplicationSettings, TableName

log = logging.getLogger(__name__)

#: (schema, table, column or None for the table itself) -> comment or None
Comments = dict[tuple[str, str, str | None], str | None]


def read_comments(db, tables: Iterable[TableName]) -> Comments:
    """Comments of ``tables`` and their columns in the database behind ``db``; absent tables give nothing."""
    tables = list(tables)
    rows = db.execute(
        sqlfiles.load("both/table_comments"),
        {"schemas": [t.schema for t in tables], "tables": [t.name for t in tables]},
    ).fetchall()
    return {(schema, table, column): comment for schema, table, column, comment in rows}


def comment_changes(source: Comments, target: Comments) -> list[tuple[tuple[str, str, str | None], str | None]]:
    """``[(object, comment)]`` to set on the target: objects both sides have whose comments differ."""
    return [(key, comment) for key, comment in sorted(source.items(), key=lambda item: _sort_key(item[0]))
            if key in target and target[key] != comment]


def _sort_key(key: tuple[str, str, str | None]) -> tuple[str, str, int, str]:
    schema, table, column = key
    return (schema, table, 0 if column is None else 1, column or "")


def comment_statement(key: tuple[str, str, str | None], comment: str | None) -> sql.Composed:
    """``COMMENT ON TABLE|COLUMN ... IS ...`` with every name and the text quoted by psycopg."""
    schema, table, column = key
    value = sql.NULL if comment is None else sql.Literal(comment)
    if column is None:
        return sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(schema, table), value)
    return sql.SQL("COMMENT ON COLUMN {} IS {}").format(sql.Identifier(schema, table, column), value)


def copy_kept_comments(settings: ReplicationSettings, run_id: str | None = None) -> dict:
    """Copy the source's table and column comments of the kept tables onto the warehouse (one transaction).

    :param run_id: the run holding the lease; when given, the warehouse lock is taken first.
    :returns: ``{"changed": n, "missing": [tables the warehouse lacks]}``
    """
    tables = settings.kept_tables
    if not settings.restore_comments or not tables:
        log.info("kept tables' comments: nothing to do (%s)",
                 "RESTORE_COMMENTS=false" if not settings.restore_comments else "no kept table")
        return {"changed": 0, "missing": []}
    with settings.source.connect() as src:
        source = read_comments(src, tables)
    with settings.target.connect() as db:
        if run_id:
            swap.lock_warehouse(db, run_id)
        target = read_comments(db, tables)
        present = {(schema, table) for schema, table, _ in target}
        missing = [str(t) for t in tables if (t.schema, t.name) not in present]
        for name in missing:
            log.info("kept table %s is not in the warehouse: its comments are skipped", name)
        changes = comment_changes(source, target)
        for key, comment in changes:
            db.execute(comment_statement(key, comment))
        db.commit()
    log.info("kept tables' comments: %s set from the source", len(changes))
    return {"changed": len(changes), "missing": missing}
