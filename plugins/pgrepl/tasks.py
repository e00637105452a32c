"""Plain callables behind the DAG's small Python tasks (preflight, rollback, release)."""

from __future__ import annotations

import logging
import os

from pgrepl import fullcopy, lease, staging, swap, workdir
from pgrepl.errors import airflow_errors
from pgrepl.settings import (
    SettingsError,
    airflow_connection_getter,
    load_lcms,
    load_replication,
    parse_notifications,
)
from pgrepl.task_settings import replication_settings

log = logging.getLogger(__name__)


def incremental_plan() -> list[str]:
    """The ``incremental`` tables of ``BACKUP_MODE``, parents first by the source's foreign keys."""
    from pgrepl.incremental import order_incremental_tables

    settings = replication_settings()
    tables = [str(t) for t in order_incremental_tables(settings.source, settings.incremental_tables)]
    log.info("incremental tables, in order: %s", tables or "none")
    return tables


def kept_comments(run_id: str | None, context=None) -> dict:
    """The source's table and column comments onto the kept tables (``BACKUP_MODE``), which no restore touches."""
    import psycopg

    from pgrepl.comments import copy_kept_comments

    settings = replication_settings(context)
    with airflow_errors("kept tables' comments: ", catch=(psycopg.Error,)):
        return copy_kept_comments(settings, run_id)


def preflight(run_id: str, dag_id: str | None = None) -> dict:
    """Validate every setting, reach both databases, check tools and roles, take the run lease (taking it over from
    a run of ``dag_id`` that Airflow reports finished), prune old failed dumps, check the work folder's free space.

    Bad settings, a superuser target, missing tables or a busy warehouse fail without retry; an unreachable
    database is retried (it may be a passing outage).
    """
    with airflow_errors():
        settings = load_replication(get_connection=airflow_connection_getter)
        lcms = load_lcms(get_connection=airflow_connection_getter)
        notifications = parse_notifications(os.environ)
        facts = fullcopy.preflight(settings)
        with settings.target.connect() as db:
            lease.take_lease(db, run_id, lease.airflow_run_state(dag_id) if dag_id else None)
            pending = swap.swap_in_progress(db)
            try:
                warehouse_space = staging.check_warehouse_space(db)
            except staging.WarehouseDiskFull:
                swap.release_lease(db, run_id)
                raise
        # the lease is ours: no other run uses the work folder's dumps now
        workdir.prune_failed_dumps(settings.work_dir, fullcopy.run_key(run_id))
        try:
            space = workdir.check_free_space(settings.work_dir)
        except workdir.WorkDirError:
            with settings.target.connect() as db:
                swap.release_lease(db, run_id)
            raise
    if pending:
        log.warning("an interrupted restore left schemas %s aside: the restore step will put them back first", pending)
    result = {
        "run_key": fullcopy.run_key(run_id),
        "incremental_tables": [str(t) for t in settings.incremental_tables],
        "kept_tables": [str(t) for t in settings.kept_tables],
        "learning_content": lcms is not None,
        "notifications": len(notifications),
        "source_server_major": facts["server_major"],
        "work_dir_free_bytes": space["free_bytes"],
        "warehouse_needs_bytes": warehouse_space["needed_bytes"],
        "warehouse_free_bytes": warehouse_space["free_bytes"],
    }
    log.info("preflight ok: %s", result)
    return result


def rollback(run_id: str) -> list[str]:
    """After a failed restore: drop its staging work (the live warehouse was never touched)."""
    restored = fullcopy.rollback(replication_settings(), run_id)
    log.info("staging schemas dropped: %s", restored or "none (nothing was left)")
    return restored


def release(run_id: str) -> bool:
    """Release the run lease (runs whatever happened before)."""
    try:
        settings = load_replication(get_connection=airflow_connection_getter)
    except SettingsError:
        return False  # preflight failed on settings: no lease was taken
    with settings.target.connect() as db:
        released = swap.release_lease(db, run_id)
    log.info("lease %s", "released" if released else "was not held by this run")
    return released
