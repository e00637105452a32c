"""LearningContentOperator.execute end to end: settings from the environment, a real HTTP server, a real warehouse."""

from __future__ import annotations

import json
import os

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from devenv.lcms_server import load_sample_payload
from pgrepl.learning_content.mapping import TABLE_NAMES
from pgrepl.operators.learning_content import LearningContentOperator

KEY = "lcms-Key-op-5d1"
PATH = "/api/databases/airtable"


@pytest.fixture
def lcms_env(monkeypatch, target_db, httpserver, tmp_path):
    """Settings pointing at ``httpserver`` (API) and ``target_db`` (warehouse), no Airflow connections."""
    url = f"postgresql://{target_db.user}:{os.environ['PGREPL_TEST_PASSWORD']}@{target_db.host}:{target_db.port}/{target_db.dbname}"
    for name in ("AIRFLOW_CONN_LCMS_API", "AIRFLOW_CONN_REPLICATION_TARGET", "AIRFLOW_CONN_REPLICATION_SOURCE",
                 "BACKUP_MODE", "APP", "DATABASE_URL", "SCHEDULE", "MAX_RETRY_COUNT", "PG_RESTORE_JOBS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SOURCE_DATABASE_URL", url)  # only parsed by the settings; never read here
    monkeypatch.setenv("TARGET_DATABASE_URL", url)
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LCMS_API_URL", httpserver.url_for("/api"))
    monkeypatch.setenv("LCMS_API_KEY", KEY)
    return monkeypatch


def operator() -> LearningContentOperator:
    return LearningContentOperator(task_id="learning_content", timeout_seconds=5, http_retries=1, retry_wait_seconds=0.01)


def test_init_only_stores_arguments():
    op = LearningContentOperator(task_id="lc", endpoint="x/y", http_retries=0)
    assert (op.endpoint, op.http_retries, op.timeout_seconds, op.drop_dependents) == ("x/y", 0, 180.0, False)
    assert "endpoint" in op.template_fields
    with pytest.raises(TypeError):
        LearningContentOperator("lc")  # keyword-only


def test_loads_every_table_and_returns_counts(lcms_env, httpserver, target_db, fingerprint):
    payload = load_sample_payload()
    httpserver.expect_request(PATH, headers={"Authorization": f"Bearer {KEY}"}).respond_with_json(payload)
    result = operator().execute({})
    assert result["tables"] == {name: len(payload[name]) for name in TABLE_NAMES}
    assert result["seconds"] >= 0
    json.dumps(result)  # fits XCom
    tables = fingerprint(target_db)
    assert {name: tables[name][0] for name in TABLE_NAMES} == result["tables"]


def test_skipped_when_not_configured(lcms_env, caplog):
    lcms_env.delenv("LCMS_API_URL")
    lcms_env.delenv("LCMS_API_KEY")
    with pytest.raises(AirflowSkipException):
        operator().execute({})


def test_half_configured_fails_naming_the_setting(lcms_env):
    lcms_env.delenv("LCMS_API_KEY")
    with pytest.raises(AirflowFailException, match="LCMS_API_KEY"):
        operator().execute({})


def test_airflow_connection_lcms_api(lcms_env, httpserver):
    lcms_env.delenv("LCMS_API_URL")
    lcms_env.delenv("LCMS_API_KEY")
    lcms_env.setenv("AIRFLOW_CONN_LCMS_API", json.dumps(
        {"conn_type": "http", "host": httpserver.url_for("/api"), "password": "conn-key"}))
    lcms_env.setenv("APP", "pix-db-replication-review")
    httpserver.expect_request(PATH, headers={"Authorization": "Bearer conn-key", "client": "pix-db-replication-review"}
                              ).respond_with_json(load_sample_payload())
    assert operator().execute({})["tables"]["areas"] == 2


def _broken(kind: str):
    payload = load_sample_payload()
    if kind == "record without id":
        del payload["challenges"][1]["id"]
    elif kind == "missing table":
        del payload["tubes"]
    elif kind == "misfit":
        payload["skills"][2]["level"] = "troisième"
    return payload


@pytest.mark.parametrize(
    "respond, error, words",
    [
        (lambda h: h.respond_with_json({"error": "denied"}, status=401), AirflowFailException, ["HTTP 401", PATH]),
        (lambda h: h.respond_with_json({}, status=404), AirflowFailException, ["HTTP 404", PATH]),
        (lambda h: h.respond_with_data("oops", status=500), AirflowException, ["HTTP 500", PATH, "2 attempt(s)"]),
        (lambda h: h.respond_with_data("<html/>", content_type="text/html"), AirflowFailException, ["not JSON", PATH]),
        (lambda h: h.respond_with_json(_broken("record without id")), AirflowFailException, ["table challenges", "record #1", "no id"]),
        (lambda h: h.respond_with_json(_broken("missing table")), AirflowFailException, ["table tubes", "missing"]),
        (lambda h: h.respond_with_json(_broken("misfit")), AirflowFailException, ["table skills", "record recSkill3", "field level"]),
    ],
    ids=["401", "404", "500", "not-json", "no-id", "missing-table", "misfit"],
)
def test_failure_after_a_good_load_keeps_the_good_load(lcms_env, httpserver, target_db, fingerprint, respond, error, words):
    httpserver.expect_oneshot_request(PATH).respond_with_json(load_sample_payload())
    operator().execute({})
    before = fingerprint(target_db)
    respond(httpserver.expect_request(PATH))
    with pytest.raises(error) as info:
        operator().execute({})
    for word in words:
        assert word in str(info.value)
    assert KEY not in str(info.value)
    if error is AirflowException:
        assert not isinstance(info.value, AirflowFailException)  # transient: Airflow may retry the task
    assert fingerprint(target_db) == before
