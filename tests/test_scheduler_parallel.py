"""Mapped tasks run at the same time under a real scheduler (LocalExecutor, parallelism 4).

``airflow dags test`` runs one task after the other; here one stack of api-server + scheduler +
dag-processor (tests/scheduler_harness.py, SQLite metadata) serves the whole module:

* a tiny DAG whose four mapped tasks each sleep 3 s and record their own clock: they overlap;
* the real ``pg_replication`` on a throwaway source and warehouse, two ``incremental`` tables in
  ``BACKUP_MODE``: the run succeeds through separate task processes and its mapped ``incremental``
  tasks run at the same time.

pg_replication is triggered as soon as the stack is up, so both DAGs run while the first test waits.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from conftest import ROOT, TEST_PASSWORD, table_fingerprint
from devenv.sample_data import load_sample
from scheduler_harness import AirflowStack, airflow_bin, max_concurrency

pytestmark = pytest.mark.skipif(airflow_bin() is None, reason="the airflow CLI is not installed")

DAG_ID = "harness_parallel"
MAPPED = 4
SLEEP = 3.0
# Pix's append-only tables; "knowledge-elements" references answers (the warehouse gets no FK between them)
INCREMENTAL = ["answers", "knowledge-elements"]

DAG_FILE = textwrap.dedent(
    f'''
    """Four mapped tasks that sleep and record when they ran."""
    from __future__ import annotations

    import json
    import os
    import time
    from pathlib import Path

    import pendulum
    from airflow.sdk import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False,
         max_active_tasks=16, tags=["test"])
    def harness_parallel():
        @task
        def items() -> list[int]:
            return list(range({MAPPED}))

        @task
        def sleepy(n: int) -> int:
            start = time.time()
            time.sleep({SLEEP})
            out = Path(os.environ["HARNESS_OUT"]) / f"{{n}}.json"
            out.write_text(json.dumps({{"n": n, "start": start, "end": time.time(), "pid": os.getpid()}}))
            return n

        sleepy.expand(n=items())


    harness_parallel()
    '''
)


def url(conn) -> str:
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


def slow_down_incremental_copies(source, target, wait_seconds: int = 90) -> None:
    """Make "the copies ran at the same time" independent of the machine's load: the warehouse gets the incremental
    tables empty (the first night fills them, as the operator does for an empty table), each with a statement
    trigger that waits until another session is running a COPY too (then lingers so the other sees it as well),
    and fails the copy after ``wait_seconds`` if none ever does. The trigger's function lives in a schema the
    restore does not touch."""
    import subprocess

    from pgrepl.pgtools import client_env, tool

    tables = [arg for table in INCREMENTAL for arg in ("-t", f'public."{table}"')]
    ddl = subprocess.run([tool("pg_dump"), "--schema-only", "--section=pre-data", "--no-owner", "--no-privileges",
                          *tables, "--dbname", source.safe_url()],
                         env={**client_env(None), "PGPASSWORD": TEST_PASSWORD}, capture_output=True, text=True, check=True)
    with target.connect() as db:
        statements = "\n".join(line for line in ddl.stdout.splitlines() if not line.startswith("\\"))  # psql-only
        db.execute(statements.replace("SELECT pg_catalog.set_config('search_path', '', false);", ""))
        db.execute("CREATE SCHEMA testing")
        db.execute(
            "CREATE FUNCTION testing.slow() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "DECLARE i int := 0; BEGIN "
            "WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' "
            "                  AND query LIKE 'COPY %FROM STDIN%') LOOP "
            "  PERFORM pg_sleep(0.1); PERFORM pg_stat_clear_snapshot(); i := i + 1; "
            f"  IF i > {wait_seconds * 10} THEN "
            "    RAISE EXCEPTION 'no other incremental copy ran while % was copied', TG_TABLE_NAME; END IF; "
            "END LOOP; PERFORM pg_sleep(1); RETURN NULL; END $$"
        )
        for table in INCREMENTAL:
            db.execute(f'CREATE TRIGGER slow BEFORE INSERT ON public."{table}" FOR EACH STATEMENT EXECUTE FUNCTION testing.slow()')
        db.commit()


@pytest.fixture(scope="module")
def databases(pg_cluster):
    source = pg_cluster.create_database("sched_source", "sched_source_owner", TEST_PASSWORD)
    load_sample(source, scale=0.005)
    target = pg_cluster.create_database("sched_warehouse", "sched_warehouse_owner", TEST_PASSWORD)
    slow_down_incremental_copies(source, target)
    yield source, target
    for name in ("sched_source", "sched_warehouse"):
        pg_cluster.drop_database(name)


PG_TEST = "test_pg_replication_incremental_tasks_overlap"


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """The stack, with the tiny DAG and pg_replication (a symlink: its SQL paths follow the real file).

    pg_replication gets databases and is triggered at once only when its test is selected.
    """
    with_replication = any(item.name == PG_TEST for item in request.session.items)
    base = tmp_path_factory.mktemp("scheduler")
    dags = base / "dags"
    dags.mkdir()
    (dags / "harness_parallel.py").write_text(DAG_FILE)
    (dags / "pg_replication_dag.py").symlink_to(ROOT / "dags" / "pg_replication_dag.py")
    out = base / "out"
    out.mkdir()
    env = {"HARNESS_OUT": str(out), "REPLICATION_WORK_DIR": str(base / "work")}
    if with_replication:
        source, target = request.getfixturevalue("databases")
        env.update({
            "SOURCE_DATABASE_URL": url(source),
            "TARGET_DATABASE_URL": url(target),
            "PG_RESTORE_JOBS": "2",
            "BACKUP_MODE": json.dumps({table: "incremental" for table in INCREMENTAL}),
            "MAX_RETRY_COUNT": "0",
        })
    with AirflowStack(base / "home", dags, parallelism=4, extra_env=env) as running:
        running.out = out
        if with_replication:
            running.wait_for_dag("pg_replication")
            running.replication_run = running.trigger("pg_replication")
        yield running
    # every process the stack started is gone, the executor's task processes included
    assert not running._own_pids()


def test_max_concurrency():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    s = timedelta(seconds=1)
    assert max_concurrency([]) == 0
    assert max_concurrency([(t0, t0 + 3 * s), (t0 + s, t0 + 4 * s), (t0 + 5 * s, t0 + 6 * s)]) == 2
    # touching intervals do not overlap
    assert max_concurrency([(t0, t0 + s), (t0 + s, t0 + 2 * s)]) == 1
    assert max_concurrency([(t0, t0 + 9 * s)] * 3 + [(t0, None)]) == 3


def test_mapped_tasks_overlap_under_the_scheduler(stack):
    stack.wait_for_dag(DAG_ID)
    run_id = stack.trigger(DAG_ID)
    state = stack.wait_for_run(DAG_ID, run_id)
    tis = stack.task_instances(DAG_ID, run_id, task_id="sleepy")
    assert state == "success", stack.log_tails()

    assert sorted(ti.map_index for ti in tis) == list(range(MAPPED))
    assert all(ti.state == "success" for ti in tis), tis
    # the metadata database: at least two mapped instances were running at one instant
    assert max_concurrency([(ti.start, ti.end) for ti in tis]) >= 2, [(ti.start, ti.end) for ti in tis]
    # and the tasks' own clocks agree, from different processes
    records = [json.loads(p.read_text()) for p in sorted(stack.out.glob("*.json"))]
    assert sorted(r["n"] for r in records) == list(range(MAPPED))
    assert all(r["end"] - r["start"] >= SLEEP for r in records)
    assert max_concurrency([(r["start"], r["end"]) for r in records]) >= 2, records
    assert len({r["pid"] for r in records}) >= 2
    # overlap means the whole map took less than running the four one after the other
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    assert span < MAPPED * SLEEP, span


@pytest.mark.e2e
def test_pg_replication_incremental_tasks_overlap(stack, databases):
    source, target = databases
    stack.wait_for_run("pg_replication", stack.replication_run, timeout=300)
    # Unpausing the DAG also makes the scheduler create a run for the latest SCHEDULE slot (catchup is off), and
    # max_active_runs=1 runs the two one after the other in either order: only the first to reach `incremental`
    # copies rows (the second finds nothing new), so that is the run to look at.
    runs = [run_id for (run_id,) in stack.query("SELECT run_id FROM dag_run WHERE dag_id = 'pg_replication'")]
    states = {run_id: stack.wait_for_run("pg_replication", run_id, timeout=300) for run_id in runs}

    def incremental_start(run_id):
        starts = [ti.start for ti in stack.task_instances("pg_replication", run_id, task_id="incremental") if ti.start]
        return min(starts) if starts else datetime.max.replace(tzinfo=timezone.utc)

    copying_run = min(runs, key=incremental_start)
    state = states[copying_run]
    tis = stack.task_instances("pg_replication", copying_run)
    states = {(ti.task_id, ti.map_index): ti.state for ti in tis}
    if state != "success":
        pytest.fail(f"pg_replication {state}: {states}\n{stack.failed_task_logs('pg_replication', copying_run)}",
                    pytrace=False)
    for task in ("preflight", "dump", "restore", "compat_views", "enrichment", "verify", "report", "release"):
        assert states[(task, -1)] == "success", (task, states)

    incremental = [ti for ti in tis if ti.task_id == "incremental"]
    assert sorted(ti.map_index for ti in incremental) == list(range(len(INCREMENTAL)))
    assert all(ti.state == "success" for ti in incremental), incremental
    # the mapped copies ran side by side, each in its own task process
    print("incremental:", [(ti.map_index, ti.start.isoformat(), ti.end.isoformat()) for ti in incremental])
    assert max_concurrency([(ti.start, ti.end) for ti in incremental]) >= 2, [(ti.start, ti.end) for ti in incremental]
    assert len({ti.pid for ti in incremental}) == len(INCREMENTAL)

    # and the warehouse got every table, the incremental ones included
    source_tables, target_tables = table_fingerprint(source), table_fingerprint(target)
    for table, fingerprint in source_tables.items():
        assert target_tables.get(table) == fingerprint, table
