"""On call at 5 a.m., under a real scheduler: restarts that work, a lease that cannot strand, a deadline.

One stack (api-server + scheduler + dag-processor, LocalExecutor, tests/scheduler_harness.py) serves the module;
the nights run one after the other, as they would in production:

0. the scheduled run created when the DAG appears (unpausing runs the slot already passed today): a normal night;
1. night A fails at ``restore`` because of the source's data (a row its CHECK constraint rejects); the source is
   fixed; *clear only failed tasks* (what the UI offers on the run): ``restore`` takes a fresh dump by itself and the
   run succeeds, verified against the fresh dump's counts; its lease is freed when the run ends although its
   ``release`` task, already done, was not cleared;
2. night B: a lease left by run A (a worker that died before freeing it) is taken over, logged; the night succeeds
   and its logs carry none of the old noise (the compat view's "dropped" warning, ``XCom not found``);
3. night C fails the same way; fixed; ``dump`` cleared with ``--downstream``: success too;
4. night D is held in its incremental copy; the deadline DAG appears and runs: every webhook gets a "late"
   message naming run D and its running task; once D is done, the deadline DAG reports nothing.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ROOT, TEST_PASSWORD
from devenv.sample_data import load_sample
from devenv.webhook_sink import WebhookSink
from scheduler_harness import AirflowStack, _event, airflow_bin

pytestmark = [pytest.mark.skipif(airflow_bin() is None, reason="the airflow CLI is not installed"), pytest.mark.e2e]

DAG_ID = "pg_replication"


def url(conn) -> str:
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


def execute(conn, statement: str, params=None) -> list[tuple]:
    with conn.connect() as db:
        cursor = db.execute(statement, params)
        rows = cursor.fetchall() if cursor.description else []
        db.commit()
        return rows


def break_source(source) -> None:
    """A row the table's CHECK rejects once restored: the check's function changed after the row went in."""
    execute(source, "CREATE OR REPLACE FUNCTION public.score_ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'")
    execute(source, "INSERT INTO public.scores VALUES (%s, -1)", (int(time.time() * 1000) % 1_000_000_000,))
    execute(source, "CREATE OR REPLACE FUNCTION public.score_ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT v >= 0'")


def fix_source(source) -> None:
    execute(source, "DELETE FROM public.scores WHERE v < 0")


@pytest.fixture(scope="module")
def databases(pg_cluster):
    source = pg_cluster.create_database("restart_source", "restart_source_owner", TEST_PASSWORD)
    load_sample(source, scale=0.002)
    execute(source, "CREATE FUNCTION public.score_ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT v >= 0'")
    execute(source, "CREATE TABLE public.scores (id int PRIMARY KEY, v int CHECK (public.score_ok(v)))")
    execute(source, "INSERT INTO public.scores SELECT g, g FROM generate_series(1, 50) g")
    target = pg_cluster.create_database("restart_warehouse", "restart_warehouse_owner", TEST_PASSWORD)
    yield source, target
    for name in ("restart_source", "restart_warehouse"):
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def sink():
    with WebhookSink() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory, databases, sink):
    source, target = databases
    base = tmp_path_factory.mktemp("restart")
    dags = base / "dags"
    dags.mkdir()
    (dags / "pg_replication_dag.py").symlink_to(ROOT / "dags" / "pg_replication_dag.py")
    env = {
        "SOURCE_DATABASE_URL": url(source),
        "TARGET_DATABASE_URL": url(target),
        "REPLICATION_WORK_DIR": str(base / "work"),
        "PG_RESTORE_JOBS": "2",
        "BACKUP_MODE": json.dumps({"answers": "incremental"}),
        "MAX_RETRY_COUNT": "0",
        "NOTIFICATIONS": json.dumps([{"url": sink.url, "token": "tok-1"}]),
        "DEADLINE": "07:45",
        # the cron schedules are part of what is tested here: the slot passed today runs when a DAG appears
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
    }
    with AirflowStack(base / "home", dags, parallelism=4, extra_env=env) as running:
        running.dags = dags
        running.work = base / "work"
        running.wait_for_dag(DAG_ID)
        yield running
    assert not running._own_pids()


def trigger(stack, run_id: str, logical_date: datetime) -> str:
    stack.cli("dags", "trigger", DAG_ID, "--run-id", run_id, "--logical-date", logical_date.isoformat())
    return run_id


def clear(stack, logical_date: datetime, *args: str) -> None:
    """The README's recipe: one run, selected by its logical date (-s and -e both set to it)."""
    stamp = logical_date.isoformat()
    stack.cli("tasks", "clear", DAG_ID, *args, "-s", stamp, "-e", stamp, "--yes")


def states(stack, run_id: str) -> dict[str, str]:
    return {ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
            for ti in stack.task_instances(DAG_ID, run_id)}


def log_text(stack, run_id: str, task_id: str) -> str:
    """The task's log: each record's event, then the raw JSON lines (an exception's message is in those)."""
    raw = stack.task_log(DAG_ID, run_id, task_id)
    return "\n".join(_event(line) for line in raw.splitlines()) + "\n" + raw


def wait_success(stack, run_id: str, timeout: float = 300) -> None:
    state = stack.wait_for_run(DAG_ID, run_id, timeout=timeout)
    if state != "success":
        pytest.fail(f"{run_id} {state}: {states(stack, run_id)}\n{stack.failed_task_logs(DAG_ID, run_id)}", pytrace=False)


def wait_until(what: str, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.5)


def lease_rows(target) -> list[tuple]:
    return execute(target, "SELECT run_id FROM _pgrepl.lease")


BASE = datetime(2025, 6, 1, 3, 10, tzinfo=timezone.utc)


