"""Dump: ``pg_dump`` of the source (directory format, parallel, without the rows of the kept tables and of their
partitions: their structure is dumped) in a snapshot shared with a count of every dumped table's rows."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from pgrepl import catalog, table_modes, workdir
from pgrepl.errors import PgreplError, is_retryable
from pgrepl.fullcopy.common import (
    RunPaths,
    _first_line,
    client_environment,
    run_paths,
    run_script,
    worker_hostname,
)
from pgrepl.pgtools import tool
from pgrepl.settings import ReplicationSettings, TableName

# The two client commands. Everything variable comes from the environment (no password among it: PGPASSFILE).
DUMP_SCRIPT = r"""set -euo pipefail
rm -rf "$PGREPL_DUMP_DIR"
mkdir -p "$(dirname "$PGREPL_DUMP_DIR")" "$PGREPL_LOG_DIR"
excludes=()
while IFS= read -r pattern; do
  [ -n "$pattern" ] && excludes+=("--exclude-table-data=$pattern")
done <<< "${PGREPL_EXCLUDES:-}"
"$PGREPL_PG_DUMP" --format=directory --jobs="$PGREPL_JOBS" --compress="$PGREPL_COMPRESS" \
  --no-owner --no-privileges --verbose \
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


def dumped_tables(settings: ReplicationSettings, db, relations=None, plan=None) -> list[tuple[str, str]]:
    """``(schema, table)`` of every table whose rows the dump holds."""
    if plan is None:
        relations, plan = kept_relations(settings, db, relations)
    return [(r.schema, r.name) for r in relations if r.is_table and r.oid not in plan.kept]


class CountThread(threading.Thread):
    """Counts the dumped tables' rows in the dump's snapshot while pg_dump runs."""

    def __init__(self, db, tables):
        super().__init__(name="pgrepl-count", daemon=True)
        self.db, self.tables, self.counts, self.error = db, tables, {}, None

    def run(self) -> None:
        try:
            self.counts = catalog.count_rows(self.db, self.tables)
        except Exception as exc:  # reported by the caller
            self.error = exc


def dump(settings: ReplicationSettings, key: str, runner=run_script) -> dict:
    """Dump the source (directory format, parallel, kept tables' rows left out); count rows in the same snapshot."""
    paths = run_paths(settings, key)
    started = time.monotonic()
    with exported_snapshot(settings) as (db, snapshot):
        relations, plan = kept_relations(settings, db)
        tables = dumped_tables(settings, db, relations, plan)
        counter = CountThread(db, tables)
        extra = dump_environment(settings, paths, snapshot, plan.table_names())
        with client_environment(settings.source, extra=extra) as env:
            counter.start()
            try:
                runner(DUMP_SCRIPT, env)
            finally:
                counter.join()
        if counter.error:
            raise PgreplError(f"counting the source rows failed: {_first_line(counter.error)}",
                              retryable=is_retryable(counter.error))
    workdir.clear_restore_failed(paths.root)  # a new dump: no restore failed on it yet
    return {
        "host": worker_hostname(),
        "dump_dir": str(paths.dump_dir),
        "log_file": str(paths.log_dir / "pg_dump.log"),
        "seconds": round(time.monotonic() - started, 3),
        "source_counts": counter.counts,
    }
