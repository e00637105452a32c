"""Webhooks: the run summary (WebhookOperator) and the failure message (WebhookNotifier) on a loopback sink."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pgrepl import notify
from pgrepl.settings import Notification

TOKEN = "tok-3f9a-secret"

REPORT = {
    "durations": {"dump": 12.3456, "restore": 40.0, "enrichment": 1.5, "total": 60.25},
    "rows_restored": {"public.users": 5000, "public.answers-archive": 10},
    "restore_items": {"kinds": {"INDEX": {"count": 4, "seconds": 0.19, "slowest": [{"item": "INDEX a", "seconds": 0.1}]}}},
    "warnings": [],
}
INCREMENTAL = [
    {"table": "answers", "mode": "append", "rows_before": 90, "copied": 10, "rows_after": 100, "source_count": 100,
     "source_max_id": 100, "seconds": 0.5, "rows_per_second": 20.0},
    None,
]


def summary() -> dict:
    return notify.run_summary("pg_replication", "manual__1", "success", REPORT, INCREMENTAL,
                              {"tables": {"areas": 3}, "seconds": 2.0})


def test_run_summary_has_steps_tables_and_per_kind_totals():
    body = summary()
    json.dumps(body)
    assert body["dag_id"] == "pg_replication" and body["run_id"] == "manual__1" and body["status"] == "success"
    assert body["durations"] == {"dump": 12.346, "restore": 40.0, "enrichment": 1.5, "total": 60.25,
                                 "incremental": 0.5, "learning_content": 2.0}
    assert body["tables"]["public.users"] == {"mode": "full", "rows": 5000}
    assert body["tables"]["public.answers"] == {"mode": "append", "copied": 10, "rows": 100, "rows_per_second": 20.0}
    assert body["restore"]["INDEX"]["count"] == 4 and body["restore"]["INDEX"]["seconds"] == 0.19
    assert body["learning_content"] == {"areas": 3}


def test_failure_summary_names_the_task_and_hides_url_passwords():
    body = notify.failure_summary("pg_replication", "r1", "incremental", map_index=2, reason="postgresql://u:pw@h/db down")
    assert body["message"] == "pg_replication run r1 failed at task incremental[2]"
    assert body["failed_task"] == "incremental" and body["status"] == "failed"
    assert "pw" not in body["reason"] and "postgresql://u:***@h/db" in body["reason"]


def test_headers_and_requests_carry_no_token():
    assert notify.request_headers(Notification("http://h/x")) == {"Content-Type": "application/json"}
    assert notify.request_headers(Notification("http://h/x", TOKEN))["Authorization"] == TOKEN
    assert notify.split_url("https://h:8443/a/b?q=1") == ("https://h:8443", "/a/b?q=1")
    assert notify.split_url("http://h") == ("http://h", "/")
    requests = notify.notification_requests([Notification("http://h/a", TOKEN), Notification("http://h/b")], summary())
    assert [r["notification"] for r in requests] == [0, 1]
    assert [r["endpoint"] for r in requests] == ["http://h/a", "http://h/b"]
    assert json.loads(requests[0]["data"]) == summary()
    assert TOKEN not in json.dumps(requests)  # the mapped kwargs go to XCom and rendered templates
    assert notify.notification_requests([], summary()) == []


def _operator(index, notifications, body):
    from pgrepl.operators.end_of_run import WebhookOperator

    return WebhookOperator(task_id=f"notify_{index}", notification=index, endpoint=notifications[index].url,
                           data=body, notifications=notifications, retries=0, timeout=10)


def test_webhook_operator_posts_the_summary_with_token_only_when_given(httpserver):
    entries = [Notification(httpserver.url_for("/hooks/a?x=1"), TOKEN), Notification(httpserver.url_for("/hooks/b"))]
    httpserver.expect_oneshot_request("/hooks/a", method="POST", query_string="x=1").respond_with_data("ok")
    httpserver.expect_oneshot_request("/hooks/b", method="POST").respond_with_data("ok", status=202)
    kwargs = notify.notification_requests(entries, summary())
    results = [_operator(i, entries, kwargs[i]["data"]).execute({}) for i in range(2)]
    assert results == [{"url": entries[0].url, "status_code": 200}, {"url": entries[1].url, "status_code": 202}]
    httpserver.check_assertions()
    (first, _), (second, _) = httpserver.log
    for request in (first, second):
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.get_data()) == summary()
    assert first.headers["Authorization"] == TOKEN
    assert "Authorization" not in second.headers


def test_a_failing_webhook_fails_its_own_task_only(httpserver):
    from airflow.sdk.exceptions import AirflowException

    entries = [Notification(httpserver.url_for("/down"), TOKEN), Notification(httpserver.url_for("/up"))]
    httpserver.expect_request("/down", method="POST").respond_with_data("boom", status=500)
    httpserver.expect_request("/up", method="POST").respond_with_data("ok")
    body = json.dumps(summary())
    with pytest.raises(AirflowException, match="500"):
        _operator(0, entries, body).execute({})
    assert _operator(1, entries, body).execute({})["status_code"] == 200
    assert len(httpserver.log) == 1 + 1  # one attempt each: no retry inside the hook


def test_webhook_operator_refuses_an_entry_that_changed(httpserver, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from pgrepl.operators.end_of_run import WebhookOperator

    monkeypatch.setenv("NOTIFICATIONS", json.dumps([{"url": httpserver.url_for("/other")}]))
    op = WebhookOperator(task_id="notify", notification=0, endpoint=httpserver.url_for("/hooks/a"), data="{}")
    with pytest.raises(AirflowFailException, match="NOTIFICATIONS: entry 0"):
        op.execute({})
    assert httpserver.log == []


def _failure_context(task_id, map_index=-1):
    from airflow.sdk import DAG

    ti = SimpleNamespace(task_id=task_id, map_index=map_index, try_number=1)
    return {"dag": DAG("pg_replication", schedule=None), "run_id": "scheduled__2024-01-01", "ti": ti,
            "task_instance": ti, "reason": "task_failure"}


def test_failure_notifier_posts_the_failed_task_to_every_webhook(httpserver, monkeypatch):
    monkeypatch.setenv("NOTIFICATIONS", json.dumps([
        {"url": httpserver.url_for("/a"), "token": TOKEN}, {"url": httpserver.url_for("/b")}]))
    httpserver.expect_request("/a", method="POST").respond_with_data("ok")
    httpserver.expect_request("/b", method="POST").respond_with_data("ok")
    notify.WebhookNotifier()(_failure_context("restore"))
    (a, _), (b, _) = httpserver.log
    assert a.headers["Authorization"] == TOKEN and "Authorization" not in b.headers
    for request in (a, b):
        assert request.method == "POST" and request.headers["Content-Type"] == "application/json"
        body = json.loads(request.get_data())
        assert body["status"] == "failed" and body["failed_task"] == "restore"
        assert body["message"] == "pg_replication run scheduled__2024-01-01 failed at task restore"


def test_failure_notifier_tries_every_webhook_then_raises(httpserver):
    entries = [Notification(httpserver.url_for("/down"), TOKEN), Notification(httpserver.url_for("/up"))]
    httpserver.expect_request("/down").respond_with_data("no", status=503)
    httpserver.expect_request("/up").respond_with_data("ok")
    with pytest.raises(RuntimeError, match="/down") as failure:
        notify.WebhookNotifier(notifications=entries)(_failure_context("verify"))
    assert TOKEN not in str(failure.value)
    assert [request.path for request, _ in httpserver.log] == ["/down", "/up"]


def test_failure_notifier_ignores_listed_tasks_and_bad_settings(httpserver, monkeypatch):
    entries = [Notification(httpserver.url_for("/a"))]
    notify.WebhookNotifier(notifications=entries, ignore_tasks=("notify",))(_failure_context("notify", 0))
    monkeypatch.setenv("NOTIFICATIONS", "{not json")
    notify.WebhookNotifier()(_failure_context("dump"))  # logged, nothing sent, no crash in the processor
    assert httpserver.log == []

