"""Operators of the full copy: ``pg_dump`` and ``pg_restore`` run by BashOperator, SQL files on the warehouse.

They stay thin: the work is in :mod:`pgrepl.fullcopy`, which the benchmarks call too.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Sequence

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from pgrepl import fullcopy, workdir
from pgrepl.errors import airflow_errors
from pgrepl.settings import SOURCE_CONN_ID, TARGET_CONN_ID
from pgrepl.task_settings import replication_settings


class _ClientCommandOperator(BashOperator):
    """A BashOperator whose command and environment come from :mod:`pgrepl.fullcopy` at run time.

    :param source_conn_id: connection of the source (``SOURCE_DATABASE_URL`` when it is not defined)
    :param target_conn_id: connection of the warehouse (``TARGET_DATABASE_URL`` / ``DATABASE_URL`` when it is not)
    """

    script: str = ""
    #: the timestamped client log written by the script (in ``PGREPL_LOG_DIR``)
    client_log: str = ""
    #: appended to a failure message: how to restart once the cause is fixed
    restart_hint: str = ""

    def __init__(self, *, source_conn_id: str = SOURCE_CONN_ID, target_conn_id: str = TARGET_CONN_ID,
                 **kwargs: Any) -> None:
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(bash_command=self.script, **kwargs)
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id

    def _settings(self, context):
        return replication_settings(context, source_conn_id=self.source_conn_id, target_conn_id=self.target_conn_id)

    def _runner(self, context, client_log: str | None = None):
        client_log = client_log or self.client_log

        def run(script: str, env: dict) -> None:
            self.bash_command = script
            self.env = env  # already a full copy of the environment, with PGPASSFILE and no password
            self.append_env = False
            try:
                BashOperator.execute(self, context)
            except AirflowException as exc:
                log_file = Path(env["PGREPL_LOG_DIR"]) / client_log
                errors = fullcopy.failure_lines(log_file.read_text()) if log_file.exists() else []
                detail = " | ".join(line.split(" ", 1)[-1] for line in errors[:5]) or str(exc)
                raise fullcopy.ClientCommandError(
                    f"{client_log.removesuffix('.log')} failed: {detail} (full log: {log_file}){self.restart_hint}",
                    retryable=fullcopy.failure_retryable(errors),
                ) from exc

        return run


class PgDumpOperator(_ClientCommandOperator):
    """``pg_dump`` of the source: directory format, ``--jobs``, rows of the tables ``BACKUP_MODE`` keeps (and of their
    partitions) left out, their structure kept, in an exported snapshot; every dumped table's rows are then
    counted from the dump's data files (for verification), with no further lock on the source.

    Returns ``{"dump_dir", "log_file", "seconds", "source_counts"}``.
    """

    script = fullcopy.DUMP_SCRIPT
    client_log = "pg_dump.log"
    ui_color = "#d6eaf8"

    def execute(self, context) -> dict:
        settings = self._settings(context)
        key = fullcopy.run_key(context["run_id"])
        with airflow_errors():
            result = fullcopy.dump(settings, key, runner=self._runner(context))
        self.log.info("dumped %s tables in %.1f s into %s", len(result["source_counts"]), result["seconds"], result["dump_dir"])
        return result


class PgRestoreOperator(_ClientCommandOperator):
    """Tonight's copy built in staging schemas (``pg_restore --jobs``), switched in with one short transaction.

    Readers keep yesterday's warehouse until the switch commits; on any failure before it the staging work is
    dropped and the live warehouse was never touched; after it yesterday's schemas are dropped in batches and the
    dump folder removed.
    Returns ``{"seconds", "log_file", "items", "skipped", "kept_in_place", "dropped_with_old_tables",
    "refresh_after_incremental"}`` (the materialized views ``refresh_views`` refreshes).
    """

    script = fullcopy.RESTORE_SCRIPT
    client_log = "pg_restore.log"
    restart_hint = (
        ". The live warehouse was not touched (tonight's staging work is dropped). Fix the cause (source data, warehouse), then clear `restore` "
        "with its downstream tasks: the next attempt takes a fresh dump of the source first"
    )
    ui_color = "#d5f5e3"

    def execute(self, context) -> dict:
        settings = self._settings(context)
        key = fullcopy.run_key(context["run_id"])
        dumped = context["ti"].xcom_pull(task_ids="dump") or {}
        paths = fullcopy.run_paths(settings, key)
        redumped = None
        reason = workdir.fresh_dump_reason(paths.root, paths.dump_dir)
        # a dump missing because the dump task ran on another host is a setup error, said by fullcopy.restore
        with airflow_errors():
            if reason and (paths.dump_dir.is_dir() or dumped.get("host") in (None, socket.gethostname())):
                self.log.warning("%s: taking a fresh dump before restoring", reason)
                redumped = fullcopy.dump(settings, key, runner=self._runner(context, "pg_dump.log"))
                self.log.info("fresh dump: %s tables in %.1f s", len(redumped["source_counts"]), redumped["seconds"])
            result = fullcopy.restore(settings, key, context["run_id"], runner=self._runner(context),
                                      dump_host=(redumped or dumped).get("host"))
        if redumped:
            result["dump"] = redumped  # verify and report use this dump's counts and timings
        self.log.info("restored %s items in %.1f s", result["items"], result["seconds"])
        return result


class WarehouseSQLOperator(BaseOperator):
    """Run SQL files (Jinja templates under ``include/sql``) on the warehouse, each in its own transaction, in name
    order; consecutive files sharing a number prefix (``010_a.sql``, ``010_b.sql``) run at the same time on up to
    ``PG_RESTORE_JOBS`` connections.

    :param sql: paths relative to the DAG's ``template_searchpath`` (templated).
    :param target_conn_id: connection of the warehouse (``TARGET_DATABASE_URL`` / ``DATABASE_URL`` when it is not
        defined)
    """

    template_fields: Sequence[str] = ("sql",)
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#fcf3cf"

    def __init__(self, *, sql: list[str], target_conn_id: str = TARGET_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sql = sql
        self.files = list(sql)
        self.target_conn_id = target_conn_id

    def execute(self, context) -> dict:
        import psycopg

        settings = replication_settings(context, target_conn_id=self.target_conn_id)
        started = time.monotonic()
        # an SQL error in a file (syntax, missing table, constraint) fails at once; a lost connection is retried
        with airflow_errors("SQL on the warehouse failed: ", catch=(psycopg.Error,)):
            timings = fullcopy.run_sql(settings.target, list(zip(self.files, self.sql)), context["run_id"], settings.jobs)
        return {"seconds": round(time.monotonic() - started, 3), "files": timings}