def test_nights_restart_lease_deadline(stack, databases, sink):
    source, target = databases

    # 0. the run created when the DAG appeared: yesterday's warehouse
    scheduled = wait_until("the scheduled run", lambda: stack.query(
        "SELECT run_id FROM dag_run WHERE dag_id = :d AND run_type = 'scheduled'", d=DAG_ID), timeout=180)[0][0]
    wait_success(stack, scheduled)

    # 1. a failure caused by the source's data, fixed, then "clear only failed tasks"
    break_source(source)
    day_a = BASE
    run_a = trigger(stack, "night_a", day_a)
    assert stack.wait_for_run(DAG_ID, run_a, timeout=300) == "failed"
    first = states(stack, run_a)
    assert first["restore"] == "failed" and first["release"] == "success", first
    restore_log = log_text(stack, run_a, "restore")
    assert "check constraint" in restore_log and "clear `restore`" in restore_log, restore_log[-3000:]
    assert "takes a fresh dump" in restore_log
    assert lease_rows(target) == []
    # yesterday's warehouse is still there
    assert execute(target, "SELECT count(*) FROM public.scores")[0][0] == 50
    fix_source(source)
    clear(stack, day_a, "--only-failed")
    wait_success(stack, run_a)
    restore_log = log_text(stack, run_a, "restore")
    assert "taking a fresh dump before restoring" in restore_log, restore_log[-3000:]
    after = states(stack, run_a)
    assert after["verify"] == "success" and after["release"] == "success", after  # release was not run again
    # the DAG's end-of-run callback freed the lease the cleared restore took again
    wait_until("the lease to be freed by the end-of-run callback", lambda: lease_rows(target) == [], timeout=120)

    # 2. the next night, with a lease a dead worker left behind for run A: taken over, logged
    execute(target, "INSERT INTO _pgrepl.lease (id, run_id, acquired_at) VALUES (1, %s, now())", (run_a,))
    day_b = BASE + timedelta(days=1)
    run_b = trigger(stack, "night_b", day_b)
    wait_success(stack, run_b)
    assert f"took over the run lease from {run_a}" in log_text(stack, run_b, "preflight")
    assert "that run is success in Airflow" in log_text(stack, run_b, "preflight")
    # no noise: the compat view goes with yesterday's tables and comes back at once; no learning content to pull
    assert "dropped with yesterday" not in log_text(stack, run_b, "restore")
    for task in ("verify", "notifications", "report"):
        assert "XCom not found" not in log_text(stack, run_b, task), task

    # 3. the same failure, restarted the other way: dump with its downstream tasks
    break_source(source)
    day_c = BASE + timedelta(days=2)
    run_c = trigger(stack, "night_c", day_c)
    assert stack.wait_for_run(DAG_ID, run_c, timeout=300) == "failed"
    assert (stack.work / "night_c" / "dump").is_dir()  # kept for diagnosis
    fix_source(source)
    clear(stack, day_c, "-t", "dump", "--downstream")
    wait_success(stack, run_c)
    assert "taking a fresh dump" not in log_text(stack, run_c, "restore")  # the cleared dump was fresh
    wait_until("the lease to be freed", lambda: lease_rows(target) == [], timeout=120)

    # 4. a night still running at the deadline
    execute(target, "CREATE SCHEMA IF NOT EXISTS testing")
    execute(target, "CREATE TABLE IF NOT EXISTS testing.hold (id int)")
    execute(target, "INSERT INTO testing.hold VALUES (1)")
    execute(target, (
        "CREATE OR REPLACE FUNCTION testing.wait_hold() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "DECLARE i int := 0; BEGIN "
        "WHILE EXISTS (SELECT 1 FROM testing.hold) AND i < 1800 LOOP PERFORM pg_sleep(0.1); i := i + 1; END LOOP; "
        "RETURN NULL; END $$"))
    execute(target, "CREATE TRIGGER hold BEFORE INSERT ON public.answers FOR EACH STATEMENT EXECUTE FUNCTION testing.wait_hold()")
    execute(source, "INSERT INTO answers (value, result, \"challengeId\") VALUES ('late', 'ok', 'rec1')")
    day_d = BASE + timedelta(days=3)
    received = len(sink.received)
    run_d = trigger(stack, "night_d", day_d)
    wait_until("the incremental copy to be held", lambda: execute(
        target, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY %FROM STDIN%' AND state = 'active'"), timeout=240)
    # the deadline DAG appears now: its last slot (DEADLINE, already passed today) runs at once
    (stack.dags / "pg_replication_deadline_dag.py").symlink_to(ROOT / "dags" / "pg_replication_deadline_dag.py")
    late = wait_until("the late message", lambda: [
        r for r in sink.received[received:] if isinstance(r["body"], dict) and r["body"].get("status") == "late"
    ], timeout=240)
    body = late[0]["body"]
    assert late[0]["headers"].get("Authorization") == "tok-1"
    assert body["run_id"] == run_d and body["deadline"] == "07:45", body
    assert "incremental" in " ".join(body["unfinished_tasks"]), body
    assert f"run {run_d} is not finished at the deadline 07:45; running: incremental" in body["text"], body
    execute(target, "DELETE FROM testing.hold")
    wait_success(stack, run_d)
    execute(target, "DROP TRIGGER hold ON public.answers")
    # nothing late any more: a deadline run now says nothing
    checked = len(sink.received)
    stack.cli("dags", "trigger", "pg_replication_deadline", "--run-id", "deadline_idle")
    assert stack.wait_for_run("pg_replication_deadline", "deadline_idle", timeout=180) == "success"
    assert [r for r in sink.received[checked:] if isinstance(r["body"], dict) and r["body"].get("status") == "late"] == []
