"""Dump: ``pg_dump`` of the source (directory format, parallel, without the rows of the kept tables and of their
partitions: their structure is dumped) in an exported snapshot; every dumped table's rows are then counted from the
dump's own data files (:mod:`pgrepl.fullcopy.row_counts`), so the project locks no table on the source beyond
what pg_dump itself locks."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from contextlib import contextmanager

from pgrepl import catalog, sqlfiles, table_modes, workdir
from pgrepl.fullcopy import row_counts
from pgrepl.fullcopy.common import (
    RunPaths,
    client_environment,
    run_paths,
    run_script,
    worker_hostname,
)
from pgrepl.pgtools import tool
from pgrepl.settings import ReplicationSettings, TableName

log = logging.getLogger(__name__)

# The two client commands. Everything variable comes from the environment (no password among it: PGPASSFILE).
DUMP_SCRIPT = r"""set -euo pipefail
rm -rf "$PGREPL_DUMP_DIR"
mkdir -p "$(dirname "$PGREPL_DUMP_DIR")" "$PGREPL_LOG_DIR"
excludes=()
while IFS= read -r pattern; do
  [ -n "$pattern" ] && excludes+=("--exclude-table-data=$pattern")
done <<< "${PGREPL_EXCLUDES:-}"
"$PGREPL_PG_DUMP" --format=directory --jobs="$PGREPL_JOBS" --compress="$PGREPL_COMPRESS" \
  --no-owner --no-privileges --no-sync --verbose \
  --exclude-schema=information_schema --exclude-schema='pg_*' \
  ${PGREPL_SNAPSHOT:+--snapshot="$PGREPL_SNAPSHOT"} "${excludes[@]}" \
  --file="$PGREPL_DUMP_DIR" --dbname="$PGREPL_SOURCE_URL" 2>&1 \
  | "$PGREPL_PYTHON" -m pgrepl.tslog "$PGREPL_LOG_DIR/pg_dump.log" > /dev/null
echo "dump written to $PGREPL_DUMP_DIR"
"""


def literal_pattern(name: str) -> str:
    """A ``pg_dump`` name pattern matching exactly ``name`` (double quotes make every character literal)."""
    return '"' + name.replace('"', '""') + '"'


def exclude_pattern(table: TableName) -> str:
    """A ``pg_dump --exclude-table`` pattern matching exactly this table."""
    return f"{literal_pattern(table.schema)}.{literal_pattern(table.name)}"


def dump_environment(settings: ReplicationSettings, paths: RunPaths, snapshot: str | None,
                     kept_tables: list[TableName] | None = None) -> dict:
    """Variables for :data:`DUMP_SCRIPT` (merged into :func:`client_environment`).

    :param kept_tables: tables whose rows the dump leaves out (their structure is dumped): the ``BACKUP_MODE``
        tables and all their partitions (default: the ``BACKUP_MODE`` tables alone).
    """
    kept_tables = settings.kept_tables if kept_tables is None else kept_tables
    return {
        "PGREPL_PG_DUMP": tool("pg_dump", settings.pg_bin_dir),
        "PGREPL_PYTHON": sys.executable,
        "PGREPL_JOBS": str(settings.jobs),
        "PGREPL_COMPRESS": str(settings.dump_compression),
        "PGREPL_DUMP_DIR": str(paths.dump_dir),
        "PGREPL_LOG_DIR": str(paths.log_dir),
        "PGREPL_SOURCE_URL": settings.source.safe_url(),
        "PGREPL_EXCLUDES": "\n".join(exclude_pattern(t) for t in kept_tables),
        "PGREPL_SNAPSHOT": snapshot or "",
    }


@contextmanager
def exported_snapshot(settings: ReplicationSettings):
    """A source transaction whose snapshot pg_dump shares (``--snapshot``); yields ``(connection, snapshot id)``."""
    db = settings.source.connect(autocommit=True)  # the explicit BEGIN below sets the isolation level
    try:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = db.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield db, snapshot
    finally:
        db.execute("ROLLBACK")
        db.close()


def kept_relations(settings: ReplicationSettings, db, relations=None) -> tuple[list, table_modes.ModePlan]:
    """The source's relations and every table ``BACKUP_MODE`` covers (partitions included)."""
    relations = catalog.read_relations(db) if relations is None else relations
    facts = table_modes.read_source_facts(db) if settings.kept_tables else table_modes.SourceFacts()
    return relations, table_modes.plan_modes(settings, relations, facts)


def read_parents(db) -> dict[int, int]:
    """``child -> parent`` of every partition and inheritance child (``pg_inherits``; catalog only)."""
    return dict(db.execute(sqlfiles.load("source/inheritance")).fetchall())


def dump(settings: ReplicationSettings, key: str, runner=run_script) -> dict:
    """Dump the source (directory format, parallel, kept tables' rows left out); count the rows from the dump.

    The exported-snapshot transaction only reads the catalog (no table is locked but by pg_dump); the rows are
    counted afterwards from the dump's data files (:mod:`pgrepl.fullcopy.row_counts`), without a source connection.
    """
    paths = run_paths(settings, key)
    started = time.monotonic()
    with exported_snapshot(settings) as (db, snapshot):
        relations, plan = kept_relations(settings, db)
        parents = read_parents(db)
        extra = dump_environment(settings, paths, snapshot, plan.table_names())
        shutil.rmtree(paths.dump_dir, ignore_errors=True)  # DUMP_SCRIPT does too; the early counter starts empty
        with client_environment(settings.source, extra=extra) as env, \
                row_counts.EarlyCounter(paths.dump_dir) as early:
            runner(DUMP_SCRIPT, env)
    dumped = time.monotonic()
    tables = [r for r in relations if r.is_table and r.oid not in plan.kept]
    counts = row_counts.table_counts(paths.dump_dir, tables, parents, settings.jobs, early.counted)
    log.info("counted the rows of %s tables from the dump in %.2f s after pg_dump (%s data files counted while it "
             "ran)", len(counts), time.monotonic() - dumped, len(early.counted))
    workdir.clear_restore_failed(paths.root)  # a new dump: no restore failed on it yet
    return {
        "host": worker_hostname(),
        "dump_dir": str(paths.dump_dir),
        "log_file": str(paths.log_dir / "pg_dump.log"),
        "seconds": round(time.monotonic() - started, 3),
        "source_counts": counts,
    }
