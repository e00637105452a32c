"""The ``dump_to_s3`` DAG: its shape, and a full run through ``airflow dags test`` against moto S3."""

from __future__ import annotations

import re
import subprocess
import tempfile

import pytest
from airflow_helpers import ROOT, conn_uri_env, dag_run_state, load_dag_file, run_dag_test, task_states
from conftest import TEST_PASSWORD
from moto_helpers import moto_server

from pgrepl.pgtools import client_env, tool, write_passfile

DAG_FILE = ROOT / "dags" / "dump_to_s3_dag.py"


def load_dag(monkeypatch, **env):
    monkeypatch.delenv("DUMP_TO_S3_SCHEDULE", raising=False)
    monkeypatch.delenv("MAX_RETRY_COUNT", raising=False)
    return load_dag_file(DAG_FILE, monkeypatch, **env)


def test_dag_shape(monkeypatch):
    dag = load_dag(monkeypatch)
    assert dag.dag_id == "dump_to_s3"
    assert type(dag.timetable).__name__ == "NullTimetable"  # ad hoc
    assert dag.catchup is False and dag.max_active_runs == 1
    assert "pg-replication" in dag.tags and dag.doc_md
    task = dag.get_task("dump_and_upload")
    assert task.owner == "data-engineering" and task.retries == 10 and task.retry_exponential_backoff


def test_optional_cron_schedule(monkeypatch):
    dag = load_dag(monkeypatch, DUMP_TO_S3_SCHEDULE="30 2 * * 0")
    assert dag.timetable.expression == "30 2 * * 0"
    assert str(dag.timetable.timezone.name) == "Europe/Paris"
    assert type(load_dag(monkeypatch, DUMP_TO_S3_SCHEDULE="weekly").timetable).__name__ == "NullTimetable"


def url(conn):
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.mark.e2e
def test_dag_run_uploads_a_restorable_dump(source_db, make_database, fingerprint, tmp_path):
    with moto_server(auth=True) as s3:
        s3.client().create_bucket(Bucket="pix-dumps")
        env = {**conn_uri_env("replication_source", url(source_db)), **s3.env("pix-dumps", prefix="pix"),
               "REPLICATION_WORK_DIR": str(tmp_path / "work"), "MAX_RETRY_COUNT": "0"}
        # seed style: endpoint without scheme, the scheme from S3_SSL_ENABLED
        env["S3_ENDPOINT"] = s3.endpoint.removeprefix("http://")
        result = run_dag_test("dump_to_s3", env, tmp_path)
        assert task_states(result) == {"dump_and_upload": "success"}, result.stdout[-5000:]
        assert dag_run_state(result) == "success"
        client = s3.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="pix-dumps")["Contents"]]
        assert len(keys) == 1 and re.fullmatch(r"pix-\d{8}-\d{6}", keys[0])
        archive = tmp_path / "dump.pgdump"
        client.download_file("pix-dumps", keys[0], str(archive))
    assert TEST_PASSWORD not in result.stdout and s3.secret_key not in result.stdout
    assert list((tmp_path / "work" / "dump_to_s3").iterdir()) == []

    restored = make_database("restored")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                        "--dbname", restored.safe_url(), str(archive)],
                       env=client_env(write_passfile(f"{tmp}/pgpass", [restored])), check=True, capture_output=True)
    assert fingerprint(restored) == fingerprint(source_db)


def test_rejected_credentials_fail_without_retry(monkeypatch, source_db, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from pgrepl.operators.dump_to_s3 import DumpToS3Operator

    monkeypatch.setattr("pgrepl.operators.dump_to_s3.airflow_connection_getter", lambda conn_id: None)
    with moto_server(auth=True) as s3:
        s3.client().create_bucket(Bucket="pix-dumps")
        env = {"SOURCE_DATABASE_URL": url(source_db), "REPLICATION_WORK_DIR": str(tmp_path / "work"),
               **s3.env("pix-dumps", S3_SECRET_ACCESS_KEY="wrong")}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(AirflowFailException, match="S3_SECRET_ACCESS_KEY: the secret key does not match"):
            DumpToS3Operator(task_id="dump_and_upload").execute({})
