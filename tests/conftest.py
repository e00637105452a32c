"""Shared fixtures: one throwaway PostgreSQL cluster per test session, fresh databases per test."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]  # pgrepl, and devenv (throwaway clusters)

# Airflow reads its home at import: keep the test session's Airflow out of ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    import tempfile

    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="pgrepl-test-airflow-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))

from devenv.cluster import Cluster  # noqa: E402
from devenv.sample_data import load_sample  # noqa: E402

_counter = itertools.count()

#: password of every role the fixtures create (tests check it never leaks)
TEST_PASSWORD = "Pw-s3cret-9f1c"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the whole session."""
    cluster = Cluster("tests")
    cluster.start()
    yield cluster
    cluster.stop()


def _new_db(cluster: Cluster, prefix: str, superuser: bool = False):
    n = next(_counter)
    role = f"{prefix}_owner_{n}"
    return cluster.create_database(f"{prefix}_{n}", role, TEST_PASSWORD, superuser=superuser)


@pytest.fixture
def make_database(pg_cluster):
    """Factory: ``make_database(prefix)`` -> PgConn of a new empty database owned by a new login role."""

    def factory(prefix: str = "db", superuser: bool = False):
        return _new_db(pg_cluster, prefix, superuser)

    return factory


@pytest.fixture
def source_db(pg_cluster):
    """A new source database loaded with the small Pix-like sample."""
    conn = _new_db(pg_cluster, "source")
    load_sample(conn, scale=0.002)
    return conn


@pytest.fixture
def target_db(pg_cluster):
    """A new empty warehouse database owned by a non-superuser role."""
    return _new_db(pg_cluster, "warehouse")


@pytest.fixture
def replication_env(source_db, target_db, tmp_path, monkeypatch):
    """Environment variables pointing the settings at ``source_db`` / ``target_db``."""
    env = {
        "SOURCE_DATABASE_URL": f"postgresql://{source_db.user}:{TEST_PASSWORD}@{source_db.host}:{source_db.port}/{source_db.dbname}",
        "TARGET_DATABASE_URL": f"postgresql://{target_db.user}:{TEST_PASSWORD}@{target_db.host}:{target_db.port}/{target_db.dbname}",
        "REPLICATION_WORK_DIR": str(tmp_path / "work"),
        "PG_RESTORE_JOBS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("BACKUP_MODE", "RESTORE_FK_CONSTRAINTS", "NOTIFICATIONS", "LCMS_API_URL", "LCMS_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    return env


def table_fingerprint(conn, schema: str = "public") -> dict[str, tuple[int, str]]:
    """{table: (row count, md5 of all rows in id order)} for every table of ``schema``."""
    from psycopg import sql

    result = {}
    with conn.connect() as db:
        tables = [r[0] for r in db.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1", (schema,)).fetchall()]
        for table in tables:
            ident = sql.Identifier(schema, table)
            count, digest = db.execute(
                sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {} t").format(ident)
            ).fetchone()
            result[table] = (count, digest)
    return result


@pytest.fixture
def fingerprint():
    return table_fingerprint


os.environ.setdefault("PGREPL_TEST_PASSWORD", TEST_PASSWORD)
