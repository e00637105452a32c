"""Bad input fails ``preflight`` without retry, in one line naming the setting, and leaves the warehouse untouched.

One warehouse, filled by a good full copy, serves every case: nothing may change it (table fingerprints, no aside
schema, no lease taken).
"""

from __future__ import annotations

import itertools
import stat

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from conftest import TEST_PASSWORD, table_fingerprint
from pgrepl import fullcopy, tasks
from devenv.sample_data import load_sample
from pgrepl.settings import ReplicationSettings

_ids = itertools.count()

#: every variable preflight reads; each case starts from a clean, valid set of them
SETTING_NAMES = (
    "SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "DATABASE_URL", "AIRFLOW_CONN_REPLICATION_SOURCE",
    "AIRFLOW_CONN_REPLICATION_TARGET", "AIRFLOW_CONN_LCMS_API", "BACKUP_MODE", "RESTORE_FK_CONSTRAINTS",
    "PG_RESTORE_JOBS", "SCHEDULE", "MAX_RETRY_COUNT", "LCMS_API_URL", "LCMS_API_KEY", "NOTIFICATIONS",
    "REPLICATION_WORK_DIR", "PG_BIN_DIR", "PG_DUMP_COMPRESSION", "PGPASSWORD", "RESTORE_COMMENTS",
)


def db_url(conn, password: str = TEST_PASSWORD, scheme: str = "postgresql://") -> str:
    return f"{scheme}{conn.user}:{password}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.fixture(scope="module")
def warehouse(pg_cluster, tmp_path_factory):
    """A source and a warehouse after one good night; returns what a case needs."""
    n = next(_ids)
    source = pg_cluster.create_database(f"badin_src_{n}", f"badin_src_owner_{n}", TEST_PASSWORD)
    target = pg_cluster.create_database(f"badin_wh_{n}", f"badin_wh_owner_{n}", TEST_PASSWORD)
    load_sample(source, scale=0.002)
    work = tmp_path_factory.mktemp("badin") / "work"
    fullcopy.run_full_copy(ReplicationSettings(source=source, target=target, work_dir=str(work), jobs=2), "good-night")
    superuser_target = pg_cluster.create_database(f"badin_su_{n}", f"badin_su_owner_{n}", TEST_PASSWORD, superuser=True)
    return {"source": source, "target": target, "superuser_target": superuser_target, "work": str(work),
            "before": table_fingerprint(target)}


def old_client_dir(folder) -> str:
    """A PG_BIN_DIR whose pg_dump / pg_restore claim to be 9.6 (older than any supported server)."""
    folder.mkdir(exist_ok=True)
    for name in ("pg_dump", "pg_restore"):
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) 9.6.24"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(folder)


