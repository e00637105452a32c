"""A failed restore keeps yesterday's warehouse: real failures injected into a real pg_restore.

After a first good night, each test breaks the second night in a different way — rows the warehouse refuses,
pg_restore killed, its connection terminated by the server, the orchestrating connection lost too, and a whole DAG
run through ``airflow dags test`` — and checks that every warehouse table (row counts and content hashes), view and
index is as it was, with no aside schema, no pending swap and no lease left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import TEST_PASSWORD, table_fingerprint
from dump_helpers import add_refused_table
from pgrepl import fullcopy
from pgrepl import swap as warehouse
from pgrepl.settings import ReplicationSettings

#: rows of the table whose CHECK sleeps on the warehouse: long enough a COPY to hit it mid-way (~2 ms a row)
SLOW_ROWS = 1000


@pytest.fixture
def night(source_db, target_db, tmp_path):
    """A warehouse after one good night, and what it looked like."""
    settings = ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)
    fullcopy.run_full_copy(settings, "good-night")
    with source_db.connect() as db:  # tonight's source differs from yesterday's warehouse
        db.execute("UPDATE users SET \"lastName\" = 'changed tonight'")
        db.execute("DELETE FROM \"answers-archive\" WHERE id % 3 = 0")
        db.commit()
    return settings, snapshot(target_db)


def snapshot(conn) -> dict:
    """Everything a reader relies on: table fingerprints, views (and that they answer), indexes, constraints."""
    with conn.connect() as db:
        views = {r[0]: db.execute(f'SELECT count(*) FROM public."{r[0]}"').fetchone()[0]  # names from the catalog
                 for r in db.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'").fetchall()}
        indexes = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall()}
        constraints = {r[0] for r in db.execute(
            "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace").fetchall()}
    return {"tables": table_fingerprint(conn), "views": views, "indexes": indexes, "constraints": constraints}


def assert_yesterday(target, yesterday) -> None:
    now = snapshot(target)
    assert now["tables"] == yesterday["tables"]
    assert now["views"] == yesterday["views"]
    assert now["indexes"] == yesterday["indexes"]
    assert now["constraints"] == yesterday["constraints"]
    with target.connect() as db:
        # no staging, shadow or aside schema left, nothing left to clean up
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_%'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM _pgrepl.cleanup").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM _pgrepl.swap").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0] == 0
        # nothing of tonight's source leaked in
        assert db.execute("SELECT count(*) FROM pg_class WHERE relname IN ('guarded', 'slow')").fetchone()[0] == 0


def add_slow_table(source) -> None:
    """A table whose CHECK sleeps ~2 ms a row on the warehouse (not on the source): pg_restore's COPY takes seconds."""
    with source.connect() as db:
        db.execute("""
            CREATE FUNCTION public.pgrepl_slow() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
              IF coalesce(current_setting('pgrepl.fast', true), '') <> 'on' THEN PERFORM pg_sleep(0.002); END IF;
              RETURN true;
            END $$;
            SET pgrepl.fast = 'on';
            CREATE TABLE slow (id int PRIMARY KEY, note text, CHECK (public.pgrepl_slow()));
        """)
        db.execute("INSERT INTO slow SELECT g, 'row ' || g FROM generate_series(1, %s) g", (SLOW_ROWS,))
        db.commit()


def copying_slow(pg_cluster, target) -> list[int]:
    """Backends of the warehouse busy with pg_restore's COPY into ``slow``."""
    return [r[0] for r in pg_cluster.execute(
        # the load (FROM stdin), not the staging archive's pg_dump reading the empty table (TO stdout)
        "SELECT pid FROM pg_stat_activity WHERE datname = %s "
        "AND query ~ '^COPY (public|_pgrepl_stage_public)\\.slow .* FROM stdin'",
        params=(target.dbname,))]


