"""``SchemaExportOperator``: the noon copy of the warehouse's schema into the catalog database."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from pgrepl.pgtools import PgToolError
from pgrepl.schema_export import SchemaExportError, export_schema, load_settings
from pgrepl.settings import SettingsError, airflow_connection_getter


class SchemaExportOperator(BaseOperator):
    """Apply ``pg_dump --schema-only --clean --if-exists`` of the warehouse to the catalog database.

    Skipped (not failed) when ``DB_SCHEMA_EXPORTER_ENABLED`` is not ``true``. The catalog comes from the
    connection ``schema_export_target`` or ``DB_SCHEMA_EXPORTER_DATABASE_TARGET``; the warehouse from
    ``replication_target`` or ``TARGET_DATABASE_URL`` / ``DATABASE_URL``. psql's output goes to the task
    log line by line.

    :param work_dir: folder for the short-lived schema file and passfile (default: the system's temp folder).
    """

    ui_color = "#d8e8f7"

    def __init__(self, *, work_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work_dir = work_dir

    def execute(self, context: Any) -> dict:
        try:
            settings = load_settings(get_connection=airflow_connection_getter)
        except SettingsError as exc:
            raise AirflowFailException(str(exc)) from None
        if settings is None:
            raise AirflowSkipException("DB_SCHEMA_EXPORTER_ENABLED is not true: schema export skipped")
        self.log.info("exporting the schema of %s to %s", settings.warehouse.safe_url(), settings.catalog.safe_url())
        try:
            result = export_schema(settings, log_line=lambda line: self.log.info("%s", line), work_dir=self.work_dir)
        except PgToolError as exc:
            raise AirflowFailException(f"PG_BIN_DIR: {exc}") from None
        except SchemaExportError as exc:
            raise AirflowException(f"schema export to {settings.catalog.safe_url()} failed: {exc}") from None
        self.log.info("schema export done: %s statements applied", result["statements"])
        return result