# (case id, changes to the valid environment (None = unset), text the message must contain)
CASES = [
    # connections: undefined, malformed, no scheme, bad port
    ("source-undefined", {"SOURCE_DATABASE_URL": None}, "connection replication_source is not defined"),
    ("target-undefined", {"TARGET_DATABASE_URL": None}, "connection replication_target is not defined"),
    ("source-conn-garbage", {"AIRFLOW_CONN_REPLICATION_SOURCE": "garbage"}, "connection replication_source: needs host"),
    ("target-conn-no-login", {"AIRFLOW_CONN_REPLICATION_TARGET": '{"conn_type": "postgres", "host": "127.0.0.1"}'},
     "connection replication_target: needs host"),
    ("source-url-mysql", {"SOURCE_DATABASE_URL": f"mysql://u:{TEST_PASSWORD}@127.0.0.1/db"}, "SOURCE_DATABASE_URL"),
    ("target-url-bad-port", {"TARGET_DATABASE_URL": f"postgresql://u:{TEST_PASSWORD}@127.0.0.1:port/db"},
     "TARGET_DATABASE_URL: the port"),
    ("database-url-no-db", {"TARGET_DATABASE_URL": None, "DATABASE_URL": f"postgresql://u:{TEST_PASSWORD}@127.0.0.1:5432"},
     "DATABASE_URL"),
    ("target-superuser", {"TARGET_DATABASE_URL": "<superuser>"}, "is a superuser"),
    # BACKUP_MODE: unparseable, wrong type, unknown mode, a table the source lacks
    ("backup-mode-json", {"BACKUP_MODE": '{"answers": "incremental"'}, "BACKUP_MODE: not valid JSON"),
    ("backup-mode-list", {"BACKUP_MODE": '["answers"]'}, "BACKUP_MODE: expected a JSON object"),
    ("backup-mode-type", {"BACKUP_MODE": '{"answers": 1}'}, "BACKUP_MODE: table 'answers' has unknown mode"),
    ("backup-mode-unknown", {"BACKUP_MODE": '{"answers": "full"}'}, "BACKUP_MODE: table 'answers' has unknown mode 'full'"),
    ("backup-mode-missing-table", {"BACKUP_MODE": '{"answer": "none"}'}, "BACKUP_MODE: the source has no table 'answer'"),
    ("backup-mode-dash-underscore", {"BACKUP_MODE": '{"knowledge_elements": "incremental"}'},
     "BACKUP_MODE: the source has no table 'knowledge_elements'"),
    # booleans, integers, cron
    ("fk-not-bool", {"RESTORE_FK_CONSTRAINTS": "maybe"}, "RESTORE_FK_CONSTRAINTS"),
    ("comments-not-bool", {"RESTORE_COMMENTS": "maybe"}, "RESTORE_COMMENTS"),
    ("jobs-word", {"PG_RESTORE_JOBS": "four"}, "PG_RESTORE_JOBS"),
    ("jobs-float", {"PG_RESTORE_JOBS": "2.5"}, "PG_RESTORE_JOBS"),
    ("jobs-zero", {"PG_RESTORE_JOBS": "0"}, "PG_RESTORE_JOBS"),
    ("retries-word", {"MAX_RETRY_COUNT": "ten"}, "MAX_RETRY_COUNT"),
    ("retries-negative", {"MAX_RETRY_COUNT": "-1"}, "MAX_RETRY_COUNT"),
    ("cron-words", {"SCHEDULE": "every night"}, "SCHEDULE"),
    ("cron-range", {"SCHEDULE": "10 25 * * *"}, "SCHEDULE"),
    ("cron-six-fields", {"SCHEDULE": "0 10 5 * * *"}, "SCHEDULE"),
    ("compression-word", {"PG_DUMP_COMPRESSION": "high"}, "PG_DUMP_COMPRESSION"),
    ("work-dir-relative", {"REPLICATION_WORK_DIR": "relative/work"}, "REPLICATION_WORK_DIR"),
    # learning content and webhooks
    ("lcms-url-no-scheme", {"LCMS_API_URL": "lcms.example.net/api", "LCMS_API_KEY": "k-123"}, "LCMS_API_URL"),
    ("lcms-url-ftp", {"LCMS_API_URL": "ftp://lcms.example.net", "LCMS_API_KEY": "k-123"}, "LCMS_API_URL"),
    ("lcms-key-missing", {"LCMS_API_URL": "https://lcms.example.net/api"}, "LCMS_API_KEY"),
    ("lcms-conn-no-key", {"AIRFLOW_CONN_LCMS_API": '{"conn_type": "http", "host": "https://lcms.example.net"}'},
     "connection lcms_api"),
    ("notifications-json", {"NOTIFICATIONS": '[{"url": '}, "NOTIFICATIONS: not valid JSON"),
    ("notifications-object", {"NOTIFICATIONS": '{"url": "https://hooks.example.net"}'}, "NOTIFICATIONS: expected a JSON list"),
    ("notifications-no-scheme", {"NOTIFICATIONS": '[{"url": "hooks.example.net/x", "token": "t"}]'}, "NOTIFICATIONS[0].url"),
    ("notifications-no-url", {"NOTIFICATIONS": '[{"token": "t"}]'}, "NOTIFICATIONS: entry 0"),
    ("notifications-token-type", {"NOTIFICATIONS": '[{"url": "https://hooks.example.net", "token": 42}]'}, "NOTIFICATIONS: entry 0"),
    # client tools older than the source server
    ("client-too-old", {"PG_BIN_DIR": "<old-clients>"}, "PG_BIN_DIR"),
]