def wait_for(condition, timeout: float = 60.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    return None


def test_rows_refused_by_the_warehouse(night, pg_cluster, source_db, target_db):
    """(a) pg_restore's COPY fails on a CHECK constraint: the run fails, yesterday's warehouse stays."""
    settings, yesterday = night
    add_refused_table(pg_cluster, source_db)
    with pytest.raises(RuntimeError, match="violates check constraint") as refused:
        fullcopy.run_full_copy(settings, "refused-night")
    assert refused.value.retryable is False  # the same rows would be refused at every attempt: no retry
    assert_yesterday(target_db, yesterday)


def test_pg_restore_killed_mid_way(night, pg_cluster, source_db, target_db):
    """(b) the whole pg_restore process group is SIGKILLed while it copies rows."""
    settings, yesterday = night
    add_slow_table(source_db)
    killed = []

    def killing_runner(script: str, env: dict) -> None:
        proc = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if wait_for(lambda: proc.poll() is not None or copying_slow(pg_cluster, target_db)) and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
        finally:
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"command failed ({proc.returncode})")

    fullcopy.dump(settings, "killed-night")
    with target_db.connect() as db:
        warehouse.acquire_lease(db, "killed-run")
    with pytest.raises(RuntimeError, match=r"command failed \(-9\)"):
        fullcopy.restore(settings, "killed-night", "killed-run", runner=killing_runner)
    assert killed, "pg_restore finished before it could be killed"
    with target_db.connect() as db:
        assert warehouse.release_lease(db, "killed-run")
    assert_yesterday(target_db, yesterday)


