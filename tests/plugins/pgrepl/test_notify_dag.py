"""Webhooks inside a real DAG run (``airflow dags test``): mapped success webhooks, the failure notifier.

A small probe DAG (written to a temporary dags folder) uses the pieces the nightly DAG wires:
``verify`` with the ``warehouse_refreshed`` outlet, a task building :func:`notification_requests`,
``WebhookOperator.partial(retries=0).expand_kwargs(...)`` and ``WebhookNotifier`` on the DAG.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest
from airflow_helpers import dag_run_state, run_dag_test, task_states

TOKEN = "tok-dag-7c2e"

PROBE_DAG = textwrap.dedent('''
    """Probe of pg-replication's end-of-run pieces."""
    import os

    import pendulum
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowFailException

    from pgrepl.assets import WAREHOUSE_REFRESHED
    from pgrepl.notify import WebhookNotifier, notification_requests, run_summary
    from pgrepl.operators.end_of_run import WebhookOperator
    from pgrepl.settings import parse_notifications

    with DAG("webhook_probe", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="Europe/Paris"),
             catchup=False, on_failure_callback=WebhookNotifier(ignore_tasks=("notify",))):

        @task(outlets=[WAREHOUSE_REFRESHED])
        def verify():
            return {"tables": 1, "rows": 1}

        @task
        def summary(verified, **context):
            body = run_summary(context["dag"].dag_id, context["run_id"], "success",
                               {"durations": {"total": 1.0}, "rows_restored": {"public.users": 1}}, [], None)
            return notification_requests(parse_notifications(os.environ), body)

        @task(trigger_rule="all_done", retries=0)
        def boom():
            raise AirflowFailException("forced failure")

        notified = WebhookOperator.partial(task_id="notify", retries=0).expand_kwargs(summary(verify()))
        notified >> boom()
''')


@pytest.fixture
def probe_env(tmp_path, httpserver):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "webhook_probe.py").write_text(PROBE_DAG)
    httpserver.expect_request("/ok", method="POST").respond_with_data("ok")
    httpserver.expect_request("/down", method="POST").respond_with_data("down", status=500)
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "NOTIFICATIONS": json.dumps([{"url": httpserver.url_for("/ok"), "token": TOKEN},
                                     {"url": httpserver.url_for("/down")}]),
    }


@pytest.mark.e2e
def test_mapped_webhooks_and_the_failure_notifier_in_a_dag_run(tmp_path, httpserver, probe_env):
    result = run_dag_test("webhook_probe", probe_env, tmp_path, timeout=300)
    states = task_states(result)
    # a failing webhook fails only its own mapped task
    assert states == {"verify": "success", "summary": "success", "notify[0]": "success", "notify[1]": "failed",
                      "boom": "failed"}, result.stdout[-4000:]
    assert dag_run_state(result) == "failed"
    received = [(r.path, dict(r.headers), json.loads(r.get_data())) for r, _ in httpserver.log]
    success = [(path, headers, body) for path, headers, body in received if body["status"] == "success"]
    failure = [(path, headers, body) for path, headers, body in received if body["status"] == "failed"]
    # one POST per webhook (no retry), then the failure message naming the last failed task to both
    assert sorted(path for path, _, _ in success) == ["/down", "/ok"], result.stdout[-4000:]
    assert sorted(path for path, _, _ in failure) == ["/down", "/ok"], result.stdout[-4000:]
    for path, headers, body in success:
        assert body["dag_id"] == "webhook_probe" and body["tables"] == {"public.users": {"mode": "full", "rows": 1}}
    for path, headers, body in failure:
        assert body["failed_task"] == "boom" and body["message"].endswith("failed at task boom")
    for path, headers, body in received:
        assert headers["Content-Type"] == "application/json"
        assert (headers.get("Authorization") == TOKEN) if path == "/ok" else ("Authorization" not in headers)
    assert TOKEN not in result.stdout
    with sqlite3.connect(result.airflow_home / "airflow.db") as db:  # verify's outlet: warehouse_refreshed
        events = db.execute("SELECT a.name, a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id").fetchall()
    assert events == [("warehouse_refreshed", "pgrepl://warehouse/refreshed")]
