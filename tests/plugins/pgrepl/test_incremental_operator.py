"""PostgresIncrementalOperator through Airflow connections defined as AIRFLOW_CONN_* environment variables."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pgrepl.operators.incremental import PostgresIncrementalOperator

TEST_PASSWORD = os.environ["PGREPL_TEST_PASSWORD"]  # set by tests/conftest.py


def _conn_json(db) -> str:
    return json.dumps({"conn_type": "postgres", "host": db.host, "port": db.port, "login": db.user,
                       "password": TEST_PASSWORD, "schema": db.dbname})


def _conn_uri(db) -> str:
    return f"postgres://{quote(db.user)}:{quote(TEST_PASSWORD)}@{db.host}:{db.port}/{quote(db.dbname)}"


@pytest.fixture
def airflow_conns(source_db, target_db, monkeypatch, tmp_path):
    for name in ("SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_REPLICATION_SOURCE", _conn_json(source_db))
    monkeypatch.setenv("AIRFLOW_CONN_REPLICATION_TARGET", _conn_uri(target_db))
    monkeypatch.setenv("BACKUP_MODE", json.dumps({"answers": "incremental", "knowledge-elements": "incremental"}))
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(tmp_path / "work"))
    return source_db, target_db


def test_operator_is_thin_and_templated():
    op = PostgresIncrementalOperator(task_id="incremental", table="{{ params.table }}")
    assert op.template_fields == ("table",) and op.table == "{{ params.table }}"
    with pytest.raises(TypeError):
        PostgresIncrementalOperator("incremental", "answers")  # keyword-only


def test_execute_bootstraps_then_appends_through_airflow_connections(airflow_conns, capsys):
    source, target = airflow_conns
    op = PostgresIncrementalOperator(task_id="incremental", table="answers")
    first = op.execute(context={})
    assert first["mode"] == "bootstrap" and first["rows_after"] == first["source_count"] > 0
    json.dumps(first)  # XCom-serialisable
    with source.connect() as db:
        db.execute("""INSERT INTO answers (value, "challengeId") SELECT 'v', 'rec' FROM generate_series(1, 7)""")
        db.commit()
    second = op.execute(context={})
    assert (second["mode"], second["copied"], second["rows_after"]) == ("append", 7, first["rows_after"] + 7)
    assert second["rows_after"] == second["source_count"]
    logged = "".join(capsys.readouterr())  # the task logger (structlog) writes to the captured stream
    assert "missing on the target: bootstrap" in logged and "copied 7, rows after" in logged
    assert TEST_PASSWORD not in logged and TEST_PASSWORD not in json.dumps(second)


def test_execute_fails_without_retry_on_a_rewound_source(airflow_conns):
    source, target = airflow_conns
    op = PostgresIncrementalOperator(task_id="incremental", table="answers")
    op.execute(context={})
    with target.connect() as db:
        db.execute("""INSERT INTO answers (id, "challengeId") SELECT max(id) + 100, 'x' FROM answers""")
        db.commit()
    with pytest.raises(AirflowFailException, match=r"table answers: target max\(id\) = \d+ is above source max\(id\)"):
        op.execute(context={})


def test_execute_bad_settings_and_missing_table(airflow_conns, monkeypatch):
    monkeypatch.setenv("BACKUP_MODE", "{not json")
    with pytest.raises(AirflowFailException, match="BACKUP_MODE"):
        PostgresIncrementalOperator(task_id="incremental", table="answers").execute(context={})
    monkeypatch.setenv("BACKUP_MODE", "{}")
    with pytest.raises(AirflowFailException, match="table ghosts: absent in the source"):
        PostgresIncrementalOperator(task_id="incremental", table="ghosts").execute(context={})


def test_execute_retries_on_connection_errors(airflow_conns, monkeypatch, pg_cluster):
    source, _ = airflow_conns
    monkeypatch.setenv("AIRFLOW_CONN_REPLICATION_SOURCE", _conn_json(source).replace(TEST_PASSWORD, "wrong-password"))
    with pytest.raises(AirflowException, match=r"table answers: incremental copy failed, nothing committed") as info:
        PostgresIncrementalOperator(task_id="incremental", table="answers").execute(context={})
    assert not isinstance(info.value, AirflowFailException)
    assert "wrong-password" not in str(info.value)
