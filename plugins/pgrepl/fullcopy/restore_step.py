"""Restore: ``pg_restore`` of the dump into the warehouse behind the schema swap (:mod:`pgrepl.swap`), which puts
yesterday's warehouse back on any failure."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time

from pgrepl import catalog, swap
from pgrepl.fullcopy.common import (
    ClientCommandError,
    PreflightError,
    RunPaths,
    client_environment,
    run_paths,
    run_script,
    worker_hostname,
)
from pgrepl.pgtools import tool
from pgrepl.restore_list import RestoreList, filter_restore_list
from pgrepl.settings import ReplicationSettings
from pgrepl.toc import TocFormatError, read_dependencies

log = logging.getLogger(__name__)

#: session settings of every pg_restore connection: bulk load, big sorts for index builds
RESTORE_PGOPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=512MB -c max_parallel_maintenance_workers=2"
RESTORE_SCRIPT = r"""set -euo pipefail
mkdir -p "$PGREPL_LOG_DIR"
: > "$PGREPL_LOG_DIR/pg_restore.log"
"$PGREPL_PG_RESTORE" --jobs="$PGREPL_JOBS" --no-owner --no-privileges --exit-on-error --verbose \
  --use-list="$PGREPL_LIST_FILE" --dbname="$PGREPL_TARGET_URL" "$PGREPL_DUMP_DIR" 2>&1 \
  | "$PGREPL_PYTHON" -m pgrepl.tslog "$PGREPL_LOG_DIR/pg_restore.log"
echo "restore finished"
"""


#: application_name of pg_restore's sessions: a restore left running by a dead worker is found and stopped by it
RESTORE_APP_NAME = "pgrepl-restore"



def restore_environment(settings: ReplicationSettings, paths: RunPaths) -> dict:
    """Variables for :data:`RESTORE_SCRIPT`."""
    return {
        "PGREPL_PG_RESTORE": tool("pg_restore", settings.pg_bin_dir),
        "PGREPL_PYTHON": sys.executable,
        "PGREPL_JOBS": str(settings.jobs),
        "PGREPL_DUMP_DIR": str(paths.dump_dir),
        "PGREPL_LOG_DIR": str(paths.log_dir),
        "PGREPL_LIST_FILE": str(paths.list_file),
        "PGREPL_TARGET_URL": settings.target.safe_url(),
        "PGOPTIONS": RESTORE_PGOPTIONS,
    }


def build_restore_list(settings: ReplicationSettings, paths: RunPaths) -> tuple[RestoreList, dict, dict]:
    """Compute the restore list from the dump's TOC and the source catalog; write it to ``paths.list_file``.

    Returns the list, ``{schema: relation names the dump creates}`` and ``{schema: kept table names}``.
    """
    listed = subprocess.run(
        [tool("pg_restore", settings.pg_bin_dir), "--list", str(paths.dump_dir)], capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise ClientCommandError(f"cannot read the dump at {paths.dump_dir}: {listed.stderr.strip()[-1000:]} "
                                 "(clear the dump task too)", retryable=False)
    toc = listed.stdout
    with settings.source.connect() as db:
        relations = catalog.read_relations(db)
        source_catalog = catalog.read_source_catalog(db, relations)
    found, missing = catalog.resolve_tables(relations, settings.kept_tables)
    if missing:
        raise PreflightError("BACKUP_MODE: the source has no table " + ", ".join(repr(str(t)) for t in missing))
    schemas = set(catalog.dumped_schemas(relations))
    dependencies = None
    if settings.restore_comments:
        try:
            dependencies = read_dependencies(paths.dump_dir)
        except (OSError, TocFormatError) as exc:
            log.warning("comments are not restored tonight: cannot read the dump's dependencies (%s)", exc)
    restore_list = filter_restore_list(
        toc, source_catalog, set(found.values()), settings.restore_fk_constraints, precreated_schemas=schemas,
        restore_comments=settings.restore_comments, dependencies=dependencies,
    )
    paths.list_file.parent.mkdir(parents=True, exist_ok=True)
    paths.list_file.write_text(restore_list.text())
    kept_oids = set(found.values())
    replaced: dict[str, set[str]] = {schema: set() for schema in schemas}
    for r in relations:
        owned_by_kept = r.owner_table in kept_oids
        if r.oid not in kept_oids and not owned_by_kept:
            replaced[r.schema].add(r.name)
    kept: dict[str, set[str]] = {}
    for table in settings.kept_tables:
        kept.setdefault(table.schema, set()).add(table.name)
    return restore_list, replaced, kept


def restore(settings: ReplicationSettings, key: str, run_id: str, runner=run_script, dump_host: str | None = None) -> dict:
    """Restore the dump behind the swap: prepare, pg_restore, then finalize — or roll back on any failure.

    :param dump_host: where the dump task ran (to explain a dump folder this worker cannot see)
    """
    paths = run_paths(settings, key)
    if not paths.dump_dir.is_dir():
        here = worker_hostname()
        if dump_host and dump_host != here:
            raise PreflightError(
                f"no dump at {paths.dump_dir}: the dump ran on {dump_host} and the restore on {here}, so "
                "REPLICATION_WORK_DIR must be a volume every worker shares (or clear the dump task too)"
            )
        raise PreflightError(f"no dump at {paths.dump_dir}: clear the dump task too (the dump is removed after a successful restore)")
    started = time.monotonic()
    restore_list, replaced, kept = build_restore_list(settings, paths)
    for entry, reason in restore_list.dropped:
        log.info("not restored: %s (%s)", entry.line, reason)
    with settings.target.connect() as db:
        swap.lock_warehouse(db, run_id)
        plan = swap.prepare_swap(db, run_id, replaced, kept)
        log.info("live schemas moved aside: %s; kept in place: %s", plan.schemas, plan.moved_back)
        try:
            with client_environment(settings.target, extra=restore_environment(settings, paths),
                                    app_name=RESTORE_APP_NAME) as env:
                runner(RESTORE_SCRIPT, env)
            lost = swap.finalize_swap(db)
        except BaseException:
            log.error("restore failed: putting yesterday's warehouse back")
            db.rollback()
            swap.rollback_swap(db)
            raise
    shutil.rmtree(paths.dump_dir, ignore_errors=True)
    return {
        "seconds": round(time.monotonic() - started, 3),
        "log_file": str(paths.log_dir / "pg_restore.log"),
        "items": len(restore_list.kept),
        "skipped": len(restore_list.dropped),
        "kept_in_place": plan.moved_back,
        "dropped_with_old_tables": lost,
    }


def rollback(settings: ReplicationSettings) -> list[str]:
    """Put yesterday's warehouse back if a restore was interrupted (no-op otherwise)."""
    with settings.target.connect() as db:
        return swap.rollback_swap(db)