@pytest.fixture
def valid_env(warehouse, monkeypatch):
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    env = {
        "SOURCE_DATABASE_URL": db_url(warehouse["source"]),
        "TARGET_DATABASE_URL": db_url(warehouse["target"]),
        "REPLICATION_WORK_DIR": warehouse["work"],
        "PG_RESTORE_JOBS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def assert_untouched(warehouse, target=None) -> None:
    target = target or warehouse["target"]
    assert table_fingerprint(target) == warehouse["before"]
    with target.connect() as db:
        aside = db.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'").fetchall()
        leases = db.execute("SELECT run_id FROM _pgrepl.lease").fetchall()
        swaps = db.execute("SELECT schema_name FROM _pgrepl.swap").fetchall()
    assert aside == [] and leases == [] and swaps == []


def test_the_valid_environment_passes(valid_env, warehouse):
    """The baseline every case breaks: preflight succeeds (and the lease it takes is released)."""
    result = tasks.preflight("baseline-run")
    assert result["source_server_major"] >= 13
    assert tasks.release("baseline-run") is True
    assert_untouched(warehouse)


@pytest.mark.parametrize("case, changes, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_setting_fails_preflight_naming_it(case, changes, expected, valid_env, warehouse, tmp_path):
    for name, value in changes.items():
        if value is None:
            valid_env.delenv(name, raising=False)
        elif value == "<superuser>":
            valid_env.setenv(name, db_url(warehouse["superuser_target"]))
        elif value == "<old-clients>":
            valid_env.setenv(name, old_client_dir(tmp_path / "old-bin"))
        else:
            valid_env.setenv(name, value)
    with pytest.raises(AirflowFailException) as caught:
        tasks.preflight(f"bad-{case}")
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message.strip(), "the error must be one line"
    assert TEST_PASSWORD not in message
    assert_untouched(warehouse)
    if case == "target-superuser":
        with warehouse["superuser_target"].connect() as db:
            assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl%'").fetchone()[0] == 0


@pytest.mark.parametrize("name", ["SOURCE_DATABASE_URL", "TARGET_DATABASE_URL"])
def test_url_without_scheme_does_not_echo_its_password(name, valid_env, warehouse):
    conn = warehouse["source" if name.startswith("SOURCE") else "target"]
    valid_env.setenv(name, db_url(conn, scheme=""))
    with pytest.raises(AirflowFailException) as caught:
        tasks.preflight("bad-no-scheme")
    assert name in str(caught.value)
    assert_untouched(warehouse)
    assert TEST_PASSWORD not in str(caught.value)


def test_unreachable_database_is_retried_and_hides_the_password(valid_env, warehouse):
    """Not bad input but a passing outage: AirflowException (retried), one line, no password, nothing touched."""
    source = warehouse["source"]
    valid_env.setenv("SOURCE_DATABASE_URL", f"postgresql://{source.user}:{TEST_PASSWORD}@127.0.0.1:1/{source.dbname}")
    with pytest.raises(AirflowException) as caught:
        tasks.preflight("unreachable-run")
    assert not isinstance(caught.value, AirflowFailException)
    message = str(caught.value)
    assert "source database" in message and "unreachable" in message
    assert "\n" not in message.strip() and TEST_PASSWORD not in message
    assert_untouched(warehouse)


def test_wrong_password_does_not_echo_it(valid_env, warehouse):
    target = warehouse["target"]
    valid_env.setenv("TARGET_DATABASE_URL", db_url(target, password="Wrong-" + TEST_PASSWORD))
    with pytest.raises(AirflowException) as caught:
        tasks.preflight("wrong-password-run")
    message = str(caught.value)
    assert "target database" in message and TEST_PASSWORD not in message and "\n" not in message.strip()
    assert_untouched(warehouse)

