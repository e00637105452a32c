"""No overlap (two deployments, one warehouse) and no SQL injection through table or schema names."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import TEST_PASSWORD, table_fingerprint
from pgrepl import fullcopy, tasks
from pgrepl import swap as warehouse
from pgrepl.incremental import copy_incremental
from pgrepl.settings import ReplicationSettings, TableName, airflow_connection_getter, load_replication

EVIL_TABLE = 'x"; drop table users; --'
EVIL_SCHEMA = "s'; drop schema public cascade; --"


def url(conn) -> str:
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


def airflow_uri(conn) -> str:
    return f"postgres://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


def as_deployment(monkeypatch, name: str, source, target, work) -> None:
    """Deployment A reads the seed's variables, deployment B Airflow connections: same warehouse either way."""
    for var in ("SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "DATABASE_URL", "AIRFLOW_CONN_REPLICATION_SOURCE",
                "AIRFLOW_CONN_REPLICATION_TARGET", "BACKUP_MODE", "NOTIFICATIONS", "LCMS_API_URL", "LCMS_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    if name == "A":
        monkeypatch.setenv("SOURCE_DATABASE_URL", url(source))
        monkeypatch.setenv("DATABASE_URL", url(target))
    else:
        monkeypatch.setenv("AIRFLOW_CONN_REPLICATION_SOURCE", airflow_uri(source))
        monkeypatch.setenv("AIRFLOW_CONN_REPLICATION_TARGET", airflow_uri(target))
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(work / name))


def test_second_deployment_fails_fast_until_release(source_db, target_db, tmp_path, monkeypatch, fingerprint):
    as_deployment(monkeypatch, "A", source_db, target_db, tmp_path)
    tasks.preflight("scheduled__A")
    before = fingerprint(target_db)

    as_deployment(monkeypatch, "B", source_db, target_db, tmp_path)
    with pytest.raises(AirflowFailException, match=r"another run \(scheduled__A, since .*\) holds the warehouse"):
        tasks.preflight("scheduled__B")
    assert tasks.release("scheduled__B") is False  # B's release task does not free A's lease
    with pytest.raises(AirflowFailException, match="holds the warehouse"):
        tasks.preflight("scheduled__B")

    # B's write steps refuse too, before touching anything (e.g. a B task cleared by hand)
    settings_b = load_replication(get_connection=airflow_connection_getter)
    fullcopy.dump(settings_b, "B-night")
    with pytest.raises(warehouse.WarehouseBusy, match="holds the warehouse"):
        fullcopy.restore(settings_b, "B-night", "scheduled__B")
    assert fingerprint(target_db) == before

    as_deployment(monkeypatch, "A", source_db, target_db, tmp_path)
    assert tasks.release("scheduled__A") is True
    as_deployment(monkeypatch, "B", source_db, target_db, tmp_path)
    tasks.preflight("scheduled__B")
    assert tasks.release("scheduled__B") is True


def test_advisory_lock_keeps_two_writers_apart(target_db):
    """Only one session writes at a time: a session holding the lock for something else (or for another run) makes
    the task fail as busy, retryable, without touching that session."""
    with target_db.connect() as outsider, target_db.connect() as writer:
        outsider.execute("SELECT pg_advisory_lock(%s)", (warehouse.ADVISORY_KEY,))
        with pytest.raises(warehouse.WarehouseBusy, match="advisory lock held") as busy:
            warehouse.lock_warehouse(writer, "night")
        assert busy.value.retryable is True
        assert outsider.execute("SELECT 1").fetchone() == (1,)  # left alone
        outsider.execute("SELECT pg_advisory_unlock(%s)", (warehouse.ADVISORY_KEY,))
        warehouse.lock_warehouse(writer, "night")
        warehouse.release_lease(writer, "night")


def test_lock_of_an_earlier_attempt_of_the_run_is_taken_over(target_db):
    """A worker that died (or a client closed before the server noticed) leaves its session and its lock; the next
    attempt of the same run ends that session and takes the lock, instead of failing as "warehouse busy"."""
    import psycopg

    with target_db.connect() as earlier, target_db.connect() as retry:
        warehouse.lock_warehouse(earlier, "night")
        warehouse.lock_warehouse(retry, "night")  # the earlier attempt's session is still there: ended
        assert retry.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
        ).fetchone()[0] == 1
        with pytest.raises(psycopg.OperationalError):
            earlier.execute("SELECT 1")
        warehouse.release_lease(retry, "night")
    # and a closed (not yet ended) session of an earlier attempt does not make the next one fail either
    first = target_db.connect()
    warehouse.lock_warehouse(first, "night")
    first.close()
    with target_db.connect() as second:
        warehouse.lock_warehouse(second, "night")
        warehouse.release_lease(second, "night")


