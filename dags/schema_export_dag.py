"""
# schema_export — the warehouse's schema, every day at noon, in the catalog database

`pg_dump --schema-only --no-owner --no-privileges --clean --if-exists` of the warehouse (connection
`replication_target` or `TARGET_DATABASE_URL` / `DATABASE_URL`), applied with
`psql -v ON_ERROR_STOP=1 --single-transaction` to the catalog database (connection `schema_export_target`
or `DB_SCHEMA_EXPORTER_DATABASE_TARGET`). The catalog gets tables, indexes, views, functions and
comments, never rows; a rerun replaces them (idempotent) and a failure leaves the catalog unchanged.

* **Off by default:** unless `DB_SCHEMA_EXPORTER_ENABLED=true`, the run ends *skipped*, not failed.
* **Logs:** every line psql prints is in the task log.
* **Ad hoc:** `airflow dags trigger schema_export`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from pgrepl.dag_defaults import START_DATE, default_args
from pgrepl.operators.schema_export import SchemaExportOperator

with DAG(
    dag_id="schema_export",
    description="Noon: the warehouse's schema (no rows) into the catalog database, when enabled",
    doc_md=__doc__,
    schedule="0 12 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["pg-replication", "schema", "catalog"],
    default_args=default_args(timedelta(minutes=1)),
) as dag:
    SchemaExportOperator(task_id="export_schema", execution_timeout=timedelta(hours=1))
