"""Users' views through a real ``airflow dags test pg_replication``: the ``user_views`` task recreates them after the
incremental step, a view that no longer compiles is named in the webhook's run summary, and the night succeeds."""

from __future__ import annotations

import json

import pytest
from airflow_helpers import dag_run_state, run_dag_test, task_states

from conftest import TEST_PASSWORD
from pgrepl import fullcopy
from pgrepl.settings import ReplicationSettings


def uri(conn) -> str:
    return f"postgres://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.mark.e2e
def test_user_views_task_in_a_dag_run(source_db, target_db, tmp_path, httpserver):
    with source_db.connect() as db:
        db.execute("ALTER TABLE users ADD COLUMN legacy_code text")
        db.commit()
    settings = ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)
    fullcopy.run_full_copy(settings, "night1")
    with target_db.connect() as db:
        db.execute("""
            CREATE SCHEMA analytics;
            CREATE VIEW public.even_users AS SELECT id, email FROM public.users WHERE id % 2 = 0;
            CREATE MATERIALIZED VIEW analytics.snapshot_users AS
                SELECT "userId", count(*) AS n FROM public."knowledge-element-snapshots" GROUP BY 1;
            CREATE VIEW analytics.legacy AS SELECT id, legacy_code FROM public.users;
        """)
        db.commit()
    with source_db.connect() as db:
        db.execute("ALTER TABLE users DROP COLUMN legacy_code")
        db.execute("""INSERT INTO "knowledge-element-snapshots" ("userId", "snappedAt", snapshot)
                      SELECT id, now(), '{}' FROM users LIMIT 2""")
        db.commit()
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    env = {
        "AIRFLOW_CONN_REPLICATION_SOURCE": uri(source_db),
        "AIRFLOW_CONN_REPLICATION_TARGET": uri(target_db),
        "REPLICATION_WORK_DIR": str(tmp_path / "work"),
        "PG_RESTORE_JOBS": "2",
        "MAX_RETRY_COUNT": "0",
        # the incremental step runs before the users' views are recreated: the materialized view sees its rows
        "BACKUP_MODE": json.dumps({"knowledge-element-snapshots": "incremental"}),
        "NOTIFICATIONS": json.dumps([{"url": httpserver.url_for("/hook")}]),
    }
    result = run_dag_test("pg_replication", env, tmp_path, timeout=600)
    states = task_states(result)
    assert dag_run_state(result) == "success", result.stdout[-5000:]
    assert states["user_views"] == "success"
    assert states["incremental[0]"] == "success"
    with target_db.connect() as db:
        assert db.execute("SELECT count(*) FROM public.even_users").fetchone()[0] > 0
        assert db.execute("SELECT sum(n) FROM analytics.snapshot_users").fetchone()[0] == \
            db.execute('SELECT count(*) FROM "knowledge-element-snapshots"').fetchone()[0]
        assert db.execute("SELECT to_regclass('analytics.legacy')").fetchone()[0] is None
    bodies = [json.loads(request.get_data()) for request, _ in httpserver.log]
    summary = next(body for body in bodies if body["status"] == "success")
    assert sorted(summary["user_views"]["recreated"]) == ["analytics.snapshot_users", "public.even_users"]
    assert [f["view"] for f in summary["user_views"]["failed"]] == ["analytics.legacy"]
    assert "legacy_code" in summary["user_views"]["failed"][0]["error"]
    assert "analytics.legacy" in result.stdout or any(
        "analytics.legacy" in p.read_text(errors="replace") for p in (result.airflow_home / "logs").rglob("*") if p.is_file())
