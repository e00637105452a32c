"""The ``schema_export`` DAG: its shape, and two runs through ``airflow dags test``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from airflow_helpers import ROOT, dag_run_state, load_dag_file, run_dag_test, task_states
from conftest import TEST_PASSWORD

DAG_FILE = ROOT / "dags" / "schema_export_dag.py"


def load_dag(monkeypatch, **env):
    return load_dag_file(DAG_FILE, monkeypatch, **env)


def test_dag_shape(monkeypatch):
    monkeypatch.delenv("MAX_RETRY_COUNT", raising=False)
    dag = load_dag(monkeypatch)
    assert dag.dag_id == "schema_export"
    assert dag.timetable.expression == "0 12 * * *"
    assert str(dag.timetable.timezone.name) == "Europe/Paris"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert "pg-replication" in dag.tags
    assert dag.doc_md and "schema_export" in dag.doc_md
    assert dag.task_ids == ["export_schema"]
    task = dag.get_task("export_schema")
    assert task.owner == "data-engineering"
    assert task.retries == 10 and task.retry_exponential_backoff
    assert task.execution_timeout == timedelta(hours=1)


def test_retries_follow_the_setting_and_survive_a_bad_value(monkeypatch):
    assert load_dag(monkeypatch, MAX_RETRY_COUNT="3").get_task("export_schema").retries == 3
    assert load_dag(monkeypatch, MAX_RETRY_COUNT="lots").get_task("export_schema").retries == 10


def url(conn):
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.mark.e2e
def test_dag_run_exports_schema(source_db, make_database, tmp_path):
    catalog = make_database("catalog")
    env = {"DB_SCHEMA_EXPORTER_ENABLED": "true", "TARGET_DATABASE_URL": url(source_db),
           "AIRFLOW_CONN_SCHEMA_EXPORT_TARGET": url(catalog), "MAX_RETRY_COUNT": "0"}
    result = run_dag_test("schema_export", env, tmp_path)
    assert task_states(result) == {"export_schema": "success"}, result.stdout[-5000:]
    assert dag_run_state(result) == "success"
    assert "CREATE TABLE" in result.stdout  # psql's output is in the task log
    assert TEST_PASSWORD not in result.stdout
    with catalog.connect() as db:
        tables = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        assert tables >= 5
        assert db.execute("SELECT count(*) FROM answers").fetchone() == (0,)


@pytest.mark.parametrize("enabled", [None, "false", "no"])
def test_disabled_export_is_skipped_not_failed(monkeypatch, enabled):
    """AirflowSkipException marks the task ``skipped`` (run ``success``); ``airflow dags test`` showed it."""
    from airflow.sdk.exceptions import AirflowSkipException

    from pgrepl.operators.schema_export import SchemaExportOperator

    monkeypatch.delenv("DB_SCHEMA_EXPORTER_ENABLED", raising=False)
    if enabled is not None:
        monkeypatch.setenv("DB_SCHEMA_EXPORTER_ENABLED", enabled)
    monkeypatch.setattr("pgrepl.operators.schema_export.airflow_connection_getter", lambda conn_id: None)
    with pytest.raises(AirflowSkipException, match="DB_SCHEMA_EXPORTER_ENABLED is not true"):
        SchemaExportOperator(task_id="export_schema").execute({})


def test_bad_setting_fails_without_retry(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from pgrepl.operators.schema_export import SchemaExportOperator

    monkeypatch.setenv("DB_SCHEMA_EXPORTER_ENABLED", "true")
    monkeypatch.setenv("TARGET_DATABASE_URL", "postgresql://u:p@127.0.0.1:1/wh")
    monkeypatch.delenv("DB_SCHEMA_EXPORTER_DATABASE_TARGET", raising=False)
    monkeypatch.setattr("pgrepl.operators.schema_export.airflow_connection_getter", lambda conn_id: None)
    with pytest.raises(AirflowFailException, match="DB_SCHEMA_EXPORTER_DATABASE_TARGET"):
        SchemaExportOperator(task_id="export_schema").execute({})
