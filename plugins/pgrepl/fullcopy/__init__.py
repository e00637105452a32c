"""The full copy, one module per phase: dump the source, restore it into the warehouse behind a safe swap.

* :mod:`~pgrepl.fullcopy.preflight_step` — settings, databases, client tools, the work folder;
* :mod:`~pgrepl.fullcopy.dump_step` — ``pg_dump`` in an exported snapshot; rows counted from the dump
  (:mod:`~pgrepl.fullcopy.row_counts`);
* :mod:`~pgrepl.fullcopy.restore_step` — the restore list, ``pg_restore`` behind the swap (:mod:`pgrepl.swap`);
* :mod:`~pgrepl.fullcopy.sql_steps` — compat views and enrichment files on the warehouse;
* :mod:`~pgrepl.fullcopy.common` — the run's folders, the clients' environment, running a client script.

The DAG's operators (``pgrepl.operators.dump_restore``) and the benchmark (``bench/``) call these same functions,
so what is measured is what runs at night.
"""

from __future__ import annotations

import time

from pgrepl import sqlfiles, swap, user_views
from pgrepl.fullcopy.common import (
    ClientCommandError,
    PreflightError,
    RunPaths,
    client_environment,
    failure_lines,
    failure_retryable,
    run_key,
    run_paths,
    run_script,
)
from pgrepl.fullcopy.dump_step import DUMP_SCRIPT, dump, dump_environment, exported_snapshot
from pgrepl.fullcopy.preflight_step import preflight
from pgrepl.fullcopy.restore_step import (
    RESTORE_APP_NAME,
    RESTORE_SCRIPT,
    build_restore_list,
    refresh_after_incremental,
    restore,
    restore_environment,
    rollback,
)
from pgrepl.fullcopy.sql_steps import run_sql, sql_groups
from pgrepl.settings import ReplicationSettings

__all__ = [
    "ClientCommandError", "failure_retryable", "DUMP_SCRIPT", "RESTORE_APP_NAME", "RESTORE_SCRIPT", "PreflightError", "RunPaths", "build_restore_list",
    "client_environment", "dump", "refresh_after_incremental", "dump_environment", "exported_snapshot", "failure_lines", "preflight", "restore",
    "restore_environment", "rollback", "run_full_copy", "run_key", "run_paths", "run_script", "run_sql", "sql_groups",
]


def run_full_copy(settings: ReplicationSettings, key: str, run_id: str | None = None) -> dict:
    """dump -> restore -> compat views -> enrichment -> users' views, as the DAG runs them (benchmarks and tests)."""
    run_id = run_id or key
    started = time.monotonic()
    with settings.target.connect() as db:
        swap.acquire_lease(db, run_id)
    try:
        dumped = dump(settings, key)
        restored = restore(settings, key, run_id)
        t0 = time.monotonic()
        run_sql(settings.target, sqlfiles.rendered("compat"), run_id)
        compat_seconds = time.monotonic() - t0
        t0 = time.monotonic()
        run_sql(settings.target, sqlfiles.rendered("indexes") + sqlfiles.rendered("enrichment"), run_id, settings.jobs)
        enrichment_seconds = time.monotonic() - t0
        views = user_views.recreate(settings, run_id)
    finally:
        with settings.target.connect() as db:
            swap.release_lease(db, run_id)
    return {
        "dump_seconds": dumped["seconds"],
        "restore_seconds": restored["seconds"],
        "compat_seconds": round(compat_seconds, 3),
        "enrichment_seconds": round(enrichment_seconds, 3),
        "total_seconds": round(time.monotonic() - started, 3),
        "source_counts": dumped["source_counts"],
        "refresh_after_incremental": restored["refresh_after_incremental"],
        "restore_cleanup_pending": restored["cleanup_pending"],
        "restore_archive": restored["archive"],
        "user_views": views,
    }