def test_abandoned_lease_is_taken_over(target_db):
    with target_db.connect() as db:
        warehouse.acquire_lease(db, "dead-run")
        db.execute("UPDATE _pgrepl.lease SET acquired_at = now() - make_interval(hours => %s)",
                   (warehouse.LEASE_TTL_HOURS + 1,))
        db.commit()
        warehouse.acquire_lease(db, "next-run")
        assert db.execute("SELECT run_id FROM _pgrepl.lease").fetchone()[0] == "next-run"


# -- SQL injection ---------------------------------------------------------------------------------

def add_evil_objects(source) -> None:
    from psycopg import sql

    with source.connect() as db:
        db.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text, \"userId\" int)").format(
            sql.Identifier(EVIL_TABLE)))
        db.execute(sql.SQL("INSERT INTO {} (note, \"userId\") SELECT 'row ' || g, g FROM generate_series(1, 50) g").format(
            sql.Identifier(EVIL_TABLE)))
        db.execute(sql.SQL("CREATE INDEX {} ON {} (\"userId\")").format(
            sql.Identifier(EVIL_TABLE + "_idx"), sql.Identifier(EVIL_TABLE)))
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(EVIL_SCHEMA)))
        db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(EVIL_SCHEMA, EVIL_TABLE)))
        db.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 7)").format(sql.Identifier(EVIL_SCHEMA, EVIL_TABLE)))
        db.commit()


def users_intact(target, source) -> None:
    assert table_fingerprint(target)["users"] == table_fingerprint(source)["users"]
    with target.connect() as db:
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'").fetchone()[0] == 1


def test_evil_names_copied_in_full(source_db, target_db, tmp_path):
    add_evil_objects(source_db)
    settings = ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)
    fullcopy.run_full_copy(settings, "evil-full")
    fullcopy.run_full_copy(settings, "evil-full-again")  # the swap moves the evil names aside and drops them
    users_intact(target_db, source_db)
    assert table_fingerprint(target_db)[EVIL_TABLE] == table_fingerprint(source_db)[EVIL_TABLE]
    assert table_fingerprint(target_db, EVIL_SCHEMA) == table_fingerprint(source_db, EVIL_SCHEMA)


@pytest.mark.parametrize("mode", ["incremental", "none"])
def test_evil_name_in_backup_mode(mode, source_db, target_db, tmp_path, monkeypatch):
    """The name goes through BACKUP_MODE (JSON), preflight's catalog check, pg_dump's exclude pattern, the restore list,
    the swap and the incremental copy."""
    from psycopg import sql

    add_evil_objects(source_db)
    for var in ("AIRFLOW_CONN_REPLICATION_SOURCE", "AIRFLOW_CONN_REPLICATION_TARGET", "DATABASE_URL", "NOTIFICATIONS",
                "LCMS_API_URL", "LCMS_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SOURCE_DATABASE_URL", url(source_db))
    monkeypatch.setenv("TARGET_DATABASE_URL", url(target_db))
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("PG_RESTORE_JOBS", "2")
    monkeypatch.setenv("BACKUP_MODE", json.dumps({EVIL_TABLE: mode, f"{EVIL_SCHEMA}.{EVIL_TABLE}": mode}))
    settings = load_replication()
    assert settings.kept_tables == sorted([TableName("public", EVIL_TABLE), TableName(EVIL_SCHEMA, EVIL_TABLE)], key=str)

    for night in ("night1", "night2"):
        assert tasks.preflight(night)["kept_tables"]
        tasks.release(night)
        fullcopy.run_full_copy(settings, night)
        if mode == "incremental":
            for table in settings.incremental_tables:
                copy_incremental(source_db, target_db, table, incremental_tables=settings.incremental_tables)
        users_intact(target_db, source_db)
        with source_db.connect() as db:  # new rows for the second night's incremental copy
            db.execute(sql.SQL("INSERT INTO {} (note) VALUES ('night 2')").format(sql.Identifier(EVIL_TABLE)))
            db.commit()

    target, source = table_fingerprint(target_db), table_fingerprint(source_db)
    if mode == "incremental":  # bootstrapped the first night, then caught up (the source has one row more since)
        assert target[EVIL_TABLE][0] == source[EVIL_TABLE][0] - 1 == 51
        assert table_fingerprint(target_db, EVIL_SCHEMA)[EVIL_TABLE] == table_fingerprint(source_db, EVIL_SCHEMA)[EVIL_TABLE]
    else:  # rows never copied: "none" tables get the source's structure on the first night, then are the warehouse's
        assert target[EVIL_TABLE] == (0, "")
        assert table_fingerprint(target_db, EVIL_SCHEMA) == {EVIL_TABLE: (0, "")}