def terminate_when_copying(pg_cluster, target, everyone: bool) -> tuple[threading.Thread, list]:
    """From the cluster's superuser: ``pg_terminate_backend`` pg_restore's COPY (``everyone``: every other session of
    the warehouse too, i.e. the orchestrating connection that holds the swap)."""
    terminated: list = []

    def watch() -> None:
        pids = wait_for(lambda: copying_slow(pg_cluster, target))
        if not pids:
            return
        if everyone:
            pids = [r[0] for r in pg_cluster.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", params=(target.dbname,))]
        for pid in pids:
            terminated.extend(pg_cluster.execute("SELECT pg_terminate_backend(%s)", params=(pid,)))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, terminated


def test_restore_connection_terminated(night, pg_cluster, source_db, target_db):
    """(c) the server terminates pg_restore's connection mid-COPY (``pg_terminate_backend``)."""
    settings, yesterday = night
    add_slow_table(source_db)
    thread, terminated = terminate_when_copying(pg_cluster, target_db, everyone=False)
    with pytest.raises(RuntimeError, match="command failed") as lost:
        fullcopy.run_full_copy(settings, "terminated-night")
    assert lost.value.retryable is True  # a lost connection may pass: retried
    thread.join(5)
    assert terminated, "pg_restore finished before its connection could be terminated"
    assert_yesterday(target_db, yesterday)


def test_every_warehouse_connection_terminated(night, pg_cluster, source_db, target_db):
    """(c') the orchestrating connection dies too, so the restore step cannot drop its staging work itself: the live
    warehouse is yesterday's all along (it was never touched), the staging schemas wait, recorded in
    ``_pgrepl.cleanup``, for the ``rollback`` task (here: ``fullcopy.rollback``); the next night works."""
    settings, yesterday = night
    add_slow_table(source_db)
    fullcopy.dump(settings, "lost-night")
    with target_db.connect() as db:
        warehouse.acquire_lease(db, "lost-run")
    thread, terminated = terminate_when_copying(pg_cluster, target_db, everyone=True)
    with pytest.raises(Exception):  # pg_restore's failure, or the lost connection's while dropping staging
        fullcopy.restore(settings, "lost-night", "lost-run")
    thread.join(5)
    assert len(terminated) >= 2
    assert table_fingerprint(target_db) == yesterday["tables"]  # readers never lost yesterday's warehouse
    with target_db.connect() as db:  # tonight's half-built staging waits for the rollback task
        left = {r[0] for r in db.execute("SELECT schema_name FROM _pgrepl.cleanup").fetchall()}
        assert "_pgrepl_stage_public" in left
    assert set(fullcopy.rollback(settings, "lost-run")) == left
    with target_db.connect() as db:
        assert warehouse.release_lease(db, "lost-run")
    assert_yesterday(target_db, yesterday)
    # and the following night, with nothing broken any more, replaces the warehouse
    with source_db.connect() as db:
        db.execute("DROP TABLE slow")
        db.execute("DROP FUNCTION pgrepl_slow()")
        db.commit()
    fullcopy.run_full_copy(settings, "next-night")
    assert table_fingerprint(target_db) == table_fingerprint(source_db)


# -- the same through Airflow ----------------------------------------------------------------------


def test_rollback_ends_a_live_attempt_of_its_run_and_leaves_another_runs_work(night, target_db):
    """Airflow 3.3 runs a task in a process group of its own: when a worker's supervisor dies, Airflow fails the
    task, but its process may live on and still hold the warehouse. The ``rollback`` task of the same run ends that
    session before dropping the staging work (two cleanups never race); the ``rollback`` of a run that never got
    the lease (another run holds it) touches nothing of that run's work."""
    settings, yesterday = night
    with target_db.connect() as zombie, target_db.connect() as db:
        warehouse.lock_warehouse(zombie, "zombie-run")  # the attempt Airflow failed, still connected
        db.execute("CREATE SCHEMA _pgrepl_stage_public")
        db.execute("CREATE TABLE _pgrepl_stage_public.users (id int)")
        db.execute("INSERT INTO _pgrepl.cleanup (schema_name, kind, run_id) "
                   "VALUES ('_pgrepl_stage_public', 'staging', 'zombie-run')")
        db.commit()
        # another run's rollback: the lease is zombie-run's, so its staging work stays
        assert fullcopy.rollback(settings, "other-run") == []
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = '_pgrepl_stage_public'").fetchone()[0]
        db.rollback()
        # its own run's rollback: the live attempt's session is ended, the staging dropped
        assert fullcopy.rollback(settings, "zombie-run") == ["_pgrepl_stage_public"]
        with pytest.raises(Exception):
            zombie.execute("SELECT 1")
        assert warehouse.release_lease(db, "zombie-run")
    assert_yesterday(target_db, yesterday)

def test_failed_restore_in_a_dag_run(night, pg_cluster, source_db, target_db, tmp_path):
    """(d) ``airflow dags test pg_replication`` with the refused table: the run fails at restore, ``rollback`` runs,
    ``release`` frees the lease, downstream steps never start, and the warehouse is yesterday's."""
    from devenv import airflow_runner

    _, yesterday = night
    add_refused_table(pg_cluster, source_db)

    def uri(conn) -> str:
        return f"postgres://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"

    env = airflow_runner.airflow_env(tmp_path / "airflow", {
        "AIRFLOW_CONN_REPLICATION_SOURCE": uri(source_db),
        "AIRFLOW_CONN_REPLICATION_TARGET": uri(target_db),
        "REPLICATION_WORK_DIR": str(tmp_path / "work"),
        "PG_RESTORE_JOBS": "2",
        "MAX_RETRY_COUNT": "0",
    })
    for name in ("SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "DATABASE_URL", "BACKUP_MODE", "NOTIFICATIONS",
                 "LCMS_API_URL", "LCMS_API_KEY"):
        env.pop(name, None)
    airflow_runner.migrate(env)
    log_file = tmp_path / "dags-test.log"
    airflow_runner.dags_test("pg_replication", env, log_path=log_file)
    home = Path(env["AIRFLOW_HOME"])
    states = {t["task_id"]: t["state"] for t in airflow_runner.task_instances(home, "pg_replication")
              if t["map_index"] in (-1, None)}
    assert airflow_runner.dag_run_state(home, "pg_replication") == "failed", log_file.read_text()[-4000:]
    assert states["preflight"] == "success" and states["dump"] == "success"
    assert states["restore"] == "failed"
    assert states["rollback"] == "success"
    assert states["release"] == "success"
    assert states["compat_views"] == "upstream_failed"
    assert_yesterday(target_db, yesterday)
    # the task's error says what went wrong, not only "exit code 1"
    assert re.search(r"pg_restore failed: .*violates check constraint", log_file.read_text()), log_file.read_text()[-4000:]
    task_logs = "".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())
    assert "violates check constraint" in task_logs + log_file.read_text()
    assert TEST_PASSWORD not in task_logs + log_file.read_text()
