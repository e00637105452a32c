"""End to end: the whole ``pg_replication`` DAG through ``airflow dags test`` (the demo's machinery), checked table
by table against the source."""

from __future__ import annotations

import pytest

from conftest import table_fingerprint
from devenv import demo
from pgrepl.learning_content.mapping import TABLE_NAMES


def inspect(source, target):
    with target.connect() as db:
        lease = db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0]
        aside = db.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'").fetchone()[0]
        indexes = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall()}
        views = {r[0] for r in db.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'").fetchall()}
        comments = dict(db.execute(
            "SELECT pg_describe_object(classoid, objoid, objsubid), description FROM pg_description "
            "WHERE classoid = 'pg_class'::regclass AND objoid >= 16384").fetchall())
    return {"source": table_fingerprint(source), "target": table_fingerprint(target), "lease": lease,
            "aside": aside, "indexes": indexes, "views": views, "comments": comments}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return demo.run(0.002, tmp_path_factory.mktemp("e2e"), inspect=inspect)


def test_run_succeeds(demo_run):
    states = {(t["task_id"], t["map_index"]): t["state"] for t in demo_run.tasks}
    assert demo_run.state == "success", open(demo_run.log_file).read()[-5000:]
    assert states[("rollback", -1)] == "skipped"
    for task in ("preflight", "dump", "restore", "compat_views", "enrichment", "incremental_tables", "refresh_views",
                 "kept_comments", "user_views", "learning_content", "verify", "report", "notifications", "release"):
        assert states[(task, -1)] == "success", task
    assert states[("incremental", 0)] == "success"
    assert states[("notify", 0)] == "success"


def test_comments_reach_the_warehouse(demo_run):
    comments = demo_run.inspected["comments"]
    assert comments["table users"] == "Pix users"  # restored with its table
    # the demo's incremental table is bootstrapped by the incremental task; kept_comments brings its comment
    assert comments["column snappedAt of table \"knowledge-element-snapshots\""] == "when the snapshot was taken"


def test_warehouse_equals_source_table_by_table(demo_run):
    source, target = demo_run.inspected["source"], demo_run.inspected["target"]
    for table, fingerprint in source.items():
        assert target.get(table) == fingerprint, table
    assert set(target) - set(source) == set(TABLE_NAMES)
    assert all(target[t][0] > 0 for t in TABLE_NAMES)


def test_enrichment_compat_and_no_leftovers(demo_run):
    found = demo_run.inspected
    assert {"knowledge-elements_createdAt_idx", "answers_challengeId_idx", "users_createdAt_idx"} <= found["indexes"]
    # the restore creates the incremental tables empty on their first night, so enrichment (which runs before the
    # incremental step, in the seed's order) indexes them on that night already
    assert "knowledge-element-snapshots_snappedAt_idx" in found["indexes"]
    assert {"schooling-registrations", "active-users"} <= found["views"]
    assert found["lease"] == 0 and found["aside"] == 0


def test_webhook_got_the_run_summary(demo_run):
    assert len(demo_run.webhooks) == 1
    hook = demo_run.webhooks[0]
    assert hook["headers"]["Authorization"] == demo.DEMO_WEBHOOK_TOKEN
    body = hook["body"]
    assert body["status"] == "success" and body["dag_id"] == "pg_replication"
    assert body["tables"]["public.users"]["rows"] == demo_run.inspected["source"]["users"][0]
    assert body["tables"]["public.knowledge-element-snapshots"]["mode"] == "bootstrap"
    assert {"dump", "restore", "enrichment", "total"} <= set(body["durations"])
    assert "TABLE DATA" in body["restore"]
