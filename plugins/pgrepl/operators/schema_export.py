"""``SchemaExportOperator``: the noon copy of the warehouse's schema into the catalog database."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from pgrepl.errors import airflow_errors
from pgrepl.schema_export import export_schema, load_settings
from pgrepl.settings import SOURCE_CONN_ID, TARGET_CONN_ID, airflow_connection_getter


class SchemaExportOperator(BaseOperator):
    """Apply ``pg_dump --schema-only --clean --if-exists`` of the warehouse to the catalog database.

    Skipped (not failed) when ``DB_SCHEMA_EXPORTER_ENABLED`` is not ``true``. The catalog comes from the
    connection ``schema_export_target`` or ``DB_SCHEMA_EXPORTER_DATABASE_TARGET``; the warehouse from
    ``target_conn_id`` or ``TARGET_DATABASE_URL`` / ``DATABASE_URL``. psql's output goes to the task
    log line by line.

    :param work_dir: folder for the short-lived schema file and passfile (default: the system's temp folder).
    :param target_conn_id: connection of the warehouse (``replication_target``)
    :param source_conn_id: connection of the source (``replication_source``), which the catalog must not be
    """

    ui_color = "#d8e8f7"

    def __init__(self, *, work_dir: str | None = None, target_conn_id: str = TARGET_CONN_ID,
                 source_conn_id: str = SOURCE_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work_dir = work_dir
        self.target_conn_id = target_conn_id
        self.source_conn_id = source_conn_id

    def execute(self, context: Any) -> dict:
        with airflow_errors():
            settings = load_settings(get_connection=airflow_connection_getter, target_conn_id=self.target_conn_id,
                                     source_conn_id=self.source_conn_id)
        if settings is None:
            raise AirflowSkipException("DB_SCHEMA_EXPORTER_ENABLED is not true: schema export skipped")
        self.log.info("exporting the schema of %s to %s", settings.warehouse.safe_url(), settings.catalog.safe_url())
        with airflow_errors(f"schema export to {settings.catalog.safe_url()} failed: "):
            result = export_schema(settings, log_line=lambda line: self.log.info("%s", line), work_dir=self.work_dir)
        self.log.info("schema export done: %s statements applied", result["statements"])
        return result
